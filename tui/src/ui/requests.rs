//! Requests view: the most recently updated requests (filtered with `/`), or, after Enter, one
//! request's tree of children from the `Tree` RPC.

use crate::app::{App, TreeView, call_label, short_key};
use crate::ui::table::{self, Col, num};
use crate::ui::{fmt_age, fmt_ms, theme};
use mozen_proto as pb;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell};

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    match &app.tree {
        Some(t) => render_tree(t, area, buf),
        None => render_list(app, area, buf),
    }
}

fn node(r: &pb::RequestInfo) -> Cell<'static> {
    num(r.node.map_or("-".into(), |n| n.to_string()))
}

fn duration(r: &pb::RequestInfo) -> Cell<'static> {
    num(if r.duration_ms > 0 || r.state == "done" {
        fmt_ms(r.duration_ms)
    } else {
        "-".into()
    })
}

fn state(r: &pb::RequestInfo) -> Cell<'static> {
    Cell::from(Span::styled(
        r.state.clone(),
        theme::request_state(&r.state),
    ))
}

fn error(r: &pb::RequestInfo) -> Cell<'static> {
    Cell::from(Span::styled(r.error.clone(), theme::RED))
}

fn render_list(app: &App, area: Rect, buf: &mut Buffer) {
    let cols = [
        Col::new("KEY", 8, 3),
        Col::fill("CALL", 16, 0),
        Col::new("STATE", 9, 0),
        Col::new("NODE", 4, 1),
        Col::new("TRY", 3, 5),
        Col::new("AGE", 5, 4),
        Col::new("TIME", 7, 2),
        Col::new("KIDS", 4, 6),
        Col::fill("ERROR", 12, 3),
    ];
    let total = app.data.requests.len();
    let shown = app.visible_len();
    let title = if app.filter.is_empty() {
        Line::from(vec![
            Span::styled(" requests ", theme::BOLD),
            Span::raw(format!("{total} most recent ")),
        ])
    } else {
        Line::from(vec![
            Span::styled(" requests ", theme::BOLD),
            Span::styled(format!("/{} ", app.filter), theme::YELLOW),
            Span::raw(format!("{shown} of {total} ")),
        ])
    };
    let now = app.data.now_ms;
    table::render(
        area,
        buf,
        Block::bordered().title(title),
        &cols,
        shown,
        Some(&app.requests),
        if app.filter.is_empty() {
            "no requests yet"
        } else {
            "no request matches the filter (Esc clears it)"
        },
        |i| {
            let r = app.visible_request(i).expect("row in range");
            vec![
                Cell::from(Span::styled(short_key(&r.key).to_string(), theme::DIM)),
                Cell::from(call_label(&r.function, &r.args_json, 80)),
                state(r),
                node(r),
                num(r.attempts.to_string()),
                num(fmt_age(now.saturating_sub(r.created_ms) as i64)),
                duration(r),
                num(r.children.to_string()),
                error(r),
            ]
        },
    );
}

fn render_tree(t: &TreeView, area: Rect, buf: &mut Buffer) {
    let cols = [
        Col::fill("REQUEST", 24, 0),
        Col::new("STATE", 9, 0),
        Col::new("NODE", 4, 1),
        Col::new("TIME", 7, 2),
        Col::fill("ERROR", 12, 3),
    ];
    let rows = t.rows.as_deref().unwrap_or_default();
    let mut title = vec![
        Span::styled(" tree of ", theme::BOLD),
        Span::styled(format!("{} ", t.label), theme::BOLD),
        Span::styled(format!("[{}] ", short_key(&t.key)), theme::DIM),
    ];
    if t.rows.is_some() {
        title.push(Span::raw(format!("· {} requests ", rows.len())));
    }
    title.push(Span::raw("· Esc back "));
    table::render(
        area,
        buf,
        Block::bordered().title(Line::from(title)),
        &cols,
        rows.len(),
        Some(&t.list),
        if t.rows.is_some() {
            "empty tree"
        } else {
            "loading…"
        },
        |i| {
            let row = &rows[i];
            let r = row.entry.request.clone().unwrap_or_default();
            let mut name = vec![
                Span::styled(row.prefix.clone(), theme::DIM),
                Span::raw(call_label(&r.function, &r.args_json, 60)),
            ];
            if row.entry.shared {
                name.push(Span::styled(
                    format!(" ⇄ shared by {}", r.parents),
                    theme::BLUE,
                ));
            }
            if row.entry.repeated {
                name.push(Span::styled(" ↑ shown above", theme::DIM));
            }
            vec![
                Cell::from(Line::from(name)),
                state(&r),
                node(&r),
                duration(&r),
                error(&r),
            ]
        },
    );
}
