//! Memory and restart figures for many memoized results.
//!
//! `cargo run --release -p mozen-store --example memo_restart [-- <requests> <value-bytes>]`
//! (default 1,000,000 requests with 1 KiB results). The fill and the reopen each run in a
//! child process of their own, so each RSS figure is that of one fresh process:
//!
//! 1. fill: apply submit/assign/complete for every request through the state machine, build
//!    a snapshot; print time, RSS and sizes;
//! 2. reopen: open the directory again (which loads the newest snapshot), read a few results;
//!    print open time and RSS;
//! 3. sled only: open just the sled Db (no state, no snapshot) and read the same results, to
//!    show which part of the RSS is sled's.
//!
//! `MOZEN_CACHE_MB` sets sled's cache (default: `StoreOptions::default()`, 64 MiB).

use mozen_model::{NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RetryPolicy};
use mozen_store::{Assignment, Command, Completion, Entry, LogId, NewRequest, StoreOptions, open};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

fn key(k: u64) -> RequestKey {
    RequestKey::of("memo", &k.to_le_bytes())
}

/// (VmRSS, VmHWM) in MiB, from /proc/self/status.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn options() -> StoreOptions {
    match std::env::var("MOZEN_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(mb) => StoreOptions {
            cache_capacity_bytes: mb << 20,
        },
        None => StoreOptions::default(),
    }
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn batch_commands(from: u64, to: u64, value_len: usize) -> [Command; 3] {
    let keys = from..to;
    [
        Command::Submit {
            requests: keys
                .clone()
                .map(|k| NewRequest {
                    key: key(k),
                    function: "memo".into(),
                    args: k.to_le_bytes().to_vec(),
                    parent: None,
                    priority: 0,
                    retry: RetryPolicy::default(),
                    no_cache: false,
                })
                .collect(),
            at: from,
        },
        Command::Assign {
            assignments: keys
                .clone()
                .map(|k| Assignment {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                })
                .collect(),
            at: from,
        },
        Command::Complete {
            completions: keys
                .map(|k| Completion {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                    outcome: Outcome::Value(vec![(k % 251) as u8; value_len]),
                    duration_ms: 1,
                })
                .collect(),
            at: from,
        },
    ]
}

async fn fill(dir: &Path, n: u64, value_len: usize) -> anyhow::Result<()> {
    let (log, mut sm) = open(dir, &options())?;
    let t = Instant::now();
    let mut index = 0;
    sm.apply([entry(
        index,
        Command::RegisterNode {
            node: NodeInfo {
                id: 1,
                name: "n1".into(),
                addr: "127.0.0.1:7001".into(),
                cpus: 8,
                memory_bytes: 16 << 30,
                slots: u32::MAX,
                state: NodeState::Active,
                role: NodeRole::Voter,
                labels: BTreeMap::new(),
            },
            at: 0,
        },
    )])
    .await?;
    let mut from = 0;
    while from < n {
        let to = (from + 1_000).min(n);
        let ents: Vec<Entry> = batch_commands(from, to, value_len)
            .into_iter()
            .map(|c| {
                index += 1;
                entry(index, c)
            })
            .collect();
        sm.apply(ents).await?;
        from = to;
    }
    let applied = t.elapsed();
    let (rss, hwm) = rss_mib();
    println!(
        "fill: {n} requests with {value_len}-byte results applied in {:.1} s ({:.0} requests/s); RSS {rss} MiB (peak {hwm} MiB)",
        applied.as_secs_f64(),
        n as f64 / applied.as_secs_f64()
    );
    let t = Instant::now();
    sm.build_snapshot().await?;
    let built = t.elapsed();
    let (_, snap_bytes) = sm.last_snapshot().unwrap_or_default();
    let (rss, hwm) = rss_mib();
    println!(
        "fill: snapshot built in {:.1} s, {} MiB; RSS {rss} MiB (peak {hwm} MiB); data dir {} MiB",
        built.as_secs_f64(),
        snap_bytes >> 20,
        log.disk_size() >> 20
    );
    Ok(())
}

async fn reopen(dir: &Path, n: u64) -> anyhow::Result<()> {
    let (rss0, _) = rss_mib();
    let t = Instant::now();
    let (_log, mut sm) = open(dir, &options())?;
    let opened = t.elapsed();
    let (rss, hwm) = rss_mib();
    let (applied, _) = sm.applied_state().await?;
    let requests = sm.shared().read().map(|s| s.request_count()).unwrap_or(0);
    println!(
        "reopen: opened in {:.2} s (state from the snapshot at index {}, {requests} requests, no log replay); RSS {rss} MiB (peak {hwm} MiB, {rss0} MiB before open)",
        opened.as_secs_f64(),
        applied.map_or(0, |l| l.index),
    );
    let t = Instant::now();
    let probes = 1_000u64;
    for i in 0..probes {
        let k = (i * 7919) % n;
        match sm.outcome(&key(k))? {
            Some(Outcome::Value(v)) if v.first() == Some(&((k % 251) as u8)) => {}
            other => anyhow::bail!("result of request {k} is {other:?}"),
        }
    }
    let per = t.elapsed() / probes as u32;
    let (rss, hwm) = rss_mib();
    println!(
        "reopen: {probes} random result reads, {:.1} us each; RSS {rss} MiB (peak {hwm} MiB)",
        per.as_secs_f64() * 1e6
    );
    Ok(())
}

fn sled_only(dir: &Path, n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    let db = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(options().cache_capacity_bytes)
        .open()?;
    let outcomes = db.open_tree("sm_outcomes")?;
    let opened = t.elapsed();
    if outcomes.is_empty() {
        // Short results are kept in memory and in snapshots, not in sled.
        println!("sled only: no result in sm_outcomes (they are short: kept in memory)");
        return Ok(());
    }
    let t = Instant::now();
    let probes = 1_000u64;
    for i in 0..probes {
        let k = (i * 7919) % n;
        anyhow::ensure!(outcomes.get(key(k).0)?.is_some(), "no result for {k}");
    }
    let per = t.elapsed() / probes as u32;
    let (rss, hwm) = rss_mib();
    println!(
        "sled only: opened in {:.2} s, {probes} reads {:.1} us each; RSS {rss} MiB (peak {hwm} MiB)",
        opened.as_secs_f64(),
        per.as_secs_f64() * 1e6
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match args.get(1).map(String::as_str) {
        Some("fill") => {
            let (dir, n, len) = (&args[2], args[3].parse()?, args[4].parse()?);
            runtime()?.block_on(fill(Path::new(dir), n, len))
        }
        Some("reopen") => {
            let (dir, n) = (&args[2], args[3].parse()?);
            runtime()?.block_on(reopen(Path::new(dir), n))
        }
        Some("sled-only") => sled_only(Path::new(&args[2]), args[3].parse()?),
        n => {
            let n: u64 = n.map_or(Ok(1_000_000), str::parse)?;
            let len: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
            let dir = tempfile::TempDir::new()?;
            let dir_arg = dir.path().to_string_lossy().into_owned();
            let exe = std::env::current_exe()?;
            for role in [
                vec![
                    "fill".to_string(),
                    dir_arg.clone(),
                    n.to_string(),
                    len.to_string(),
                ],
                vec!["reopen".to_string(), dir_arg.clone(), n.to_string()],
                vec!["sled-only".to_string(), dir_arg.clone(), n.to_string()],
            ] {
                let status = Process::new(&exe).args(&role).status()?;
                anyhow::ensure!(status.success(), "{} failed: {status}", role[0]);
            }
            Ok(())
        }
    }
}
