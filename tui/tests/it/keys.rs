//! Key sequences replayed through `App::update`.

use crate::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_console::app::{Action, Effect, Mode, NodeOp, StatusKind, View};

#[test]
fn views_switch_by_number_name_and_tab() {
    let mut a = app();
    a.update(key('4'));
    assert_eq!(a.view, View::Raft);
    typed(&mut a, ":req");
    assert_eq!(a.mode, Mode::Command("req".into()));
    a.update(code(KeyCode::Enter));
    assert_eq!(a.view, View::Requests);
    typed(&mut a, ":events");
    a.update(code(KeyCode::Enter));
    assert_eq!(a.view, View::Events);
    a.update(code(KeyCode::Tab));
    assert_eq!(a.view, View::Nodes, "Tab wraps around");
    a.update(code(KeyCode::BackTab));
    assert_eq!(a.view, View::Events);
    typed(&mut a, ":nope");
    a.update(code(KeyCode::Enter));
    assert_eq!(a.view, View::Events);
    assert_eq!(a.status.kind, StatusKind::Error);
    assert!(a.status.text.contains("no view named 'nope'"));
    // Esc leaves a prompt without doing anything.
    typed(&mut a, ":no");
    a.update(code(KeyCode::Esc));
    assert_eq!((a.view, &a.mode), (View::Events, &Mode::Normal));
}

#[test]
fn q_quits_and_so_do_colon_q_and_ctrl_c() {
    let mut a = app();
    a.update(key('q'));
    assert!(a.quit);
    let mut a = app();
    typed(&mut a, ":q");
    a.update(code(KeyCode::Enter));
    assert!(a.quit);
    let mut a = app();
    typed(&mut a, ":"); // even inside a prompt
    a.update(Action::Key(KeyEvent::new(
        KeyCode::Char('c'),
        KeyModifiers::CONTROL,
    )));
    assert!(a.quit);
}

#[test]
fn help_lists_every_key_and_any_key_closes_it() {
    let mut a = app();
    a.update(key('?'));
    assert_eq!(a.mode, Mode::Help);
    let screen = render(&a, 100, 30);
    for k in mozen_console::app::KEYS {
        assert!(screen.contains(k.keys), "help lacks {}:\n{screen}", k.keys);
    }
    a.update(key('q')); // closes the help, does not quit
    assert_eq!(a.mode, Mode::Normal);
    assert!(!a.quit);
}

#[test]
fn drain_asks_for_confirmation() {
    let mut a = app();
    a.update(key('j')); // node 2
    assert_eq!(a.update(key('d')), None, "nothing happens before y");
    let drain = Effect::NodeOp {
        id: 2,
        op: NodeOp::Drain,
    };
    assert_eq!(a.mode, Mode::Confirm(drain.clone()));
    assert!(render(&a, 80, 24).contains("drain node 2? y confirms"));
    assert_eq!(a.update(key('y')), Some(drain));
    assert_eq!(a.status.kind, StatusKind::Pending);
    a.update(Action::Done(Ok("node 2 is draining".into())));
    assert!(render(&a, 80, 24).contains("✓ node 2 is draining"));

    // Anything but y declines.
    a.update(key('d'));
    assert_eq!(a.update(key('n')), None);
    assert_eq!(a.mode, Mode::Normal);
    assert!(a.status.text.contains("not done: drain node 2"));
    a.update(key('d'));
    assert_eq!(a.update(code(KeyCode::Esc)), None);
    assert_eq!(a.mode, Mode::Normal);
}

#[test]
fn node_actions() {
    let mut a = app();
    typed(&mut a, "jj"); // node 3
    assert_eq!(
        a.update(key('u')),
        Some(Effect::NodeOp {
            id: 3,
            op: NodeOp::Undrain
        }),
        "undrain needs no confirmation"
    );
    assert_eq!(
        a.update(key('p')),
        Some(Effect::NodeOp {
            id: 3,
            op: NodeOp::Promote
        })
    );
    for (k, op) in [('D', NodeOp::Demote), ('x', NodeOp::Remove)] {
        assert_eq!(a.update(key(k)), None);
        assert_eq!(a.mode, Mode::Confirm(Effect::NodeOp { id: 3, op }));
        assert_eq!(a.update(key('y')), Some(Effect::NodeOp { id: 3, op }));
    }
}

#[test]
fn add_node_prompt() {
    let mut a = app();
    a.update(key('a'));
    typed(&mut a, "6@10.0.0.6:7070");
    assert!(render(&a, 80, 24).contains("add node (ID@HOST:PORT): 6@10.0.0.6:7070"));
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        Some(Effect::AddNode {
            id: 6,
            addr: "10.0.0.6:7070".into()
        })
    );
    a.update(key('a'));
    typed(&mut a, "4@host:99999");
    assert_eq!(a.update(code(KeyCode::Enter)), None);
    assert_eq!(a.status.kind, StatusKind::Error);
    assert!(
        a.status
            .text
            .starts_with("MZ-BAD-ARGUMENTS: '4@host:99999': port must be 1-65535")
    );
}

#[test]
fn readonly_hides_actions() {
    let mut a = app_with(true);
    for k in ['d', 'u', 'p', 'D', 'x', 'a'] {
        assert_eq!(a.update(key(k)), None, "key {k}");
        assert_eq!(a.mode, Mode::Normal, "key {k}");
        assert!(a.status.text.contains("read-only"));
    }
    let screen = render(&a, 100, 30);
    assert!(screen.contains("[read-only]"));
    let hints = screen.lines().nth(28).unwrap();
    assert!(hints.contains("? help"), "{screen}");
    assert!(!hints.contains("drain"), "no action hints:\n{screen}");
    a.update(key('3'));
    a.update(key('j')); // the failed request
    assert_eq!(a.update(key('r')), None);
    assert_eq!(a.update(key('x')), None);
    a.update(key('?'));
    let help = render(&a, 100, 30);
    assert!(!help.contains("drain the selected node"), "{help}");
    assert!(help.contains("quit"));
}

#[test]
fn filter_requests_and_open_a_tree() {
    let mut a = app();
    a.update(key('3'));
    assert_eq!(a.visible_len(), 4);
    typed(&mut a, "/rat");
    assert_eq!(a.visible_len(), 1, "the filter applies while typing");
    a.update(code(KeyCode::Enter));
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.filter, "rat");
    assert!(render(&a, 100, 30).contains("/rat 1 of 4"));
    // Several words must all match; node:N selects by node.
    typed(&mut a, "/");
    a.update(code(KeyCode::Backspace));
    a.update(code(KeyCode::Backspace));
    a.update(code(KeyCode::Backspace));
    typed(&mut a, "node:1 fa");
    a.update(code(KeyCode::Enter));
    assert_eq!(a.visible_len(), 1);
    assert_eq!(a.selected_request().unwrap().function, "ratio");

    let key_b2 = a.selected_request().unwrap().key.clone();
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        Some(Effect::Tree {
            key: key_b2.clone()
        })
    );
    assert!(a.tree.is_some());
    // A tree that fails to load closes with the error in the status line.
    a.update(Action::Tree {
        key: key_b2,
        result: Err("MZ-UNKNOWN-REQUEST: no request".into()),
    });
    assert!(a.tree.is_none());
    assert!(render(&a, 100, 30).contains("✕ MZ-UNKNOWN-REQUEST: no request"));

    // Esc clears the filter.
    a.update(code(KeyCode::Esc));
    assert_eq!((a.filter.as_str(), a.visible_len()), ("", 4));
}

#[test]
fn stale_tree_results_are_ignored() {
    let mut a = app();
    a.update(key('3'));
    a.update(code(KeyCode::Enter));
    a.update(code(KeyCode::Esc)); // closed before the answer came
    assert!(a.tree.is_none());
    a.update(Action::Tree {
        key: "a1".repeat(32),
        result: Ok(vec![]),
    });
    assert!(a.tree.is_none());
}

#[test]
fn cancel_and_retry_requests() {
    let mut a = app();
    a.update(key('3'));
    // a1 is done: nothing to cancel, and it is not retried.
    assert_eq!(a.update(key('x')), None);
    assert!(a.status.text.contains("nothing to cancel"));
    assert_eq!(a.update(key('r')), None);
    assert!(a.status.text.contains("only failed or cancelled"));
    // b2 failed: retry is a fresh call of the same function and arguments.
    a.update(key('j'));
    assert_eq!(
        a.update(key('r')),
        Some(Effect::Retry {
            function: "ratio".into(),
            args_json: "1".into()
        })
    );
    a.update(Action::Done(Err(
        "MZ-CHILD-FAILED: retry of ratio(1) failed on node 2: division by zero".into(),
    )));
    assert!(render(&a, 100, 30).contains("✕ MZ-CHILD-FAILED: retry of ratio(1)"));
    // c3 is running: cancelling asks first.
    a.update(key('j'));
    assert_eq!(a.update(key('x')), None);
    let Mode::Confirm(effect) = a.mode.clone() else {
        panic!("expected a confirmation, got {:?}", a.mode)
    };
    assert!(matches!(&effect, Effect::Cancel { label, .. } if label == "sleep(500)"));
    assert!(render(&a, 100, 30).contains("cancel sleep(500) [c3c3c3c3]? y confirms"));
    assert_eq!(a.update(key('y')), Some(effect));
}

#[test]
fn selection_stays_on_its_request_and_node_when_rows_move() {
    let mut a = app();
    a.update(key('3'));
    a.update(key('j')); // b2
    let mut u = fixture();
    u.requests.insert(0, req("ff", "fib", "21", "running"));
    u.nodes.remove(0); // node 1 leaves: rows shift up
    a.update(Action::Update(Box::new(u)));
    assert_eq!(a.selected_request().unwrap().function, "ratio");
    a.update(key('1'));
    assert_eq!(a.selected_node().unwrap().id, 2);
}

#[test]
fn histories_come_from_successive_updates() {
    let mut a = app();
    for (i, rate) in [5.0, 7.0].into_iter().enumerate() {
        let mut u = fixture();
        u.now_ms += 500 * (i as u64 + 1);
        u.nodes[0].tasks_per_sec = rate;
        u.functions[0].executions += 10 * (i as u64 + 1);
        a.update(Action::Update(Box::new(u)));
    }
    let h: Vec<f64> = a.rates[&1].iter().copied().collect();
    assert_eq!(h, [12.0, 5.0, 7.0]);
    assert_eq!(a.throughput.len(), 3);
    // fib ran 10 more times in the last 0.5 s.
    assert_eq!(a.function_rates["fib"], 20.0);
    // A node that left takes its history with it.
    let mut u = fixture();
    u.nodes.truncate(1);
    a.update(Action::Update(Box::new(u)));
    assert_eq!(a.rates.len(), 1);
}

#[test]
fn movement_keys_stay_in_range() {
    let mut a = app();
    a.update(code(KeyCode::End));
    assert_eq!(a.nodes.selected, 4);
    a.update(key('j'));
    assert_eq!(a.nodes.selected, 4);
    a.update(key('g'));
    assert_eq!(a.nodes.selected, 0);
    a.update(key('k'));
    assert_eq!(a.nodes.selected, 0);
    a.update(code(KeyCode::PageDown));
    assert_eq!(a.nodes.selected, 1, "page is 1 before anything was drawn");
    render(&a, 80, 24);
    a.update(code(KeyCode::PageDown));
    assert_eq!(a.nodes.selected, 4);
}
