//! Property tests of the state machine and its storage: apply is deterministic, snapshots
//! round-trip (state and results), completions are idempotent, no request runs twice, the
//! counters agree with the history, and a snapshot built while apply() keeps going holds the
//! results as of its point.

use crate::common::*;
use mozen_model::NodeState;
use mozen_model::{Outcome, RequestKey, RequestState, RetryPolicy, TaskError, codes};
use mozen_scheduler::{Candidate, LoadIndex, NodeLoad, plan, plan_on};
use mozen_store::{
    Assignment, ClusterState, Command, CompleteReply, Completion, Effect, ForgetSelector,
    FunctionCounters, NewRequest, Response, StateMachineStore, SubmitReply, open,
};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tempfile::TempDir;

/// Keys are drawn from a small domain so that requests meet again: joins, memo hits, retries.
const KEYS: u32 = 16;
const NODES: u64 = 3;

/// An operation, turned into a `Command` against the current state so that most commands
/// are meaningful (right attempt numbers, running requests) and some are deliberately stale.
#[derive(Debug, Clone)]
enum Op {
    Register {
        node: u64,
        slots: u32,
    },
    SetState {
        node: u64,
        state: u8,
    },
    Remove {
        node: u64,
    },
    Submit(Vec<(u32, Option<u32>, i32, u32, bool)>),
    /// Assign the first `count` queued requests to `node`; `stale` uses a wrong attempt.
    Assign {
        count: usize,
        node: u64,
        stale: bool,
    },
    /// Complete running request number `pick` with a value (0), a function failure (1) or
    /// another error (2); `stale` uses a wrong attempt.
    Complete {
        pick: usize,
        kind: u8,
        len: usize,
        stale: bool,
    },
    Requeue {
        node: u64,
        all: bool,
    },
    Cancel {
        key: u32,
    },
    Forget {
        how: u8,
        n: u64,
    },
    Batch(Vec<Op>),
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..=NODES, 1u32..4).prop_map(|(node, slots)| Op::Register { node, slots }),
        (1..=NODES, 0u8..4).prop_map(|(node, state)| Op::SetState { node, state }),
        (1..=NODES).prop_map(|node| Op::Remove { node }),
        prop::collection::vec(
            (
                0..KEYS,
                prop::option::weighted(0.3, 0..KEYS),
                -2i32..3,
                0u32..3,
                prop::bool::weighted(0.1)
            ),
            1..4
        )
        .prop_map(Op::Submit),
        (1usize..4, 1..=NODES, prop::bool::weighted(0.1))
            .prop_map(|(count, node, stale)| Op::Assign { count, node, stale }),
        (0usize..8, 0u8..3, 0usize..40, prop::bool::weighted(0.1)).prop_map(
            |(pick, kind, len, stale)| Op::Complete {
                pick,
                kind,
                len,
                stale
            }
        ),
        (1..=NODES, any::<bool>()).prop_map(|(node, all)| Op::Requeue { node, all }),
        (0..KEYS).prop_map(|key| Op::Cancel { key }),
        (0u8..4, 0u64..4).prop_map(|(how, n)| Op::Forget { how, n }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => leaf_op(),
        1 => prop::collection::vec(leaf_op(), 1..4).prop_map(Op::Batch),
    ]
}

/// Turns ops into commands, applying each to `reference` so later ops see its effect.
fn commands(ops: &[Op]) -> Vec<Command> {
    let mut reference = ClusterState::new();
    let mut cmds = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let at = 1_000 * (i as u64 + 1);
        let cmd = to_command(op, &reference, at);
        reference.apply(&cmd);
        reference.take_effects();
        cmds.push(cmd);
    }
    cmds
}

fn to_command(op: &Op, st: &ClusterState, at: u64) -> Command {
    match op {
        Op::Register { node: id, slots } => Command::RegisterNode {
            node: node(*id, *slots),
            at,
        },
        Op::SetState { node, state } => Command::SetNodeState {
            id: *node,
            state: [
                NodeState::Active,
                NodeState::Draining,
                NodeState::Drained,
                NodeState::Down,
            ][*state as usize],
            at,
        },
        Op::Remove { node } => Command::RemoveNode { id: *node, at },
        Op::Submit(reqs) => Command::Submit {
            requests: reqs
                .iter()
                .map(|&(k, parent, priority, retries, no_cache)| NewRequest {
                    parent: parent.map(key),
                    priority,
                    retry: RetryPolicy {
                        retries,
                        backoff_ms: 0,
                        max_attempts: 3,
                    },
                    no_cache,
                    ..new_request(k)
                })
                .collect(),
            at,
        },
        Op::Assign { count, node, stale } => Command::Assign {
            assignments: st
                .queue()
                .take(*count)
                .map(|r| Assignment {
                    key: r.key,
                    node: *node,
                    attempt: r.attempts + if *stale { 2 } else { 1 },
                })
                .collect(),
            at,
        },
        Op::Complete {
            pick,
            kind,
            len,
            stale,
        } => {
            let running: Vec<_> = st
                .requests()
                .filter_map(|r| match r.state {
                    RequestState::Running { node, attempt, .. } => Some((r.key, node, attempt)),
                    _ => None,
                })
                .collect();
            let completions = match running.get(pick % running.len().max(1)) {
                None => Vec::new(),
                Some(&(key, node, attempt)) => vec![Completion {
                    key,
                    node,
                    attempt: if *stale { attempt + 1 } else { attempt },
                    outcome: match kind {
                        0 => Outcome::Value(vec![*len as u8; *len]),
                        1 => Outcome::Error(TaskError::new(codes::FUNCTION_FAILED, "it failed")),
                        _ => Outcome::Error(TaskError::new(codes::BAD_ARGUMENTS, "bad args")),
                    },
                    duration_ms: 1,
                }],
            };
            Command::Complete { completions, at }
        }
        Op::Requeue { node, all } => Command::Requeue {
            node: *node,
            keys: if *all {
                None
            } else {
                Some(st.running_on(*node).take(1).map(|r| r.key).collect())
            },
            reason: "test".into(),
            at,
        },
        Op::Cancel { key: k } => Command::Cancel { key: key(*k), at },
        Op::Forget { how, n } => Command::Forget {
            selector: match how {
                0 => ForgetSelector::Oldest(*n),
                1 => ForgetSelector::Keys((0..*n as u32).map(key).collect()),
                2 => ForgetSelector::Function(function_of(*n as u32)),
                _ => ForgetSelector::OlderThan(at / 2),
            },
            at,
        },
        Op::Batch(ops) => Command::Batch(ops.iter().map(|o| to_command(o, st, at)).collect()),
    }
}

/// Applies commands to a fresh state; returns it, the responses and the outcome table the
/// effects describe.
fn run_pure(cmds: &[Command]) -> (ClusterState, Vec<Response>, BTreeMap<RequestKey, Outcome>) {
    let mut st = ClusterState::new();
    let mut table = BTreeMap::new();
    let mut responses = Vec::new();
    for c in cmds {
        responses.push(st.apply(c));
        for e in st.take_effects() {
            match e {
                Effect::PutOutcome(k, o) => {
                    table.insert(k, o);
                }
                Effect::DeleteOutcome(k) => {
                    table.remove(&k);
                }
            }
        }
    }
    (st, responses, table)
}

fn all_keys() -> Vec<RequestKey> {
    (0..KEYS).map(key).collect()
}

fn outcomes_of(sm: &StateMachineStore) -> BTreeMap<RequestKey, Outcome> {
    all_keys()
        .into_iter()
        .filter_map(|k| sm.outcome(&k).expect("outcome reads").map(|o| (k, o)))
        .collect()
}

fn digest(sm: &StateMachineStore) -> [u8; 32] {
    sm.shared().read().expect("state").digest()
}

/// No request is in the running index of two nodes, and the indexes agree with the records.
fn check_running(st: &ClusterState) -> Result<(), TestCaseError> {
    st.check_invariants().map_err(TestCaseError::fail)?;
    let mut seen = BTreeSet::new();
    for n in 0..=NODES {
        for r in st.running_on(n) {
            prop_assert!(seen.insert(r.key), "request {:?} runs on two nodes", r.key);
            let on = r.state.node();
            prop_assert_eq!(on, Some(n), "request listed on node {} runs on {:?}", n, on);
        }
    }
    Ok(())
}

/// Counters expected from the replies and transitions, command by command (batches flattened).
fn expected_counters(cmds: &[Command]) -> BTreeMap<String, FunctionCounters> {
    fn flatten(c: &Command, out: &mut Vec<Command>) {
        match c {
            Command::Batch(cs) => cs.iter().for_each(|c| flatten(c, out)),
            c => out.push(c.clone()),
        }
    }
    let mut flat = Vec::new();
    cmds.iter().for_each(|c| flatten(c, &mut flat));
    let mut st = ClusterState::new();
    let mut want: BTreeMap<String, FunctionCounters> = BTreeMap::new();
    for c in &flat {
        let before: HashMap<RequestKey, (RequestState, String)> = st
            .requests()
            .map(|r| (r.key, (r.state, r.function.clone())))
            .collect();
        let resp = st.apply(c);
        st.take_effects();
        match (c, &resp) {
            (Command::Submit { requests, .. }, Response::Submitted(replies)) => {
                for (r, reply) in requests.iter().zip(replies) {
                    // A request keeps the function it was first submitted with.
                    let f = before
                        .get(&r.key)
                        .map_or(r.function.clone(), |b| b.1.clone());
                    let c = want.entry(f).or_default();
                    match reply {
                        SubmitReply::Queued => c.submitted += 1,
                        SubmitReply::MemoHit => c.memo_hits += 1,
                        SubmitReply::Joined => c.joined += 1,
                        SubmitReply::ParentGone => {}
                    }
                }
            }
            (Command::Complete { completions, .. }, Response::Completed(replies)) => {
                for (done, reply) in completions.iter().zip(replies) {
                    if *reply == CompleteReply::Stale {
                        continue;
                    }
                    let f = before[&done.key].1.clone();
                    let c = want.entry(f).or_default();
                    match done.outcome {
                        Outcome::Value(_) => c.executions += 1,
                        Outcome::Error(_) => c.failures += 1,
                    }
                }
            }
            _ => {
                // Losing a node fails requests whose attempts ran out.
                for (k, (state, f)) in &before {
                    let now = st.request(k).map(|r| r.state);
                    if matches!(state, RequestState::Running { .. })
                        && now == Some(RequestState::Failed)
                    {
                        want.entry(f.clone()).or_default().failures += 1;
                    }
                }
            }
        }
    }
    want
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_deterministic_and_keeps_invariants(ops in prop::collection::vec(op(), 1..60)) {
        let cmds = commands(&ops);
        let (a, ra, ta) = run_pure(&cmds);
        let (b, rb, tb) = run_pure(&cmds);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(ta, tb);
        let mut st = ClusterState::new();
        for c in &cmds {
            st.apply(c);
            st.take_effects();
            check_running(&st)?;
        }
    }

    #[test]
    fn node_loads_kept_in_place_equal_loads_computed_afresh(
        ops in prop::collection::vec(op(), 1..60),
        short in any::<bool>(),
    ) {
        let cmds = commands(&ops);
        let mut st = ClusterState::new();
        for c in &cmds {
            st.apply(c);
            st.take_effects();
            // What a scheduling pass used to compute from the node table on every pass.
            let afresh: Vec<NodeLoad> = st
                .nodes()
                .map(|n| NodeLoad {
                    id: n.id,
                    state: n.state,
                    slots: n.slots,
                    busy: st.busy_slots(n.id),
                    queue: mozen_model::max_assigned(n.slots) - n.slots,
                    score: n.score(),
                })
                .collect();
            prop_assert_eq!(st.loads(), &afresh.iter().cloned().collect::<LoadIndex>());
            prop_assert_eq!(st.loads().iter().cloned().collect::<Vec<_>>(), afresh.clone());
            // And the plan over the kept ranking is the plan over the loads computed afresh.
            let queue = || {
                st.queue().map(|r| Candidate {
                    key: r.key,
                    preferred: r.parents.iter().find_map(|p| st.request_state(p).and_then(|s| s.node())),
                    ready: true,
                    short,
                })
            };
            prop_assert_eq!(plan_on(st.loads(), queue(), 64), plan(&afresh, queue(), 64));
        }
    }

    #[test]
    fn repeated_completions_change_nothing(ops in prop::collection::vec(op(), 1..60)) {
        let cmds = commands(&ops);
        let mut st = ClusterState::new();
        for c in &cmds {
            st.apply(c);
            st.take_effects();
            if let Command::Complete { completions, .. } = c {
                let before = st.digest();
                let again = st.apply(c);
                prop_assert!(st.take_effects().is_empty(), "a repeat writes no result");
                prop_assert_eq!(again, Response::Completed(vec![CompleteReply::Stale; completions.len()]));
                prop_assert_eq!(st.digest(), before);
            }
        }
    }

    #[test]
    fn counters_match_history(ops in prop::collection::vec(op(), 1..60)) {
        let cmds = commands(&ops);
        let (st, _, _) = run_pure(&cmds);
        let want: BTreeMap<_, _> = expected_counters(&cmds)
            .into_iter()
            .filter(|(_, c)| *c != FunctionCounters::default())
            .collect();
        let got: BTreeMap<_, _> = st
            .counters()
            .iter()
            .filter(|(_, c)| **c != FunctionCounters::default())
            .map(|(f, c)| (f.clone(), c.clone()))
            .collect();
        prop_assert_eq!(got, want);
    }
}

/// Builds a snapshot of `a` and installs it on `b`, as a follower receives one.
async fn install_from(a: &mut StateMachineStore, b: &mut StateMachineStore) -> anyhow::Result<()> {
    let snap = a.build_snapshot().await?;
    install(snap, b).await
}

/// Installs `snap` on `b`, sent through its file as to a follower.
async fn install(
    snap: openraft::storage::Snapshot<mozen_store::TypeConfig>,
    b: &mut StateMachineStore,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rx = b.begin_receiving_snapshot().await?;
    let mut data = Vec::new();
    let mut file = snap.snapshot;
    file.read_to_end(&mut data).await?;
    rx.write_all(&data).await?;
    rx.shutdown().await?;
    b.install_snapshot(&snap.meta, rx).await?;
    Ok(())
}

proptest! {
    // Each case opens two sled stores: keep the count modest for 2 cores.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_pure_apply_and_snapshot_round_trips(
        ops in prop::collection::vec(op(), 1..60),
        chunk in 1usize..8,
    ) {
        let cmds = commands(&ops);
        let (pure, responses, table) = run_pure(&cmds);
        runtime().block_on(async {
            let (da, db) = (TempDir::new()?, TempDir::new()?);
            let (_la, mut a) = open(da.path(), &test_options())?;
            let (_lb, mut b) = open(db.path(), &test_options())?;
            let mut got = Vec::new();
            for part in entries(0, cmds.clone()).chunks(chunk) {
                got.extend(a.apply(part.to_vec()).await?);
            }
            prop_assert_eq!(&got, &responses);
            prop_assert_eq!(digest(&a), pure.digest());
            prop_assert_eq!(outcomes_of(&a), table.clone());

            install_from(&mut a, &mut b)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(digest(&b), pure.digest());
            prop_assert_eq!(outcomes_of(&b), table);
            prop_assert_eq!(b.applied_state().await?, a.applied_state().await?);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A voter that installs a snapshot taken midway and applies the rest of the log ends in
    /// the state of one that applied the whole log.
    #[test]
    fn snapshot_midway_then_the_rest_equals_the_whole_log(
        ops in prop::collection::vec(op(), 2..80),
        cut in 0.0f64..1.0,
    ) {
        let cmds = commands(&ops);
        let (pure, _, table) = run_pure(&cmds);
        let k = ((cmds.len() as f64 * cut) as usize).clamp(1, cmds.len() - 1);
        runtime().block_on(async {
            let (da, db) = (TempDir::new()?, TempDir::new()?);
            let (_la, mut a) = open(da.path(), &test_options())?;
            let (_lb, mut b) = open(db.path(), &test_options())?;
            let all = entries(0, cmds.clone());
            a.apply(all[..k].to_vec()).await?;
            install_from(&mut a, &mut b)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            a.apply(all[k..].to_vec()).await?;
            b.apply(all[k..].to_vec()).await?;
            prop_assert_eq!(digest(&a), pure.digest());
            prop_assert_eq!(digest(&b), pure.digest());
            prop_assert_eq!(outcomes_of(&b), table);
            Ok(())
        })?;
    }
}

/// A snapshot built while apply() keeps changing results (overwrites, deletions, new keys)
/// holds exactly the results as of its point, and installs elsewhere to the same state.
#[test]
fn snapshot_built_during_apply_holds_results_as_of_its_point() -> anyhow::Result<()> {
    const BASE: u32 = 3000;
    let mut cmds = vec![Command::RegisterNode {
        node: node(1, u32::MAX),
        at: 1,
    }];
    cmds.extend(lifecycle(0, BASE, 256, 2));
    let base_len = cmds.len();
    // Then, one command per entry: forget some, recompute some with new values, add new ones.
    let mut at = 10;
    for round in 0..60u32 {
        at += 1;
        let forget: Vec<_> = (0..10)
            .map(|i| key((round * 37 + i * 101) % BASE))
            .collect();
        cmds.push(Command::Forget {
            selector: ForgetSelector::Keys(forget),
            at,
        });
        let again: Vec<u32> = (0..10).map(|i| (round * 53 + i * 97 + 7) % BASE).collect();
        cmds.push(Command::Submit {
            requests: again
                .iter()
                .map(|&k| NewRequest {
                    no_cache: true,
                    ..new_request(k)
                })
                .collect(),
            at,
        });
        cmds.push(Command::Assign {
            assignments: again
                .iter()
                .map(|&k| Assignment {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                })
                .collect(),
            at,
        });
        cmds.push(Command::Complete {
            completions: again
                .iter()
                .map(|&k| Completion {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                    outcome: Outcome::Value(value(k + round, 300)),
                    duration_ms: 1,
                })
                .collect(),
            at,
        });
        cmds.extend(lifecycle(BASE + round * 5, BASE + round * 5 + 5, 100, at));
    }
    let total_keys = BASE + 60 * 5;
    let ents = entries(0, cmds.clone());

    runtime().block_on(async {
        let (da, db) = (TempDir::new()?, TempDir::new()?);
        let (_la, mut a) = open(da.path(), &test_options())?;
        let (_lb, mut b) = open(db.path(), &test_options())?;
        a.apply(ents[..base_len].to_vec()).await?;
        let progress = Arc::new(AtomicU64::new(base_len as u64 - 1));
        let mut applier = a.clone();
        let rest = ents[base_len..].to_vec();
        let seen = progress.clone();
        let apply_task = tokio::spawn(async move {
            for e in rest {
                let index = e.log_id.index;
                applier.apply([e]).await?;
                seen.store(index, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        });
        let (mut builds, mut overlapped) = (0, 0);
        while !apply_task.is_finished() {
            let snap = a.build_snapshot().await?;
            let point = snap
                .meta
                .last_log_id
                .expect("snapshot covers entries")
                .index;
            if progress.load(Ordering::SeqCst) > point {
                overlapped += 1;
            }
            builds += 1;

            // The model: the results after the entries up to the snapshot point.
            let (model, _, table) = run_pure(&cmds[..=point as usize]);
            install(snap, &mut b).await?;
            assert_eq!(digest(&b), model.digest(), "state at point {point}");
            for k in 0..total_keys {
                let k = key(k);
                let want = table.get(&k).cloned();
                assert_eq!(b.outcome(&k)?, want, "result of {k:?} at point {point}");
            }
        }
        apply_task.await??;
        eprintln!("{builds} snapshots, {overlapped} built while entries were applied");
        assert!(
            overlapped > 0,
            "no snapshot overlapped apply(); make the scan longer"
        );
        anyhow::Ok(())
    })
}
