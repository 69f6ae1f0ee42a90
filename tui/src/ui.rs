//! Drawing. Pure: reads `App`, never awaits.

use crate::app::{App, Conn, KEYS, Mode, View};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs,
};

fn state_style(state: &str) -> Style {
    match state {
        "down" | "failed" => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        "draining" | "drained" | "queued" => Style::default().fg(Color::Yellow),
        "running" => Style::default().fg(Color::Cyan),
        "done" | "active" => Style::default().fg(Color::Green),
        "cancelled" => Style::default().add_modifier(Modifier::DIM),
        _ => Style::default(),
    }
}

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
}

fn age(ms: i64) -> String {
    match ms {
        m if m < 0 => "-".into(),
        m if m < 10_000 => format!("{:.1}s", m as f64 / 1000.0),
        m if m < 120_000 => format!("{}s", m / 1000),
        m => format!("{}m", m / 60_000),
    }
}

fn gauge(used: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (used as usize * width).div_ceil(total as usize).min(width)
    };
    format!(
        "{}{} {used}/{total}",
        "█".repeat(filled),
        "░".repeat(width - filled)
    )
}

pub fn draw(app: &App, f: &mut Frame<'_>) {
    let [top, body, status] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_top(app, f, top);
    match app.view {
        View::Nodes => draw_nodes(app, f, body),
        View::Queues => draw_queues(app, f, body),
        View::Requests => draw_requests(app, f, body),
        View::Raft => draw_raft(app, f, body),
        View::Events => draw_events(app, f, body),
    }
    let line = match &app.mode {
        Mode::Command(s) => format!(":{s}"),
        Mode::Filter(s) => format!("/{s}"),
        Mode::AddNode(s) => format!("add node (ID@HOST:PORT): {s}"),
        Mode::Confirm(op) => format!("{}? (y/n)", op.describe()),
        Mode::Normal => app.status.clone(),
    };
    let style = if app.status.starts_with("error") && app.mode == Mode::Normal {
        Style::default().fg(Color::Red)
    } else {
        Style::default()
    };
    f.render_widget(Paragraph::new(line).style(style), status);
    if app.help {
        draw_help(app, f);
    }
}

fn draw_top(app: &App, f: &mut Frame<'_>, area: Rect) {
    let [tabs, conn] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(38)]).areas(area);
    let titles: Vec<Line<'_>> = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| Line::from(format!("{} {}", i + 1, v.name())))
        .collect();
    let idx = View::ALL.iter().position(|v| *v == app.view).unwrap_or(0);
    let t = Tabs::new(titles)
        .select(idx)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::BOTTOM));
    f.render_widget(t, tabs);
    let (text, color) = match &app.conn {
        Conn::Connected(a) => (format!("● {a}"), Color::Green),
        Conn::Connecting(a) => (format!("◌ connecting {a}"), Color::Yellow),
        Conn::Lost(e) => (format!("✕ {e}"), Color::Red),
    };
    let ro = if app.readonly { " [read-only]" } else { "" };
    let text = format!("mozen {text}");
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(text, Style::default().fg(color)),
            Span::raw(ro),
        ])),
        conn,
    );
}

fn table_state(app: &App) -> TableState {
    TableState::default().with_selected(Some(app.selected))
}

fn draw_nodes(app: &App, f: &mut Frame<'_>, area: Rect) {
    let [table_area, spark_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(area);
    let header = Row::new([
        "ID", "NAME", "ADDRESS", "ROLE", "STATE", "CPU", "MEM", "SCORE", "SLOTS", "RUN", "TASK/S",
        "HB",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = app.data.nodes.iter().map(|n| {
        let role = if n.is_leader {
            "★leader".to_string()
        } else {
            n.role.clone()
        };
        Row::new(vec![
            Cell::from(n.id.to_string()),
            Cell::from(n.name.clone()),
            Cell::from(n.addr.clone()),
            Cell::from(role),
            Cell::from(n.state.clone()).style(state_style(&n.state)),
            Cell::from(n.cpus.to_string()),
            Cell::from(gib(n.memory_bytes)),
            Cell::from(format!("{:.0}", n.score)),
            Cell::from(gauge(n.busy_slots, n.slots, 6)),
            Cell::from(n.running.to_string()),
            Cell::from(format!("{:.1}", n.tasks_per_sec)),
            Cell::from(age(n.heartbeat_age_ms)),
        ])
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(3),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(13),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(5),
    ];
    let t = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" nodes ({}) ", app.data.nodes.len())),
        );
    f.render_stateful_widget(t, table_area, &mut table_state(app));
    let sel = app.data.nodes.get(app.selected);
    let data: Vec<u64> = sel
        .and_then(|n| app.rates.get(&n.id))
        .map(|h| h.iter().copied().collect())
        .unwrap_or_default();
    let title = sel.map_or(" tasks/s ".to_string(), |n| {
        format!(" tasks/s of node {} ", n.id)
    });
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .block(Block::default().borders(Borders::ALL).title(title)),
        spark_area,
    );
}

fn draw_queues(app: &App, f: &mut Frame<'_>, area: Rect) {
    let q = app.data.queue.clone().unwrap_or_default();
    let [summary, table_area] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(area);
    let text = format!(
        "queued {}   running {}   done {}   failed {}   throughput {:.1} tasks/s",
        q.queued, q.running, q.done, q.failed, q.throughput
    );
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" queue ")),
        summary,
    );
    let rows = q.groups.iter().map(|g| {
        Row::new(vec![
            g.priority.to_string(),
            g.function.clone(),
            g.count.to_string(),
            age(g.oldest_age_ms as i64),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Min(16),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(["PRIO", "FUNCTION", "QUEUED", "OLDEST"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" queued by priority and function "),
    );
    f.render_stateful_widget(t, table_area, &mut table_state(app));
}

fn short(k: &str) -> String {
    k.chars().take(10).collect()
}

fn draw_requests(app: &App, f: &mut Frame<'_>, area: Rect) {
    if let Some(tree) = &app.tree {
        let rows = tree.iter().map(|e| {
            let r = e.request.clone().unwrap_or_default();
            let mut name = format!(
                "{}{}({})",
                "  ".repeat(e.depth as usize),
                r.function,
                r.args_json
            );
            if e.shared {
                name.push_str(" ⇄shared");
            }
            if e.repeated {
                name.push_str(" ↑");
            }
            Row::new(vec![
                Cell::from(name),
                Cell::from(r.state.clone()).style(state_style(&r.state)),
                Cell::from(r.node.map_or("-".into(), |n| n.to_string())),
                Cell::from(format!("{}ms", r.duration_ms)),
                Cell::from(r.error.clone()),
            ])
        });
        let t = Table::new(
            rows,
            [
                Constraint::Min(30),
                Constraint::Length(9),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["REQUEST", "STATE", "NODE", "TIME", "ERROR"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" request tree (Esc to close) "),
        );
        f.render_stateful_widget(t, area, &mut table_state(app));
        return;
    }
    let reqs = app.requests();
    let rows = reqs.iter().map(|r| {
        Row::new(vec![
            Cell::from(short(&r.key)),
            Cell::from(format!("{}({})", r.function, r.args_json)),
            Cell::from(r.state.clone()).style(state_style(&r.state)),
            Cell::from(r.node.map_or("-".into(), |n| n.to_string())),
            Cell::from(format!("{}ms", r.duration_ms)),
            Cell::from(r.children.to_string()),
        ])
    });
    let title = if app.filter.is_empty() {
        format!(" requests ({}) ", reqs.len())
    } else {
        format!(" requests /{} ({}) ", app.filter, reqs.len())
    };
    let t = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Min(24),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new(["KEY", "CALL", "STATE", "NODE", "TIME", "KIDS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::ALL).title(title));
    f.render_stateful_widget(t, area, &mut table_state(app));
}

fn draw_raft(app: &App, f: &mut Frame<'_>, area: Rect) {
    let r = app.data.raft.clone().unwrap_or_default();
    let members: Vec<String> = r
        .voters
        .iter()
        .map(|m| {
            format!(
                "{}{} {}",
                m.id,
                if Some(m.id) == r.leader_id { "★" } else { "" },
                m.addr
            )
        })
        .chain(
            r.learners
                .iter()
                .map(|m| format!("{} {} (learner)", m.id, m.addr)),
        )
        .collect();
    let lines = vec![
        Line::from(format!(
            "leader       {}",
            r.leader_id
                .map_or("none".into(), |l| format!("{l} ({})", r.leader_addr))
        )),
        Line::from(format!("term         {}", r.term)),
        Line::from(format!("commit       {}", r.commit_index)),
        Line::from(format!("applied      {}", r.applied_index)),
        Line::from(format!(
            "last log     {}   entries {}   disk {:.1} MiB",
            r.last_log_index,
            r.log_entries,
            r.disk_bytes as f64 / 1048576.0
        )),
        Line::from(format!(
            "snapshot     {}   purged {}",
            r.snapshot_index, r.purged_index
        )),
        Line::from(format!("membership   {}", members.join(", "))),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" raft ")),
        area,
    );
}

fn draw_events(app: &App, f: &mut Frame<'_>, area: Rect) {
    let now = app.data.now_ms;
    let rows = app.data.events.iter().rev().map(|e| {
        let style = match e.kind.as_str() {
            "down" | "failure" | "removed" => Style::default().fg(Color::Red),
            "draining" | "drained" | "requeued" => Style::default().fg(Color::Yellow),
            _ => Style::default(),
        };
        Row::new(vec![
            Cell::from(age(now.saturating_sub(e.at_ms) as i64)),
            Cell::from(e.kind.clone()).style(style),
            Cell::from(e.message.clone()),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Min(20),
        ],
    )
    .header(Row::new(["AGO", "KIND", "EVENT"]).style(Style::default().add_modifier(Modifier::BOLD)))
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::ALL).title(" events "));
    f.render_stateful_widget(t, area, &mut table_state(app));
}

fn draw_help(app: &App, f: &mut Frame<'_>) {
    let area = f.area();
    let w = area.width.min(70);
    let h = (KEYS.len() as u16 + 4).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line<'_>> = KEYS
        .iter()
        .filter(|(k, _)| !app.readonly || !matches!(*k, "d / u" | "p / D" | "x" | "a" | "r"))
        .map(|(k, d)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:<14}"),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*d),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" keys (any key closes) "),
        ),
        r,
    );
}
