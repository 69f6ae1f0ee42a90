//! Every view rendered at 100x30 and 80x24, compared with text snapshots.

use crate::*;
use crossterm::event::KeyCode;
use mozen_console::app::{Action, App, Conn, View};
use mozen_proto as pb;

#[test]
fn every_view_at_100x30_and_80x24() {
    let mut a = app();
    for (i, v) in View::ALL.iter().enumerate() {
        a.update(key(char::from(b'1' + i as u8)));
        assert_eq!(a.view, *v);
        insta::assert_snapshot!(format!("{}_100x30", v.name()), render(&a, 100, 30));
        insta::assert_snapshot!(format!("{}_80x24", v.name()), render(&a, 80, 24));
    }
}

#[test]
fn help_at_80x24() {
    let mut a = app();
    a.update(key('?'));
    insta::assert_snapshot!("help_80x24", render(&a, 80, 24));
    let mut ro = app_with(true);
    ro.update(key('?'));
    insta::assert_snapshot!("help_readonly_80x24", render(&ro, 80, 24));
}

fn tree_entries() -> Vec<pb::TreeEntry> {
    let e = |depth, r: pb::RequestInfo, shared, repeated| pb::TreeEntry {
        depth,
        request: Some(r),
        shared,
        repeated,
    };
    let mut leaf = req("e5", "tree", "[0,2,[\"n1\",0]]", "done");
    leaf.parents = 2;
    vec![
        e(
            0,
            req("d4", "tree", "[2,2,\"n1\"]", "running"),
            false,
            false,
        ),
        e(
            1,
            req("f6", "tree", "[1,2,[\"n1\",0]]", "running"),
            false,
            false,
        ),
        e(2, leaf.clone(), true, false),
        e(2, req("g7", "ratio", "1", "failed"), false, false),
        e(
            1,
            req("h8", "tree", "[1,2,[\"n1\",1]]", "queued"),
            false,
            false,
        ),
        e(2, leaf, true, true),
    ]
}

#[test]
fn request_tree_at_100x30() {
    let mut a = app();
    a.update(key('3'));
    typed(&mut a, "jjj"); // the queued tree request
    let key = a.selected_request().unwrap().key.clone();
    let effect = a.update(code(KeyCode::Enter));
    assert!(matches!(
        effect,
        Some(mozen_console::app::Effect::Tree { .. })
    ));
    assert!(render(&a, 100, 30).contains("loading…"));
    a.update(Action::Tree {
        key,
        result: Ok(tree_entries()),
    });
    a.update(key_down());
    a.update(key_down());
    insta::assert_snapshot!("tree_100x30", render(&a, 100, 30));
}

fn key_down() -> Action {
    code(KeyCode::Down)
}

#[test]
fn waiting_and_disconnected() {
    let mut a = App::new(false);
    a.update(Action::Conn(Conn::Connecting {
        addr: "127.0.0.1:7070".into(),
    }));
    insta::assert_snapshot!("waiting_80x24", render(&a, 80, 24));
    let mut a = app();
    a.update(Action::Conn(Conn::Lost {
        error: "MZ-UNREACHABLE: 10.0.0.1:7070: tcp connect error".into(),
        retry_in_ms: 400,
    }));
    let screen = render(&a, 100, 30);
    assert!(
        screen.lines().next().unwrap().contains(
            "✕ disconnected, retry in 400ms: MZ-UNREACHABLE: 10.0.0.1:7070: tcp connect error"
        ),
        "{screen}"
    );
    assert!(
        screen.contains("node-3"),
        "the last picture stays on screen"
    );
}

/// Any size, however small, draws without panicking.
#[test]
fn resizes_cleanly() {
    let mut a = app();
    for v in 1..=5 {
        a.update(key(char::from(b'0' + v)));
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 10), (79, 23), (200, 60)] {
            render(&a, w, h);
        }
    }
    a.update(key('?'));
    render(&a, 5, 2);
}

/// 500 nodes and 100,000 requests draw (the benchmark times it; this checks it works).
#[test]
fn large_cluster_draws() {
    let mut u = fixture();
    u.nodes = (1..=500)
        .map(|id| node(id, "active", "worker", (id % 12) as u32, id == 1))
        .collect();
    u.requests = (0..100_000u32)
        .map(|i| req(&format!("{i:08x}"), "fib", &i.to_string(), "done"))
        .collect();
    let mut a = App::new(false);
    a.update(Action::Update(Box::new(u)));
    a.update(code(KeyCode::End));
    let screen = render(&a, 80, 24);
    assert!(screen.contains("node-500"), "{screen}");
    a.update(key('3'));
    a.update(code(KeyCode::End));
    let screen = render(&a, 80, 24);
    assert!(screen.contains("fib(99999)"), "{screen}");
}
