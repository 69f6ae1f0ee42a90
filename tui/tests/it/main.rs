//! Console integration tests: views drawn into `TestBackend` from fixture state and compared with
//! text snapshots (`snapshots/`), and key sequences replayed through `App::update`.

mod keys;
mod views;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_console::app::{Action, App, Conn};
use mozen_proto as pb;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

pub fn node(id: u64, state: &str, role: &str, busy: u32, leader: bool) -> pb::Node {
    pb::Node {
        id,
        name: format!("node-{id}"),
        addr: format!("10.0.0.{id}:7070"),
        cpus: 4,
        memory_bytes: 8 << 30,
        slots: 12,
        state: state.into(),
        role: role.into(),
        score: 32.0,
        is_leader: leader,
        busy_slots: busy,
        running: busy,
        heartbeat_age_ms: if state == "down" { 9_500 } else { 300 },
        tasks_per_sec: f64::from(busy) * 4.0,
        labels: Default::default(),
        ..Default::default()
    }
}

pub fn req(k: &str, f: &str, a: &str, s: &str) -> pb::RequestInfo {
    pb::RequestInfo {
        key: k.repeat(64 / k.len()),
        function: f.into(),
        args_json: a.into(),
        state: s.into(),
        node: (s != "queued").then_some(1),
        attempts: 1,
        created_ms: 8_000,
        updated_ms: 9_000,
        duration_ms: if s == "done" || s == "failed" { 12 } else { 0 },
        error: if s == "failed" {
            "MZ-CHILD-FAILED: divide([1,0]): division by zero".into()
        } else {
            String::new()
        },
        parents: 0,
        children: if f == "tree" { 3 } else { 0 },
        ..Default::default()
    }
}

/// A small healthy-ish cluster: a leader, a draining voter, a down voter, a learner, a worker.
pub fn fixture() -> pb::ClusterUpdate {
    pb::ClusterUpdate {
        truncated: false,
        now_ms: 10_000,
        raft: Some(pb::RaftStatus {
            node_id: 1,
            leader_id: Some(1),
            leader_addr: "10.0.0.1:7070".into(),
            term: 3,
            last_log_index: 120,
            commit_index: 120,
            applied_index: 119,
            snapshot_index: 100,
            purged_index: 90,
            voters: (1..=3)
                .map(|id| pb::Member {
                    id,
                    addr: format!("10.0.0.{id}:7070"),
                })
                .collect(),
            learners: vec![pb::Member {
                id: 4,
                addr: "10.0.0.4:7070".into(),
            }],
            server_state: "leader".into(),
            log_entries: 30,
            disk_bytes: 3 << 20,
            ..Default::default()
        }),
        nodes: vec![
            node(1, "active", "voter", 3, true),
            node(2, "draining", "voter", 1, false),
            node(3, "down", "voter", 0, false),
            node(4, "active", "learner", 12, false),
            node(5, "drained", "worker", 0, false),
        ],
        queue: Some(pb::QueueSummary {
            queued: 7,
            running: 4,
            done: 100,
            failed: 2,
            throughput: 35.5,
            groups: vec![
                pb::QueueGroup {
                    function: "fib".into(),
                    priority: 1,
                    count: 5,
                    oldest_age_ms: 1500,
                },
                pb::QueueGroup {
                    function: "sleep".into(),
                    priority: 0,
                    count: 2,
                    oldest_age_ms: 12_000,
                },
            ],
        }),
        requests: vec![
            req("a1", "fib", "20", "done"),
            req("b2", "ratio", "1", "failed"),
            req("c3", "sleep", "500", "running"),
            req("d4", "tree", "[3,3,\"n1\"]", "queued"),
        ],
        events: vec![
            pb::Event {
                at_ms: 4_000,
                kind: "joined".into(),
                node: Some(4),
                message: "node 4 joined as a learner".into(),
            },
            pb::Event {
                at_ms: 9_000,
                kind: "down".into(),
                node: Some(3),
                message: "node 3 is down".into(),
            },
        ],
        functions: vec![
            pb::FunctionStats {
                name: "fib".into(),
                submitted: 40,
                executions: 21,
                memo_hits: 19,
                joined: 2,
                failures: 0,
                registered: true,
                shape: "n".into(),
                origin: "built-in".into(),
            },
            pb::FunctionStats {
                name: "ratio".into(),
                submitted: 3,
                executions: 3,
                memo_hits: 0,
                joined: 0,
                failures: 2,
                registered: true,
                shape: "[a, b]".into(),
                origin: "custom".into(),
            },
        ],
    }
}

pub fn app_with(readonly: bool) -> App {
    let mut a = App::new(readonly);
    a.update(Action::Conn(Conn::Connected {
        addr: "10.0.0.1:7070".into(),
    }));
    a.update(Action::Update(Box::new(fixture())));
    a
}

pub fn app() -> App {
    app_with(false)
}

pub fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

pub fn code(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

/// Replays typed text, one key per character.
pub fn typed(a: &mut App, s: &str) {
    for c in s.chars() {
        assert_eq!(a.update(key(c)), None, "typing {c:?} of {s:?}");
    }
}

/// The screen as text, one line per row.
pub fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| mozen_console::ui::draw(app, f)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
