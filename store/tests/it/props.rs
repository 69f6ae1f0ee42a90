//! Properties of the pure state machine over random command sequences.

use mozen_model::{
    NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RequestState, RetryPolicy, TaskError,
};
use mozen_store::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn key(i: u8) -> RequestKey {
    RequestKey::of("f", &[i])
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u8, Option<u8>),
    Assign(u8, u64),
    Complete(u8, bool),
    Down(u64),
    Up(u64),
    Drain(u64),
    Cancel(u8),
    Forget(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, proptest::option::of(0u8..12)).prop_map(|(k, p)| Op::Submit(k, p)),
        4 => (0u8..12, 1u64..4).prop_map(|(k, n)| Op::Assign(k, n)),
        4 => (0u8..12, any::<bool>()).prop_map(|(k, ok)| Op::Complete(k, ok)),
        1 => (1u64..4).prop_map(Op::Down),
        1 => (1u64..4).prop_map(Op::Up),
        1 => (1u64..4).prop_map(Op::Drain),
        1 => (0u8..12).prop_map(Op::Cancel),
        1 => (0u8..12).prop_map(Op::Forget),
    ]
}

/// Turns random ops into commands, reading the state for attempts/nodes as a proposer would.
fn to_command(st: &ClusterState, op: &Op, at: u64) -> Command {
    match *op {
        Op::Submit(k, p) => Command::Submit {
            requests: vec![NewRequest {
                key: key(k),
                function: "f".into(),
                args: vec![k],
                parent: p.map(key),
                priority: (k % 3) as i32,
                retry: RetryPolicy {
                    retries: 1,
                    backoff_ms: 0,
                    max_attempts: 2,
                },
                no_cache: false,
            }],
            at,
        },
        Op::Assign(k, n) => {
            let attempt = st.request(&key(k)).map_or(1, |r| r.attempts + 1);
            Command::Assign {
                assignments: vec![Assignment {
                    key: key(k),
                    node: n,
                    attempt,
                }],
                at,
            }
        }
        Op::Complete(k, ok) => {
            let (node, attempt) = match st.request(&key(k)).map(|r| r.state) {
                Some(RequestState::Running { node, attempt, .. }) => (node, attempt),
                _ => (1, 1),
            };
            let outcome = if ok {
                Outcome::Value(vec![k])
            } else {
                Outcome::Error(TaskError::new("MZ-FUNCTION-FAILED", "x"))
            };
            Command::Complete {
                completions: vec![Completion {
                    key: key(k),
                    node,
                    attempt,
                    outcome,
                    duration_ms: 1,
                }],
                at,
            }
        }
        Op::Down(n) => Command::SetNodeState {
            id: n,
            state: NodeState::Down,
            at,
        },
        Op::Up(n) => Command::SetNodeState {
            id: n,
            state: NodeState::Active,
            at,
        },
        Op::Drain(n) => Command::SetNodeState {
            id: n,
            state: NodeState::Draining,
            at,
        },
        Op::Cancel(k) => Command::Cancel { key: key(k), at },
        Op::Forget(k) => Command::Forget {
            selector: ForgetSelector::Keys(vec![key(k)]),
            at,
        },
    }
}

fn nodes() -> Vec<Command> {
    (1..4)
        .map(|id| Command::RegisterNode {
            node: NodeInfo {
                id,
                name: format!("n{id}"),
                addr: format!("h:{id}"),
                cpus: 1,
                memory_bytes: 1 << 30,
                slots: 2,
                state: NodeState::Active,
                role: NodeRole::Voter,
                labels: BTreeMap::new(),
            },
            at: 0,
        })
        .collect()
}

fn run(ops: &[Op]) -> (ClusterState, Vec<Command>) {
    let mut st = ClusterState::new();
    let mut cmds = nodes();
    for c in &cmds {
        st.apply(c);
    }
    for (i, op) in ops.iter().enumerate() {
        let c = to_command(&st, op, i as u64 + 1);
        st.apply(&c);
        cmds.push(c);
    }
    (st, cmds)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_deterministic_and_keeps_invariants(ops in proptest::collection::vec(op(), 0..120)) {
        let (a, cmds) = run(&ops);
        a.check_invariants().map_err(TestCaseError::fail)?;
        let mut b = ClusterState::new();
        for c in &cmds {
            b.apply(c);
        }
        prop_assert_eq!(a.digest(), b.digest());
        // Never running on two nodes: each running key is indexed under exactly its node.
        for n in 1..4 {
            for r in a.running_on(n) {
                prop_assert_eq!(r.state.node(), Some(n));
            }
        }
    }

    #[test]
    fn repeated_completions_change_nothing(ops in proptest::collection::vec(op(), 0..80)) {
        // Completions that took effect when first applied, replayed at the end.
        let mut st = ClusterState::new();
        for c in nodes() {
            st.apply(&c);
        }
        let mut effective = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let c = to_command(&st, op, i as u64 + 1);
            if st.apply(&c) == Response::Completed(vec![CompleteReply::Finished]) {
                effective.push(c);
            }
        }
        for c in &effective {
            let before = st.digest();
            let r = st.apply(c);
            prop_assert_eq!(st.digest(), before);
            prop_assert_eq!(r, Response::Completed(vec![CompleteReply::Stale]));
        }
    }

    #[test]
    fn counters_match_history(ops in proptest::collection::vec(op(), 0..120)) {
        let mut st = ClusterState::new();
        for c in nodes() {
            st.apply(&c);
        }
        let (mut done, mut submitted) = (0u64, 0u64);
        for (i, op) in ops.iter().enumerate() {
            let c = to_command(&st, op, i as u64 + 1);
            let r = st.apply(&c);
            match (&c, &r) {
                (Command::Submit { .. }, Response::Submitted(v)) if v[0] == SubmitReply::Queued => submitted += 1,
                (Command::Complete { completions, .. }, Response::Completed(v))
                    if v[0] == CompleteReply::Finished && completions[0].outcome.is_ok() => done += 1,
                _ => {}
            }
        }
        let c = st.counters().get("f").cloned().unwrap_or_default();
        prop_assert_eq!(c.executions, done);
        prop_assert_eq!(c.submitted, submitted);
    }
}
