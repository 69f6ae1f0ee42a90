//! `saturate`: every core of every voter computing, and the cluster's own work measured
//! beside it.
//!
//! Four phases, each `60 s × --scale` (at least 2 s): CPU-bound calls of `CALL_MS` each kept
//! in flight at 1× and 3× the machine's cores per agent, first with the built-in `spin`
//! (which moves its computing to a blocking thread), then with `fault.spin_inline`, a naive
//! `async fn` that computes without ever awaiting (the agents run with an empty fault file,
//! which registers it and injects nothing). Before them, an idle phase of a quarter of that.
//! Throughout, a probe reads the leader's status and node table every 100 ms and a steady
//! client calls `noop` (distinct arguments) every 20 ms. Per phase it reports:
//!
//! - `elections`: how much the term rose;
//! - `max_heartbeat_age_ms`: the longest a live node went unheard by the leader (its age when
//!   the probe looked), against the lease;
//! - the steady client's `noop` p50/p99 (and the idle phase's, beside them);
//! - `reexecuted`: the calls of the phase that ran more than once (attempts above 1);
//! - `calls`: the CPU-bound calls that finished.

use super::report::{Outcome, latency_ms, percentile};
use super::{BenchConfig, cluster::LocalCluster};
use mozen_client::{CallOptions, Client};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds each CPU-bound call computes (before `--scale`).
pub const CALL_MS: u64 = 5_000;

/// The naive function (registered by agents started with a fault file).
const NAIVE: &str = "fault.spin_inline";

/// What the probe saw during one phase.
#[derive(Default)]
struct Seen {
    first_term: Option<u64>,
    last_term: u64,
    max_age_ms: i64,
    noop: Vec<Duration>,
    noop_failures: u64,
}

/// Runs the idle phase and the four loaded ones on `cluster`.
pub async fn run(
    cluster: &LocalCluster,
    client: &Client,
    cfg: &BenchConfig,
    nonce: &str,
) -> Outcome {
    let phase = Duration::from_secs_f64((60.0 * cfg.scale).max(2.0));
    let call_ms = ((CALL_MS as f64 * cfg.scale) as u64).clamp(20, CALL_MS);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut metrics: Vec<(String, f64)> = Vec::new();
    let mut detail = serde_json::Map::new();
    let idle = probe_while(client, nonce, "idle", phase / 4, async {}).await;
    let (p50, p99) = noop_percentiles(&idle);
    metrics.push(("idle_noop_p50_ms".into(), p50));
    metrics.push(("idle_noop_p99_ms".into(), p99));
    metrics.push(("idle_max_heartbeat_age_ms".into(), idle.max_age_ms as f64));
    for (label, function) in [("spin", "spin"), ("naive", NAIVE)] {
        for times in [1usize, 3] {
            let name = format!("{label}_{times}x");
            let in_flight = times * cores * cluster.len();
            let done = Arc::new(AtomicU64::new(0));
            let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
            let failed = Arc::new(AtomicBool::new(false));
            let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
            let load = keep_busy(
                client,
                function,
                call_ms,
                in_flight,
                phase,
                (&done, &keys, &failed, &first_error),
            );
            let seen = probe_while(client, nonce, &name, phase, load).await;
            let keys = keys.lock().expect("keys").clone();
            let reexecuted = reexecuted(client, &keys).await;
            let (p50, p99) = noop_percentiles(&seen);
            let elections = seen.last_term - seen.first_term.unwrap_or(seen.last_term);
            let row = |k: &str| format!("{name}_{k}");
            metrics.push((row("elections"), elections as f64));
            metrics.push((row("max_heartbeat_age_ms"), seen.max_age_ms as f64));
            metrics.push((row("noop_p50_ms"), p50));
            metrics.push((row("noop_p99_ms"), p99));
            metrics.push((row("reexecuted"), reexecuted as f64));
            metrics.push((row("calls"), done.load(Ordering::Relaxed) as f64));
            detail.insert(
                name.clone(),
                json!({
                    "function": function,
                    "in_flight": in_flight,
                    "call_ms": call_ms,
                    "noop_latency_ms": latency_ms(&seen.noop),
                    "noop_failures": seen.noop_failures,
                    "first_error": first_error.lock().expect("error").clone(),
                    "terms": [seen.first_term, seen.last_term],
                }),
            );
            if failed.load(Ordering::Relaxed) {
                let e = first_error.lock().expect("error").clone();
                return Outcome {
                    metrics,
                    detail: Value::Object(detail),
                    error: Some(format!("{name}: {}", e.unwrap_or_default())),
                };
            }
        }
    }
    detail.insert("phase_s".into(), json!(phase.as_secs_f64()));
    detail.insert("cores".into(), json!(cores));
    Outcome {
        metrics,
        detail: Value::Object(detail),
        error: None,
    }
}

type Tally<'a> = (
    &'a Arc<AtomicU64>,
    &'a Arc<std::sync::Mutex<Vec<String>>>,
    &'a Arc<AtomicBool>,
    &'a Arc<std::sync::Mutex<Option<String>>>,
);

/// Keeps `in_flight` calls of `function` running until `phase` has passed: each of
/// `in_flight` tasks calls again as soon as its call returns (distinct arguments, so none is
/// a memo hit).
async fn keep_busy(
    client: &Client,
    function: &str,
    call_ms: u64,
    in_flight: usize,
    phase: Duration,
    (done, keys, failed, first_error): Tally<'_>,
) {
    let until = Instant::now() + phase;
    // More calls than one task makes in the phase, so that tasks' arguments never meet.
    let per_task = phase.as_millis() as u64 / call_ms + 2;
    let tasks = (0..in_flight).map(|t| {
        let (client, done, keys, failed, first_error) = (
            client.clone(),
            done.clone(),
            keys.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let function = function.to_string();
        async move {
            let mut i = 0u64;
            while Instant::now() < until {
                // The milliseconds vary a little so that every call is a distinct request.
                let args = json!(call_ms + t as u64 * per_task + i);
                let opts = CallOptions {
                    no_cache: true,
                    ..Default::default()
                };
                match client.call_json(&function, args, &opts).await {
                    Ok(r) if r.state == "done" => {
                        done.fetch_add(1, Ordering::Relaxed);
                        keys.lock().expect("keys").push(r.key);
                    }
                    Ok(r) => note(&failed, &first_error, format!("a call ended {}", r.state)),
                    Err(e) => note(&failed, &first_error, e.to_string()),
                }
                i += 1;
            }
        }
    });
    futures::future::join_all(tasks).await;
}

fn note(failed: &AtomicBool, first: &std::sync::Mutex<Option<String>>, e: String) {
    failed.store(true, Ordering::Relaxed);
    first.lock().expect("error").get_or_insert(e);
}

/// Runs `load` while probing the cluster every 100 ms and calling `noop` every 20 ms, for at
/// least `phase`.
async fn probe_while(
    client: &Client,
    nonce: &str,
    name: &str,
    phase: Duration,
    load: impl std::future::Future<Output = ()>,
) -> Seen {
    let until = Instant::now() + phase;
    let stop = AtomicBool::new(false);
    let seen = std::sync::Mutex::new(Seen::default());
    let probe = async {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = status(client).await {
                let mut v = seen.lock().expect("seen");
                v.first_term.get_or_insert(s.term);
                v.last_term = v.last_term.max(s.term);
            }
            if let Ok(nodes) = nodes(client).await {
                let age = nodes
                    .iter()
                    .filter(|n| n.state == "active" && !n.is_leader)
                    .map(|n| n.heartbeat_age_ms)
                    .max()
                    .unwrap_or(0);
                let mut v = seen.lock().expect("seen");
                v.max_age_ms = v.max_age_ms.max(age);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let steady = async {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let args = json!([nonce, "saturate", name, i]);
            let opts = CallOptions {
                no_cache: true,
                ..Default::default()
            };
            match client.call_json("noop", args, &opts).await {
                Ok(r) if r.state == "done" => seen.lock().expect("seen").noop.push(t.elapsed()),
                _ => seen.lock().expect("seen").noop_failures += 1,
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20).saturating_sub(t.elapsed())).await;
        }
    };
    let load = async {
        load.await;
        tokio::time::sleep_until(until.into()).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(probe, steady, load);
    seen.into_inner().expect("seen")
}

fn noop_percentiles(seen: &Seen) -> (f64, f64) {
    let mut ms: Vec<f64> = seen.noop.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    if ms.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (percentile(&ms, 50.0), percentile(&ms, 99.0))
}

async fn status(client: &Client) -> Result<pb::RaftStatus, String> {
    client
        .rpc(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .map_err(|e| e.to_string())
}

async fn nodes(client: &Client) -> Result<Vec<pb::Node>, String> {
    client
        .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
        .await
        .map(|r| r.nodes)
        .map_err(|e| e.to_string())
}

/// How many of `keys` ran more than once (their request shows more than one attempt).
async fn reexecuted(client: &Client, keys: &[String]) -> u64 {
    let mut n = 0;
    for key in keys {
        let req = pb::TreeRequest {
            key: key.clone(),
            max_nodes: 1,
            max_depth: 1,
            omit_args: true,
            page_token: String::new(),
        };
        let reply = client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.tree(r).await }
            })
            .await;
        if let Ok(t) = reply
            && t.entries
                .first()
                .and_then(|e| e.request.as_ref())
                .is_some_and(|r| r.attempts > 1)
        {
            n += 1;
        }
    }
    n
}
