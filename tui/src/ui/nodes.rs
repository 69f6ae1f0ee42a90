//! Nodes view: one row per node, and the selected node's details with its tasks/s history.

use crate::app::App;
use crate::ui::table::{self, Col, num};
use crate::ui::{bar, fmt_age, fmt_bytes, fmt_rate, history_chart, spark, theme};
use mozen_proto as pb;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Widget};

/// Sparkline cells in the TASKS/S column.
const SPARK: usize = 6;
/// Cells of the slots gauge's bar.
const GAUGE: usize = 5;

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let nodes = &app.data.nodes;
    // The selected node's details take the room the table does not need, 5 to 10 rows.
    let detail = area.height >= 16 && app.selected_node().is_some();
    let spare = area.height.saturating_sub(nodes.len() as u16 + 3);
    let detail_height = if detail { spare.clamp(5, 10) } else { 0 };
    let [list, detail_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(detail_height)]).areas(area);

    let width = |f: &dyn Fn(&pb::Node) -> usize, min: usize, max: usize| {
        nodes.iter().map(f).max().unwrap_or(0).clamp(min, max) as u16
    };
    let cols = [
        Col::new("ID", width(&|n| n.id.to_string().len(), 2, 6), 0),
        Col::new("NAME", width(&|n| n.name.chars().count(), 4, 16), 5),
        Col::new("ADDRESS", width(&|n| n.addr.len(), 7, 24), 3),
        Col::new("ROLE", 8, 1),
        Col::new("STATE", 8, 0),
        Col::new("CPU", 3, 7),
        Col::new("MEM", 6, 7),
        Col::new("SCORE", 5, 6),
        Col::new(
            "SLOTS",
            (GAUGE + 1) as u16 + width(&|n| slots(n).len(), 3, 9),
            1,
        ),
        Col::new("RUN", 3, 4),
        Col::new("TASKS/S", (SPARK + 6) as u16, 2),
        Col::new("HB", 4, 2),
    ];

    let down = nodes.iter().filter(|n| n.state == "down").count();
    let count = |state: &str| nodes.iter().filter(|n| n.state == state).count();
    let (draining, drained) = (count("draining"), count("drained"));
    let (busy, total) = nodes.iter().fold((0u64, 0u64), |(b, t), n| {
        (b + u64::from(n.busy_slots), t + u64::from(n.slots))
    });
    let mut title = vec![Span::styled(
        format!(" nodes {} ", nodes.len()),
        theme::BOLD,
    )];
    if down > 0 {
        title.push(Span::styled(format!("· {down} down "), theme::RED));
    }
    if draining > 0 {
        title.push(Span::styled(
            format!("· {draining} draining "),
            theme::YELLOW,
        ));
    }
    if drained > 0 {
        title.push(Span::styled(format!("· {drained} drained "), theme::YELLOW));
    }
    title.push(Span::raw(format!("· slots {busy}/{total} ")));

    table::render(
        list,
        buf,
        Block::bordered().title(Line::from(title)),
        &cols,
        nodes.len(),
        Some(&app.nodes),
        "no nodes",
        |i| row(app, &nodes[i]),
    );
    if detail && let Some(n) = app.selected_node() {
        render_detail(app, n, detail_area, buf);
    }
}

fn slots(n: &pb::Node) -> String {
    format!("{}/{}", n.busy_slots, n.slots)
}

fn row<'a>(app: &'a App, n: &'a pb::Node) -> Vec<Cell<'a>> {
    let role = if n.is_leader {
        Cell::from(Span::styled("★ leader", theme::LEADER))
    } else {
        Cell::from(n.role.as_str())
    };
    let full = n.slots > 0 && n.busy_slots >= n.slots;
    let gauge = Line::from(vec![
        Span::styled(
            bar(u64::from(n.busy_slots), u64::from(n.slots), GAUGE),
            if full { theme::YELLOW } else { theme::CYAN },
        ),
        Span::raw(format!(" {}", slots(n))),
    ]);
    let history = app.rates.get(&n.id);
    let sparkline = history.map_or_else(|| " ".repeat(SPARK), |h| spark(h.iter(), SPARK));
    let rate = Line::from(vec![
        Span::styled(sparkline, theme::BLUE),
        Span::raw(format!("{:>6}", fmt_rate(n.tasks_per_sec))),
    ]);
    let hb_style = if n.heartbeat_age_ms > 2_000 {
        theme::YELLOW
    } else {
        Default::default()
    };
    vec![
        num(n.id.to_string()),
        Cell::from(n.name.as_str()),
        Cell::from(n.addr.as_str()),
        role,
        Cell::from(Span::styled(n.state.as_str(), theme::node_state(&n.state))),
        num(n.cpus.to_string()),
        num(fmt_bytes(n.memory_bytes)),
        num(format!("{:.0}", n.score)),
        Cell::from(gauge),
        num(n.running.to_string()),
        Cell::from(rate),
        Cell::from(Line::styled(fmt_age(n.heartbeat_age_ms), hb_style).right_aligned()),
    ]
}

fn render_detail(app: &App, n: &pb::Node, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(Line::from(vec![
        Span::styled(format!(" node {} ", n.id), theme::BOLD),
        Span::raw(format!("{} ", n.name)),
    ]));
    let inner = block.inner(area);
    block.render(area, buf);
    let [info, chart] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    let role = if n.is_leader { "★ leader" } else { &n.role };
    let mut spans = vec![
        Span::raw(format!("{} · {role} · ", n.addr)),
        Span::styled(n.state.as_str(), theme::node_state(&n.state)),
        Span::raw(format!(
            " · slots {}/{} · running {} · heartbeat {} · {} cpus · {} · score {:.0}",
            n.busy_slots,
            n.slots,
            n.running,
            fmt_age(n.heartbeat_age_ms),
            n.cpus,
            fmt_bytes(n.memory_bytes),
            n.score,
        )),
    ];
    if !n.labels.is_empty() {
        let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        spans.push(Span::raw(format!(" · {}", labels.join(","))));
    }
    Paragraph::new(Line::from(spans)).render(info, buf);

    let history = app.rates.get(&n.id);
    let max = history.map_or(0.0, |h| h.iter().copied().fold(0.0, f64::max));
    let label = format!(
        " tasks/s {} (max {}) ",
        fmt_rate(n.tasks_per_sec),
        fmt_rate(max)
    );
    let [label_area, spark_area] = Layout::horizontal([
        Constraint::Length(label.chars().count() as u16),
        Constraint::Min(0),
    ])
    .areas(chart);
    Paragraph::new(Line::styled(label, theme::DIM)).render(label_area, buf);
    history_chart(history, spark_area, buf);
}
