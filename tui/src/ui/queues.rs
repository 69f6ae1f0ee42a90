//! Queues view: totals and throughput, what waits by priority and function, and per-function
//! counters with their execution rate.

use crate::app::App;
use crate::ui::table::{self, Col, num};
use crate::ui::{bar, fmt_age, fmt_rate, history_chart, theme};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Widget};

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let q = app.data.queue.clone().unwrap_or_default();
    let functions = &app.data.functions;
    let room = area.height.saturating_sub(4 + 6);
    let fn_height = if functions.is_empty() || room < 4 {
        0
    } else {
        (functions.len() as u16 + 3).min(room)
    };
    let [summary, groups, funcs] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(3),
        Constraint::Length(fn_height),
    ])
    .areas(area);

    // Totals and the throughput history.
    let block = Block::bordered().title(Span::styled(" queue ", theme::BOLD));
    let inner = block.inner(summary);
    block.render(summary, buf);
    let [line, chart] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    Paragraph::new(Line::from(vec![
        Span::styled(
            format!("queued {}", q.queued),
            theme::request_state("queued"),
        ),
        Span::raw("  "),
        Span::styled(
            format!("running {}", q.running),
            theme::request_state("running"),
        ),
        Span::raw("  "),
        Span::styled(format!("done {}", q.done), theme::request_state("done")),
        Span::raw("  "),
        Span::styled(
            format!("failed {}", q.failed),
            if q.failed > 0 {
                theme::RED
            } else {
                Default::default()
            },
        ),
        Span::raw(format!("  throughput {} tasks/s", fmt_rate(q.throughput))),
    ]))
    .render(line, buf);
    let max = app.throughput.iter().copied().fold(0.0, f64::max);
    let label = format!("last 30 s, max {}/s ", fmt_rate(max));
    let [label_area, spark_area] = Layout::horizontal([
        Constraint::Length(label.chars().count() as u16),
        Constraint::Min(0),
    ])
    .areas(chart);
    Paragraph::new(Line::styled(label, theme::DIM)).render(label_area, buf);
    history_chart(Some(&app.throughput), spark_area, buf);

    // What waits, by priority and function.
    let cols = [
        Col::new("PRIO", 4, 0),
        Col::fill("FUNCTION", 12, 0),
        Col::new("QUEUED", 7, 0),
        Col::new("OLDEST", 6, 1),
        Col::fill("SHARE", 12, 2),
    ];
    let queued = q.queued.max(1);
    table::render(
        groups,
        buf,
        Block::bordered().title(format!(
            " queued by priority and function ({} groups) ",
            q.groups.len()
        )),
        &cols,
        q.groups.len(),
        Some(&app.queues),
        "nothing is queued",
        |i| {
            let g = &q.groups[i];
            let age_style = if g.oldest_age_ms > 10_000 {
                theme::YELLOW
            } else {
                Default::default()
            };
            vec![
                num(g.priority.to_string()),
                Cell::from(g.function.clone()),
                num(g.count.to_string()),
                Cell::from(
                    Line::styled(fmt_age(g.oldest_age_ms as i64), age_style).right_aligned(),
                ),
                Cell::from(Span::styled(bar(g.count, queued, 12), theme::CYAN)),
            ]
        },
    );

    if fn_height == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..functions.len()).collect();
    let rate = |i: usize| {
        app.function_rates
            .get(&functions[i].name)
            .copied()
            .unwrap_or(0.0)
    };
    order.sort_by(|&a, &b| {
        rate(b)
            .total_cmp(&rate(a))
            .then_with(|| functions[a].name.cmp(&functions[b].name))
    });
    let cols = [
        Col::fill("FUNCTION", 10, 0),
        Col::new("RUNS/S", 6, 0),
        Col::new("SUBMITTED", 9, 1),
        Col::new("EXECUTED", 9, 1),
        Col::new("MEMO HITS", 9, 2),
        Col::new("JOINED", 7, 3),
        Col::new("FAILED", 7, 1),
        Col::new("REG", 3, 4),
    ];
    table::render(
        funcs,
        buf,
        Block::bordered().title(" functions "),
        &cols,
        functions.len(),
        None,
        "",
        |i| {
            let f = &functions[order[i]];
            let failed = if f.failures > 0 {
                theme::RED
            } else {
                Default::default()
            };
            vec![
                Cell::from(f.name.clone()),
                num(fmt_rate(rate(order[i]))),
                num(f.submitted.to_string()),
                num(f.executions.to_string()),
                num(f.memo_hits.to_string()),
                num(f.joined.to_string()),
                Cell::from(Line::styled(f.failures.to_string(), failed).right_aligned()),
                Cell::from(if f.registered { "yes" } else { "no" }),
            ]
        },
    );
}
