//! Colors and text styles.
//!
//! Only the eight basic ANSI colors and modifiers are used, never fixed black, white or gray, so
//! the terminal's own palette keeps them readable on light and dark backgrounds. Color is never
//! the only signal: states are also spelled out, the leader carries a ★.

use ratatui::style::{Color, Modifier, Style};

pub const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
pub const DIM: Style = Style::new().add_modifier(Modifier::DIM);
pub const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
pub const HEADER: Style = Style::new()
    .add_modifier(Modifier::BOLD)
    .add_modifier(Modifier::UNDERLINED);
pub const LEADER: Style = Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD);

pub const RED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub const YELLOW: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
pub const GREEN: Style = Style::new().fg(Color::Green);
pub const CYAN: Style = Style::new().fg(Color::Cyan);
pub const BLUE: Style = Style::new().fg(Color::Blue);

/// A node's state: Down red, Draining/Drained yellow, Active green.
pub fn node_state(state: &str) -> Style {
    match state {
        "down" => RED,
        "draining" => YELLOW,
        "drained" => Style::new().fg(Color::Yellow),
        "active" => GREEN,
        _ => Style::new(),
    }
}

/// A request's state.
pub fn request_state(state: &str) -> Style {
    match state {
        "failed" => RED,
        "running" => CYAN,
        "queued" => Style::new().fg(Color::Yellow),
        "done" => GREEN,
        "cancelled" => DIM,
        _ => Style::new(),
    }
}

/// An event's kind, by what it means for the operator.
pub fn event_kind(kind: &str) -> Style {
    match kind {
        "down" | "failure" | "removed" => RED,
        "draining" | "drained" | "requeued" => YELLOW,
        "up" | "joined" | "rejoined" | "undrained" | "leader" => GREEN,
        "role" | "scale-up" | "scale-down" | "autoscale" => BLUE,
        k if k.contains("fail") || k.contains("error") => RED,
        _ => Style::new(),
    }
}
