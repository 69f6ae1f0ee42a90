//! Store benchmarks: in-memory apply, durable log append, snapshot build and install, the
//! checkpoint digest.
//!
//! `cargo bench -p mozen-store --bench store`. The snapshot and checkpoint benches use
//! `MOZEN_BENCH_REQUESTS` memoized requests (default 100,000). The memory and restart figure
//! for 1,000,000 memoized 1 KiB results is `cargo run --release -p mozen-store --example
//! memo_restart`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mozen_model::{NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RetryPolicy};
use mozen_store::{
    Assignment, ClusterState, Command, Completion, Entry, LogId, NewRequest, StateMachineStore,
    StoreOptions, open,
};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn key(k: u64) -> RequestKey {
    RequestKey::of("bench", &k.to_le_bytes())
}

fn node() -> NodeInfo {
    NodeInfo {
        id: 1,
        name: "bench".into(),
        addr: "127.0.0.1:7001".into(),
        cpus: 8,
        memory_bytes: 16 << 30,
        slots: u32::MAX,
        state: NodeState::Active,
        role: NodeRole::Voter,
        labels: BTreeMap::new(),
    }
}

/// Submit, assign and complete keys `from..to` in commands of `batch` facts each.
fn lifecycle(from: u64, to: u64, batch: u64, value_len: usize) -> Vec<Command> {
    let mut cmds = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + batch).min(to);
        let keys = start..end;
        cmds.push(Command::Submit {
            requests: keys
                .clone()
                .map(|k| NewRequest {
                    key: key(k),
                    function: "bench".into(),
                    args: k.to_le_bytes().to_vec(),
                    parent: None,
                    priority: 0,
                    retry: RetryPolicy::default(),
                    no_cache: false,
                })
                .collect(),
            at: 1,
        });
        cmds.push(Command::Assign {
            assignments: keys
                .clone()
                .map(|k| Assignment {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                })
                .collect(),
            at: 2,
        });
        cmds.push(Command::Complete {
            completions: keys
                .map(|k| Completion {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                    outcome: Outcome::Value(vec![(k % 251) as u8; value_len]),
                    duration_ms: 1,
                })
                .collect(),
            at: 3,
        });
        start = end;
    }
    cmds
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn options() -> StoreOptions {
    StoreOptions::default()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Pure `ClusterState::apply`: 10,000 requests through submit, assign and complete.
fn apply_in_memory(c: &mut Criterion) {
    const REQUESTS: u64 = 10_000;
    let mut g = c.benchmark_group("apply_in_memory");
    for batch in [1u64, 100] {
        let cmds = {
            let mut v = vec![Command::RegisterNode {
                node: node(),
                at: 0,
            }];
            v.extend(lifecycle(0, REQUESTS, batch, 64));
            v
        };
        // Throughput in facts (submit, assign, complete of one request = 3 facts).
        g.throughput(Throughput::Elements(3 * REQUESTS));
        g.bench_function(BenchmarkId::new("facts_per_command", batch), |b| {
            b.iter(|| {
                let mut st = ClusterState::new();
                for cmd in &cmds {
                    black_box(st.apply(cmd));
                }
                black_box(st.take_effects().len())
            })
        });
    }
    g.finish();
}

/// `append` of 1,000-entry batches, each acknowledged after one flush.
fn durable_append(c: &mut Criterion) {
    let rt = runtime();
    let dir = TempDir::new().expect("tempdir");
    let (mut log, _sm) = open(dir.path(), &options()).expect("open");
    let mut g = c.benchmark_group("durable_append");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1_000));
    for value_len in [64usize, 1024] {
        let mut next = 0u64;
        g.bench_function(
            BenchmarkId::new("batch_1000_entries_value_bytes", value_len),
            |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<Entry> = (next..next + 1_000)
                            .map(|i| {
                                let cmd =
                                    lifecycle(i, i + 1, 1, value_len).pop().expect("complete");
                                entry(i, cmd)
                            })
                            .collect();
                        next += 1_000;
                        let t = Instant::now();
                        rt.block_on(log.blocking_append(batch)).expect("append");
                        spent += t.elapsed();
                    }
                    spent
                })
            },
        );
    }
    g.finish();
}

fn requests_for_snapshot() -> u64 {
    std::env::var("MOZEN_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

async fn filled_store(dir: &TempDir, n: u64, value_len: usize) -> StateMachineStore {
    let (_log, mut sm) = open(dir.path(), &options()).expect("open");
    let mut cmds = vec![Command::RegisterNode {
        node: node(),
        at: 0,
    }];
    cmds.extend(lifecycle(0, n, 1_000, value_len));
    let entries: Vec<Entry> = cmds
        .into_iter()
        .zip(0..)
        .map(|(c, i)| entry(i, c))
        .collect();
    for chunk in entries.chunks(30) {
        sm.apply(chunk.to_vec()).await.expect("apply");
    }
    sm
}

/// Sends `from`'s current snapshot to `to` and returns how long `to` took to install it; the
/// copy into the receiving file (the network transfer) is not timed.
async fn timed_install(from: &mut StateMachineStore, to: &mut StateMachineStore) -> Duration {
    use tokio::io::AsyncWriteExt;
    let mut snap = from
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    let mut rx = to.begin_receiving_snapshot().await.expect("begin");
    tokio::io::copy(&mut snap.snapshot, &mut rx)
        .await
        .expect("copy");
    rx.shutdown().await.expect("shutdown");
    let t = Instant::now();
    to.install_snapshot(&snap.meta, rx).await.expect("install");
    t.elapsed()
}

/// Snapshot build (state + every result, fsynced) and install on a fresh store.
fn snapshot(c: &mut Criterion) {
    const VALUE: usize = 128;
    let n = requests_for_snapshot();
    let rt = runtime();
    let src = TempDir::new().expect("tempdir");
    let dst = TempDir::new().expect("tempdir");
    let mut a = rt.block_on(filled_store(&src, n, VALUE));
    let (_lb, mut b) = open(dst.path(), &options()).expect("open");
    // One snapshot up front, so that the install bench also runs on its own.
    rt.block_on(a.build_snapshot()).expect("build");
    let (_, bytes) = a.last_snapshot().expect("a snapshot");
    eprintln!("snapshot of {n} requests ({VALUE}-byte results): {bytes} bytes");

    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("build_requests", n), |bch| {
        bch.iter(|| rt.block_on(a.build_snapshot()).expect("build"))
    });
    g.bench_function(BenchmarkId::new("install_requests", n), |bch| {
        bch.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(timed_install(&mut a, &mut b)))
                .sum()
        })
    });
    // The same into a store holding no results yet (a new follower): the install above
    // finds every result already there and writes almost nothing.
    g.bench_function(BenchmarkId::new("install_fresh_requests", n), |bch| {
        bch.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let fresh = TempDir::new().expect("tempdir");
                    let (_log, mut f) = open(fresh.path(), &options()).expect("open");
                    rt.block_on(timed_install(&mut a, &mut f))
                })
                .sum()
        })
    });
    g.finish();
    // Only when the install benches ran (a filter may leave them out).
    if b.last_snapshot().is_some() {
        assert_eq!(
            b.shared().read().expect("state").digest(),
            a.shared().read().expect("state").digest()
        );
    }
}

/// One checkpoint: the digest of a state holding `MOZEN_BENCH_REQUESTS` finished requests,
/// which `apply()` computes under the state's write lock every `--checkpoint-every` entries.
fn checkpoint_digest(c: &mut Criterion) {
    let n = requests_for_snapshot();
    let mut st = ClusterState::new();
    st.apply(&Command::RegisterNode {
        node: node(),
        at: 0,
    });
    for cmd in lifecycle(0, n, 1_000, 128) {
        st.apply(&cmd);
    }
    st.take_effects();
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("digest_requests", n), |b| {
        b.iter(|| black_box(st.digest()))
    });
    g.finish();
}

criterion_group!(
    benches,
    apply_in_memory,
    durable_append,
    snapshot,
    checkpoint_digest
);
criterion_main!(benches);
