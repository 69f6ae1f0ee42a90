//! Events view: what the cluster recorded (joins, drains, failures, re-queues), newest first.

use crate::app::App;
use crate::ui::table::{self, Col, num};
use crate::ui::{fmt_age, theme};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell};

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let events = &app.data.events;
    let now = app.data.now_ms;
    let cols = [
        Col::new("AGO", 5, 0),
        Col::new("KIND", 9, 0),
        Col::new("NODE", 4, 1),
        Col::fill("EVENT", 20, 0),
    ];
    table::render(
        area,
        buf,
        Block::bordered().title(Span::styled(
            format!(" events {} (newest first) ", events.len()),
            theme::BOLD,
        )),
        &cols,
        events.len(),
        Some(&app.events),
        "no events yet",
        |i| {
            // The agent sends them oldest first.
            let e = &events[events.len() - 1 - i];
            vec![
                num(fmt_age(now.saturating_sub(e.at_ms) as i64)),
                Cell::from(Span::styled(e.kind.clone(), theme::event_kind(&e.kind))),
                num(e.node.map_or("-".into(), |n| n.to_string())),
                Cell::from(e.message.clone()),
            ]
        },
    );
}
