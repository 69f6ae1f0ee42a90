//! Drawing: `impl Widget for &App`. Reads the state, never awaits, never does I/O.
//!
//! The screen, top to bottom: a header (connection state, leader, term), the view tabs, the
//! current view (one file each), a line of key hints for that view, and the status line (the
//! outcome of the last action, or the prompt being typed). The help is a popup over all of it.

mod events;
mod nodes;
mod queues;
mod raft;
mod requests;
pub mod table;
pub mod theme;

use crate::app::{App, Conn, KEYS, Mode, StatusKind, View};
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Sparkline, Widget, Wrap};
use std::collections::VecDeque;

/// Draws the whole console into a frame.
pub fn draw(app: &App, frame: &mut Frame<'_>) {
    frame.render_widget(app, frame.area());
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [header, tabs, body, hints, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        render_header(self, header, buf);
        render_tabs(self, tabs, buf);
        if self.updates == 0 {
            render_waiting(self, body, buf);
        } else {
            match self.view {
                View::Nodes => nodes::render(self, body, buf),
                View::Queues => queues::render(self, body, buf),
                View::Requests => requests::render(self, body, buf),
                View::Raft => raft::render(self, body, buf),
                View::Events => events::render(self, body, buf),
            }
        }
        render_hints(self, hints, buf);
        render_status(self, status, buf);
        if self.mode == Mode::Help {
            render_help(self, area, buf);
        }
    }
}

fn conn_span(conn: &Conn) -> Span<'static> {
    match conn {
        Conn::Connecting { addr } if addr.is_empty() => {
            Span::styled("◌ connecting…", theme::YELLOW)
        }
        Conn::Connecting { addr } => {
            Span::styled(format!("◌ connecting to {addr}…"), theme::YELLOW)
        }
        Conn::Connected { addr } => Span::styled(format!("● live from {addr}"), theme::GREEN),
        Conn::Lost { error, retry_in_ms } => Span::styled(
            format!(
                "✕ disconnected, retry in {}: {}",
                fmt_ms(*retry_in_ms),
                cut(error, 60)
            ),
            theme::RED,
        ),
    }
}

fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let mut spans = vec![Span::styled("mozen ", theme::BOLD), conn_span(&app.conn)];
    if app.readonly {
        spans.push(Span::styled("  [read-only]", theme::YELLOW));
    }
    if app.updates > 0 {
        // Facts in order of importance; each is shown only if it fits whole.
        let d = &app.data;
        let raft = d.raft.clone().unwrap_or_default();
        let down = d.nodes.iter().filter(|n| n.state == "down").count();
        let mut facts = vec![
            match raft.leader_id {
                Some(l) => Span::styled(format!("leader ★{l}"), theme::LEADER),
                None => Span::styled("no leader", theme::RED),
            },
            Span::raw(format!("term {}", raft.term)),
        ];
        facts.push(if down > 0 {
            Span::styled(format!("{} nodes, {down} down", d.nodes.len()), theme::RED)
        } else {
            Span::raw(format!("{} nodes", d.nodes.len()))
        });
        if let Some(q) = &d.queue {
            facts.push(Span::raw(format!("{} queued", q.queued)));
            facts.push(Span::raw(format!("{}/s", fmt_rate(q.throughput))));
        }
        let mut used: usize = spans.iter().map(|s| s.width()).sum();
        for (i, f) in facts.into_iter().enumerate() {
            let sep = if i == 0 { "  " } else { " · " };
            let w = Span::raw(sep).width() + f.width();
            if used + w > area.width as usize {
                break;
            }
            used += w;
            spans.push(Span::raw(sep));
            spans.push(f);
        }
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn render_tabs(app: &App, area: Rect, buf: &mut Buffer) {
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.name());
        let style = if *v == app.view {
            theme::SELECTED.add_modifier(ratatui::style::Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn render_waiting(app: &App, area: Rect, buf: &mut Buffer) {
    let lines = vec![
        Line::raw(""),
        Line::raw("  waiting for the first update from the cluster"),
        Line::from(vec![Span::raw("  "), conn_span(&app.conn)]),
        Line::raw(""),
        Line::styled(
            "  the console follows the leader and reconnects by itself; q quits",
            theme::DIM,
        ),
    ];
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(format!(" {} ", app.view.name())))
        .render(area, buf);
}

/// Key hints for the current view: `(key, what)`, actions left out when read-only.
fn hints(app: &App) -> Vec<(&'static str, &'static str, bool)> {
    let mut h = match app.view {
        View::Nodes => vec![
            ("d", "drain", true),
            ("u", "undrain", true),
            ("a", "add", true),
            ("p", "promote", true),
            ("D", "demote", true),
            ("x", "remove", true),
        ],
        View::Requests if app.tree.is_some() => vec![
            ("Esc", "back", false),
            ("x", "cancel", true),
            ("r", "retry", true),
        ],
        View::Requests => vec![
            ("/", "filter", false),
            ("Enter", "tree", false),
            ("x", "cancel", true),
            ("r", "retry", true),
        ],
        _ => vec![("j/k", "scroll", false)],
    };
    h.extend([("?", "help", false), ("q", "quit", false)]);
    h.retain(|(_, _, action)| !(app.readonly && *action));
    h
}

fn render_hints(app: &App, area: Rect, buf: &mut Buffer) {
    let mut spans = Vec::new();
    for (k, what, _) in hints(app) {
        spans.push(Span::styled(format!(" {k}"), theme::BOLD));
        spans.push(Span::raw(format!(" {what} ")));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn render_status(app: &App, area: Rect, buf: &mut Buffer) {
    const CURSOR: &str = "█";
    let line = match &app.mode {
        Mode::Command(s) => Line::from(vec![
            Span::styled(":", theme::BOLD),
            Span::raw(s.clone()),
            Span::raw(CURSOR),
            Span::styled("  nodes queues requests raft events q", theme::DIM),
        ]),
        Mode::Filter(s) => Line::from(vec![
            Span::styled("/", theme::BOLD),
            Span::raw(s.clone()),
            Span::raw(CURSOR),
            Span::styled(
                format!("  {} match · Enter keeps · Esc clears", app.visible_len()),
                theme::DIM,
            ),
        ]),
        Mode::AddNode(s) => Line::from(vec![
            Span::styled("add node (ID@HOST:PORT): ", theme::BOLD),
            Span::raw(s.clone()),
            Span::raw(CURSOR),
            Span::styled("  Enter adds · Esc cancels", theme::DIM),
        ]),
        Mode::Confirm(e) => Line::from(vec![Span::styled(
            format!(
                "{}? y confirms, any other key keeps things as they are",
                e.describe()
            ),
            theme::YELLOW,
        )]),
        Mode::Normal | Mode::Help => {
            let (icon, style) = match app.status.kind {
                StatusKind::Info => ("", Style::new()),
                StatusKind::Pending => ("… ", theme::CYAN),
                StatusKind::Ok => ("✓ ", theme::GREEN),
                StatusKind::Error => ("✕ ", theme::RED),
            };
            Line::from(Span::styled(format!("{icon}{}", app.status.text), style))
        }
    };
    Paragraph::new(line).render(area, buf);
}

fn render_help(app: &App, area: Rect, buf: &mut Buffer) {
    let mut lines: Vec<Line<'_>> = KEYS
        .iter()
        .filter(|k| !(app.readonly && k.action))
        .map(|k| {
            Line::from(vec![
                Span::styled(format!(" {:<16}", k.keys), theme::BOLD),
                Span::raw(k.does),
            ])
        })
        .collect();
    if app.readonly {
        lines.push(Line::styled(
            " read-only console: the keys that change the cluster are hidden",
            theme::YELLOW,
        ));
    }
    let w = area.width.min(78);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    Clear.render(r, buf);
    Paragraph::new(lines)
        .block(Block::bordered().title(" keys · any key closes this "))
        .render(r, buf);
}

/// A duration in milliseconds: `12ms`, `1.5s`, `42s`, `3m05s`, `2h10m`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        m if m < 1_000 => format!("{m}ms"),
        m if m < 10_000 => format!("{:.1}s", m as f64 / 1000.0),
        m if m < 60_000 => format!("{}s", m / 1000),
        m if m < 3_600_000 => format!("{}m{:02}s", m / 60_000, m % 60_000 / 1000),
        m => format!("{}h{:02}m", m / 3_600_000, m % 3_600_000 / 60_000),
    }
}

/// An age in milliseconds, compact: `0.3s`, `12s`, `5m`, `2h`; `-` when unknown (negative).
pub fn fmt_age(ms: i64) -> String {
    match ms {
        m if m < 0 => "-".into(),
        m if m < 10_000 => format!("{:.1}s", m as f64 / 1000.0),
        m if m < 120_000 => format!("{}s", m / 1000),
        m if m < 7_200_000 => format!("{}m", m / 60_000),
        m => format!("{}h", m / 3_600_000),
    }
}

/// Bytes in binary units: `512B`, `3.0M`, `8.0G`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A rate: one decimal below 100, none above.
pub fn fmt_rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// A text bar `width` cells wide, `part` of `whole` filled.
pub fn bar(part: u64, whole: u64, width: usize) -> String {
    let filled = if whole == 0 {
        0
    } else {
        ((part as u128 * width as u128).div_ceil(whole as u128) as usize).min(width)
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// The last `width` samples as a one-line sparkline, scaled to their maximum.
pub fn spark<'a>(
    samples: impl DoubleEndedIterator<Item = &'a f64> + ExactSizeIterator,
    width: usize,
) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let n = samples.len().min(width);
    let tail: Vec<f64> = samples.rev().take(n).copied().collect();
    let max = tail.iter().copied().fold(0.0, f64::max);
    let mut s: String = " ".repeat(width - n);
    for v in tail.iter().rev() {
        let i = if max > 0.0 {
            ((v / max) * 7.0).round().clamp(0.0, 7.0) as usize
        } else {
            0
        };
        s.push(BARS[i]);
    }
    s
}

/// A sample history as a bar chart filling `area`, newest on the right edge.
pub fn history_chart(history: Option<&VecDeque<f64>>, area: Rect, buf: &mut Buffer) {
    let width = area.width as usize;
    let samples = history.map_or(0, VecDeque::len).min(width);
    let data: Vec<Option<u64>> = std::iter::repeat_n(None, width - samples)
        .chain(
            history
                .into_iter()
                .flat_map(|h| h.iter().skip(h.len() - samples))
                .map(|v| Some((v * 10.0).round() as u64)),
        )
        .collect();
    Sparkline::default()
        .data(&data)
        .style(theme::BLUE)
        .render(area, buf);
}

/// At most `max` characters of `s`, with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_ms(12), "12ms");
        assert_eq!(fmt_ms(1500), "1.5s");
        assert_eq!(fmt_ms(185_000), "3m05s");
        assert_eq!(fmt_age(-1), "-");
        assert_eq!(fmt_age(300), "0.3s");
        assert_eq!(fmt_bytes(8 << 30), "8.0G");
        assert_eq!(bar(3, 12, 4), "█░░░");
        assert_eq!(bar(0, 0, 2), "░░");
        assert_eq!(spark([0.0, 5.0, 10.0].iter(), 4), " ▁▅█");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
