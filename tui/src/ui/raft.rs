//! Raft view: the replicated log as the leader sees it, and the membership.

use crate::app::App;
use crate::ui::table::{self, Col, num};
use crate::ui::{fmt_age, fmt_bytes, theme};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Widget};

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let r = app.data.raft.clone().unwrap_or_default();
    let key = |k: &'static str| Span::styled(format!("{k:<15}"), theme::BOLD);
    let leader = match r.leader_id {
        Some(id) => Span::styled(format!("★ node {id} at {}", r.leader_addr), theme::LEADER),
        None => Span::styled("none: an election is under way", theme::RED),
    };
    let behind = r.commit_index.saturating_sub(r.applied_index);
    let applied = if behind == 0 {
        Span::raw(format!("{} (up to date)", r.applied_index))
    } else {
        Span::styled(
            format!("{} ({behind} behind the commit index)", r.applied_index),
            theme::YELLOW,
        )
    };
    let lines = vec![
        Line::from(vec![key("leader"), leader]),
        Line::from(vec![key("term"), Span::raw(r.term.to_string())]),
        Line::from(vec![
            key("commit index"),
            Span::raw(r.commit_index.to_string()),
        ]),
        Line::from(vec![key("applied index"), applied]),
        Line::from(vec![
            key("log"),
            Span::raw(format!(
                "last index {} · {} entries kept · {} on disk",
                r.last_log_index,
                r.log_entries,
                fmt_bytes(r.disk_bytes)
            )),
        ]),
        Line::from(vec![
            key("last snapshot"),
            Span::raw(if r.snapshot_index == 0 {
                "none yet".to_string()
            } else {
                format!(
                    "at index {} · log purged up to {}",
                    r.snapshot_index, r.purged_index
                )
            }),
        ]),
        Line::from(vec![
            key("membership"),
            Span::raw(format!(
                "{} · {} (quorum {})",
                plural(r.voters.len(), "voter"),
                plural(r.learners.len(), "learner"),
                r.voters.len() / 2 + 1
            )),
        ]),
    ];
    let [info, members] = Layout::vertical([
        Constraint::Length(lines.len() as u16 + 2),
        Constraint::Min(3),
    ])
    .areas(area);
    let title = Line::from(vec![
        Span::styled(" raft ", theme::BOLD),
        Span::raw(format!(
            "as seen by node {} ({}) ",
            r.node_id, r.server_state
        )),
    ]);
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .render(info, buf);

    let members_list: Vec<(u64, &str, &str)> = r
        .voters
        .iter()
        .map(|m| (m.id, m.addr.as_str(), "voter"))
        .chain(
            r.learners
                .iter()
                .map(|m| (m.id, m.addr.as_str(), "learner")),
        )
        .collect();
    let cols = [
        Col::new("ID", 4, 0),
        Col::fill("ADDRESS", 16, 0),
        Col::new("ROLE", 8, 0),
        Col::new("LEADER", 6, 1),
        Col::new("STATE", 8, 0),
        Col::new("HB", 5, 2),
    ];
    table::render(
        members,
        buf,
        Block::bordered().title(" membership "),
        &cols,
        members_list.len(),
        None,
        "no members",
        |i| {
            let (id, addr, role) = members_list[i];
            let node = app.data.nodes.iter().find(|n| n.id == id);
            let state = node.map_or("-", |n| n.state.as_str());
            vec![
                num(id.to_string()),
                Cell::from(addr.to_string()),
                Cell::from(role),
                Cell::from(if r.leader_id == Some(id) {
                    Span::styled("★", theme::LEADER)
                } else {
                    Span::raw("")
                }),
                Cell::from(Span::styled(state.to_string(), theme::node_state(state))),
                num(node.map_or("-".into(), |n| fmt_age(n.heartbeat_age_ms))),
            ]
        },
    );
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
