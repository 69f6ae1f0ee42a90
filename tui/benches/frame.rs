//! Frame-time benchmark: draws every view of a cluster with 500 nodes and 100,000 requests into
//! a `TestBackend` and prints milliseconds per frame (target: at most 16 ms, one frame at 60 Hz).
//! Also times `App::update` with such an update and a filter keystroke.
//!
//! Run: `cargo bench -p mozen-console --bench frame` (numbers go to tui/BENCH_RESULTS.md).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_console::app::{Action, App, View};
use mozen_console::ui;
use mozen_proto as pb;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::hint::black_box;
use std::time::{Duration, Instant};

const NODES: u64 = 500;
const REQUESTS: u64 = 100_000;

fn update(tick: u64) -> pb::ClusterUpdate {
    let states = ["active", "active", "active", "draining", "down"];
    let nodes = (1..=NODES)
        .map(|id| pb::Node {
            id,
            name: format!("node-{id}"),
            addr: format!("10.0.{}.{}:7070", id / 256, id % 256),
            cpus: 16,
            memory_bytes: 64 << 30,
            slots: 48,
            state: states[(id % 5) as usize].into(),
            role: if id <= 5 { "voter" } else { "worker" }.into(),
            score: 100.0,
            is_leader: id == 1,
            busy_slots: ((id + tick) % 49) as u32,
            running: ((id + tick) % 49) as u32,
            heartbeat_age_ms: ((id * 37 + tick) % 900) as i64,
            tasks_per_sec: ((id * 7 + tick * 3) % 50) as f64,
            labels: Default::default(),
            ..Default::default()
        })
        .collect();
    let fns = ["fib", "tree", "sleep", "spin", "ratio", "bogosity"];
    let rstates = ["done", "running", "queued", "failed", "cancelled"];
    let requests = (0..REQUESTS)
        .map(|i| pb::RequestInfo {
            key: format!("{:064x}", i * 2_654_435_761 + tick),
            function: fns[(i % 6) as usize].into(),
            args_json: format!("[3,3,\"nonce-{i}\"]"),
            state: rstates[(i % 5) as usize].into(),
            node: Some(i % NODES + 1),
            attempts: 1,
            priority: 0,
            created_ms: 1_000_000 - i,
            updated_ms: 1_000_000 - i,
            duration_ms: i % 5000,
            error: if i % 5 == 3 {
                "MZ-FUNCTION-FAILED: division by zero".into()
            } else {
                String::new()
            },
            parents: 1,
            children: (i % 4) as u32,
            ..Default::default()
        })
        .collect();
    pb::ClusterUpdate {
        truncated: false,
        now_ms: 1_000_000 + tick * 500,
        raft: Some(pb::RaftStatus {
            node_id: 1,
            leader_id: Some(1),
            leader_addr: "10.0.0.1:7070".into(),
            term: 7,
            last_log_index: 1_000_000,
            commit_index: 1_000_000,
            applied_index: 999_999,
            voters: (1..=5)
                .map(|id| pb::Member {
                    id,
                    addr: format!("10.0.0.{id}:7070"),
                })
                .collect(),
            server_state: "leader".into(),
            ..Default::default()
        }),
        nodes,
        queue: Some(pb::QueueSummary {
            queued: 5000,
            running: 3000,
            groups: (0..40)
                .map(|i| pb::QueueGroup {
                    function: format!("{}-{i}", fns[i % 6]),
                    priority: (i % 3) as i32,
                    count: 125,
                    oldest_age_ms: 1500,
                })
                .collect(),
            throughput: 4200.0,
            done: 1_000_000,
            failed: 200,
        }),
        requests,
        events: (0..100)
            .map(|i| pb::Event {
                at_ms: 1_000_000 - i * 1000,
                kind: "requeued".into(),
                node: Some(i % NODES + 1),
                message: format!("request {i} re-queued: node is down"),
            })
            .collect(),
        functions: fns
            .iter()
            .map(|f| pb::FunctionStats {
                name: f.to_string(),
                submitted: 100_000,
                executions: 90_000,
                memo_hits: 10_000,
                registered: true,
                ..Default::default()
            })
            .collect(),
    }
}

fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn per_iter(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1000.0 / f64::from(n)
}

fn main() {
    let mut app = App::new(false);
    // Sixty updates fill the sparkline histories, as 30 s of a live stream would.
    for tick in 0..50 {
        app.update(Action::Update(Box::new(update(tick))));
    }
    let updates: Vec<_> = (50..60).map(update).collect();
    let n = updates.len() as u32;
    let t = Instant::now();
    for u in updates {
        app.update(Action::Update(Box::new(u)));
    }
    let update_ms = per_iter(t.elapsed(), n);
    // Of which freeing the previous picture (100,000 requests' strings) takes:
    let old: Vec<_> = (0..n).map(|i| update(u64::from(i))).collect();
    let t = Instant::now();
    drop(black_box(old));
    println!(
        "fixture: {NODES} nodes, {REQUESTS} requests; App::update {update_ms:.2} ms per update (freeing the previous update alone: {:.2} ms)",
        per_iter(t.elapsed(), n)
    );

    for (w, h) in [(200u16, 60u16), (120, 40), (80, 24)] {
        let mut term = Terminal::new(TestBackend::new(w, h)).expect("test backend");
        for view in View::ALL {
            app.update(key(char::from(b'1' + view.index() as u8)));
            // Move the selection deep into the list so scrolling is part of the cost.
            for _ in 0..3 {
                app.update(Action::Key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE)));
            }
            for _ in 0..10 {
                term.draw(|f| ui::draw(black_box(&app), f)).expect("draw");
            }
            let n = 200;
            let t = Instant::now();
            for _ in 0..n {
                term.draw(|f| ui::draw(black_box(&app), f)).expect("draw");
            }
            let ms = per_iter(t.elapsed(), n);
            println!(
                "{w}x{h} {:<9} {ms:7.3} ms/frame {}",
                view.name(),
                if ms <= 16.0 { "ok" } else { "OVER 16 ms" }
            );
        }
    }

    // Typing a filter re-scans all requests once per keystroke.
    app.update(key('3'));
    app.update(key('/'));
    let t = Instant::now();
    for c in "tree".chars() {
        app.update(key(c));
    }
    println!(
        "filter keystroke over {REQUESTS} requests: {:.2} ms",
        per_iter(t.elapsed(), 4)
    );
    app.update(Action::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    let mut term = Terminal::new(TestBackend::new(120, 40)).expect("test backend");
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        term.draw(|f| ui::draw(black_box(&app), f)).expect("draw");
    }
    println!(
        "120x40 requests filtered /tree ({} match): {:.3} ms/frame",
        app.visible_len(),
        per_iter(t.elapsed(), n)
    );
}
