//! Views rendered into TestBackend from fixture state and compared with text snapshots; key
//! sequences replayed through `App::update`.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_console::app::{Action, App, Conn, Mode, Op, View};
use mozen_proto as pb;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn fixture() -> pb::ClusterUpdate {
    let node = |id: u64, state: &str, busy: u32, leader: bool| pb::Node {
        id,
        name: format!("node-{id}"),
        addr: format!("10.0.0.{id}:7070"),
        cpus: 4,
        memory_bytes: 8 << 30,
        slots: 12,
        state: state.into(),
        role: "voter".into(),
        score: 32.0,
        is_leader: leader,
        busy_slots: busy,
        running: busy,
        heartbeat_age_ms: 300,
        tasks_per_sec: 12.0,
        labels: Default::default(),
    };
    let req = |k: &str, f: &str, a: &str, s: &str| pb::RequestInfo {
        key: k.repeat(64 / k.len()),
        function: f.into(),
        args_json: a.into(),
        state: s.into(),
        node: Some(1),
        duration_ms: 12,
        ..Default::default()
    };
    pb::ClusterUpdate {
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
            voters: (1..=3)
                .map(|id| pb::Member {
                    id,
                    addr: format!("10.0.0.{id}:7070"),
                })
                .collect(),
            log_entries: 20,
            disk_bytes: 3 << 20,
            ..Default::default()
        }),
        nodes: vec![
            node(1, "active", 3, true),
            node(2, "draining", 1, false),
            node(3, "down", 0, false),
        ],
        queue: Some(pb::QueueSummary {
            queued: 7,
            running: 4,
            done: 100,
            failed: 2,
            throughput: 35.5,
            groups: vec![pb::QueueGroup {
                function: "fib".into(),
                priority: 0,
                count: 7,
                oldest_age_ms: 1500,
            }],
        }),
        requests: vec![
            req("a1", "fib", "20", "done"),
            req("b2", "ratio", "1", "failed"),
            req("c3", "sleep", "500", "running"),
        ],
        events: vec![pb::Event {
            at_ms: 9_000,
            kind: "down".into(),
            node: Some(3),
            message: "node 3 is down".into(),
        }],
        functions: vec![],
    }
}

fn app() -> App {
    let mut a = App::new(false);
    a.update(Action::Conn(Conn::Connected("10.0.0.1:7070".into())));
    a.update(Action::Update(Box::new(fixture())));
    a
}

fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn code(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| mozen_console::ui::draw(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_view_renders_at_100x30_and_80x24() {
    let mut a = app();
    for (i, v) in View::ALL.iter().enumerate() {
        a.update(key(char::from(b'1' + i as u8)));
        assert_eq!(a.view, *v);
        insta::assert_snapshot!(format!("{}_100x30", v.name()), render(&a, 100, 30));
        insta::assert_snapshot!(format!("{}_80x24", v.name()), render(&a, 80, 24));
    }
}

#[test]
fn help_lists_keys_and_q_quits() {
    let mut a = app();
    a.update(key('?'));
    let screen = render(&a, 100, 30);
    assert!(
        screen.contains("drain") && screen.contains("quit"),
        "{screen}"
    );
    a.update(key('x')); // any key closes help
    assert!(!a.help);
    a.update(key('q'));
    assert!(a.quit);
}

#[test]
fn drain_asks_for_confirmation() {
    let mut a = app();
    a.update(key('j')); // node 2
    assert_eq!(a.update(key('d')), None);
    assert_eq!(a.mode, Mode::Confirm(Op::NodeOp { id: 2, op: "drain" }));
    assert!(render(&a, 100, 30).contains("drain node 2? (y/n)"));
    assert_eq!(a.update(key('y')), Some(Op::NodeOp { id: 2, op: "drain" }));
    a.update(Action::Done(Ok("node 2 is draining".into())));
    assert!(render(&a, 100, 30).contains("node 2 is draining"));
    // Declining does nothing.
    a.update(key('d'));
    assert_eq!(a.update(key('n')), None);
    assert!(a.status.contains("not done"));
}

#[test]
fn readonly_hides_actions() {
    let mut a = App::new(true);
    a.update(Action::Update(Box::new(fixture())));
    assert_eq!(a.update(key('d')), None);
    assert_eq!(a.mode, Mode::Normal);
    assert!(a.status.contains("read-only"));
    a.update(key('?'));
    assert!(!render(&a, 100, 30).contains("drain (asks)"));
}

#[test]
fn command_mode_filter_tree_and_errors() {
    let mut a = app();
    for c in ":req".chars() {
        a.update(key(c));
    }
    a.update(code(KeyCode::Enter));
    assert_eq!(a.view, View::Requests);
    for c in "/ratio".chars() {
        a.update(key(c));
    }
    a.update(code(KeyCode::Enter));
    assert_eq!(a.requests().len(), 1);
    let op = a.update(code(KeyCode::Enter));
    assert!(matches!(op, Some(Op::Tree { .. })));
    assert_eq!(
        a.update(key('r')),
        Some(Op::Retry {
            function: "ratio".into(),
            args_json: "1".into()
        }),
        "a failed request can be retried"
    );
    a.update(Action::Done(Err(
        "MZ-NOT-LEADER: node 2 is not the leader".into()
    )));
    assert!(render(&a, 100, 30).contains("error: MZ-NOT-LEADER"));
    for c in ":nope".chars() {
        a.update(key(c));
    }
    a.update(code(KeyCode::Enter));
    assert!(a.status.contains("no view named"));
    // Adding a node validates the address.
    a.update(key('1'));
    a.update(key('a'));
    for c in "4@host:99999".chars() {
        a.update(key(c));
    }
    assert_eq!(a.update(code(KeyCode::Enter)), None);
    assert!(a.status.contains("port must be 1-65535"));
}
