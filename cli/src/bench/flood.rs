//! `flood`: one client floods the cluster past its bound while another calls `noop`.
//!
//! The run's cluster starts with `--max-queue` `--flood-queue` (default [`MAX_QUEUE`]; per
//! client: half of it, the default). Phases, each `30 s × --scale` (at least 5 s; idle a third of that):
//!
//! 1. idle: the other client (`mozen-client-id: probe`) calls `noop` (distinct arguments)
//!    every 20 ms: its p50/p99;
//! 2. flood: the flooder (`mozen-client-id: flooder`) submits distinct `sleep(60000+i)` calls
//!    from [`FLOOD_TASKS`] tasks as fast as they are answered (after a refusal a task waits
//!    10 ms, not the hint: it is a flood), while the other client goes on as in 1;
//! 3. bulk cancel of everything the flooder has (`CancelRequest{client}`), then `Forget` of
//!    `sleep`.
//!
//! Throughout, a probe reads the leader's term every 200 ms and every agent's resident memory
//! (`VmRSS`). Reported: the other client's p50/p99 idle and under the flood and its failures,
//! elections (term rise) during the flood, the flooder's admitted and refused submits, the
//! agents' largest RSS idle, at peak and after the cancel and forget, and the cancel's time.

use super::report::{Outcome, latency_ms, percentile};
use super::{BenchConfig, cluster::LocalCluster};
use mozen_client::{CallOptions, Client};
use mozen_proto as pb;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The cluster-wide bound the flood runs against by default.
pub const MAX_QUEUE: usize = 20_000;

/// Flooding tasks.
pub const FLOOD_TASKS: usize = 64;

/// Agent flags of the flood's cluster.
pub fn agent_flags(max_queue: usize) -> Vec<String> {
    vec!["--max-queue".into(), max_queue.to_string()]
}

/// The other client's calls during one phase.
#[derive(Default)]
struct Steady {
    ok: Vec<Duration>,
    failures: u64,
    first_error: Option<String>,
}

impl Steady {
    fn percentiles(&self) -> (f64, f64) {
        let mut ms: Vec<f64> = self.ok.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        if ms.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        (percentile(&ms, 50.0), percentile(&ms, 99.0))
    }
}

/// What the probe saw.
#[derive(Default)]
struct Probe {
    first_term: Option<u64>,
    last_term: u64,
    peak_rss_kb: u64,
}

/// Resident memory of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The largest RSS among the cluster's agents, in MiB.
fn max_rss_mb(cluster: &LocalCluster) -> f64 {
    cluster
        .pids()
        .into_iter()
        .filter_map(rss_kb)
        .max()
        .unwrap_or(0) as f64
        / 1024.0
}

pub async fn run(cluster: &LocalCluster, cfg: &BenchConfig, nonce: &str) -> Outcome {
    let phase = Duration::from_secs_f64((30.0 * cfg.scale).max(5.0));
    let idle_phase = (phase / 3).max(Duration::from_secs(3));
    let (other, flooder) = match (cluster.client_as("probe"), cluster.client_as("flooder")) {
        (Ok(o), Ok(f)) => (o, f),
        (Err(e), _) | (_, Err(e)) => return Outcome::failed(e, json!({})),
    };
    let rss_idle = max_rss_mb(cluster);
    let stop = AtomicBool::new(false);
    let idle = run_for(idle_phase, &stop, steady(&other, nonce, "idle", &stop)).await;
    let (idle_p50, idle_p99) = idle.percentiles();

    let stop = AtomicBool::new(false);
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other_errors = Arc::new(AtomicU64::new(0));
    let first_flood_error = std::sync::Mutex::new(None::<String>);
    let probe = std::sync::Mutex::new(Probe::default());
    let next = AtomicU64::new(0);
    let flood = async {
        let tasks = (0..FLOOD_TASKS).map(|_| async {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let req = pb::CallRequest {
                    function: "sleep".into(),
                    args_json: (60_000 + i).to_string(),
                    ..Default::default()
                };
                let r = flooder
                    .rpc(|mut c| {
                        let r = req.clone();
                        async move { c.submit(r).await }
                    })
                    .await;
                match r {
                    Ok(_) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == "MZ-QUEUE-FULL" => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => {
                        other_errors.fetch_add(1, Ordering::Relaxed);
                        first_flood_error
                            .lock()
                            .expect("error")
                            .get_or_insert(e.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        futures::future::join_all(tasks).await;
    };
    let watch = async {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = other
                .rpc(|mut c| async move { c.status(pb::StatusRequest {}).await })
                .await
            {
                let mut p = probe.lock().expect("probe");
                p.first_term.get_or_insert(s.term);
                p.last_term = p.last_term.max(s.term);
            }
            let rss = cluster
                .pids()
                .into_iter()
                .filter_map(rss_kb)
                .max()
                .unwrap_or(0);
            {
                let mut p = probe.lock().expect("probe");
                p.peak_rss_kb = p.peak_rss_kb.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let under = async {
        let (s, (), ()) = tokio::join!(steady(&other, nonce, "flood", &stop), flood, watch);
        s
    };
    let under = run_for(phase, &stop, under).await;
    let (flood_p50, flood_p99) = under.percentiles();
    let probe = probe.into_inner().expect("probe");
    let elections = probe.last_term - probe.first_term.unwrap_or(probe.last_term);

    // Bulk cancel of the flooder's work, then forget it.
    let started = Instant::now();
    let cancel = flooder
        .rpc(|mut c| async move {
            c.cancel(pb::CancelRequest {
                client: "flooder".into(),
                ..Default::default()
            })
            .await
        })
        .await;
    let cancel_s = started.elapsed().as_secs_f64();
    // An agent without bulk cancel refuses it (the figures before it are still reported).
    let (cancelled, cancel_error) = match &cancel {
        Ok(r) => (r.count as f64, None),
        Err(e) => (f64::NAN, Some(format!("bulk cancel: {e}"))),
    };
    let forgotten = flooder
        .rpc(|mut c| async move {
            c.forget(pb::ForgetRequest {
                function: "sleep".into(),
                ..Default::default()
            })
            .await
        })
        .await
        .map_or(0, |r| r.forgotten);
    // Let the agents settle (workers drop the cancelled sleeps, allocators return memory).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = max_rss_mb(cluster);

    let metrics = vec![
        ("idle_noop_p50_ms", idle_p50),
        ("idle_noop_p99_ms", idle_p99),
        ("flood_noop_p50_ms", flood_p50),
        ("flood_noop_p99_ms", flood_p99),
        ("flood_noop_failures", under.failures as f64),
        ("flood_elections", elections as f64),
        ("flood_admitted", admitted.load(Ordering::Relaxed) as f64),
        ("flood_refused", refused.load(Ordering::Relaxed) as f64),
        ("rss_idle_mb", rss_idle),
        ("rss_peak_mb", probe.peak_rss_kb as f64 / 1024.0),
        ("rss_after_cancel_mb", rss_after),
        (
            "bulk_cancel_s",
            if cancel_error.is_some() {
                f64::NAN
            } else {
                cancel_s
            },
        ),
        ("bulk_cancelled", cancelled),
    ];
    let detail = json!({
        "max_queue": cfg.flood_queue,
        "flood_tasks": FLOOD_TASKS,
        "phase_s": phase.as_secs_f64(),
        "idle_noop_latency_ms": latency_ms(&idle.ok),
        "flood_noop_latency_ms": latency_ms(&under.ok),
        "idle_noop_failures": idle.failures,
        "flood_noop_first_error": under.first_error,
        "flood_other_errors": other_errors.load(Ordering::Relaxed),
        "flood_first_other_error": first_flood_error.lock().expect("error").clone(),
        "terms": [probe.first_term, probe.last_term],
        "forgotten": forgotten,
    });
    if let Some(e) = cancel_error {
        return Outcome {
            error: Some(e),
            ..Outcome::ok(metrics, detail)
        };
    }
    let admitted = admitted.load(Ordering::Relaxed) as usize;
    let per_client = (cfg.flood_queue / 2).max(1);
    if admitted > per_client {
        return Outcome {
            error: Some(format!(
                "the flooder got {admitted} calls admitted past its bound of {per_client} \
                 (--max-queue {} / 2)",
                cfg.flood_queue
            )),
            ..Outcome::ok(metrics, detail)
        };
    }
    Outcome::ok(metrics, detail)
}

/// Runs `work` until `phase` has passed, then sets `stop` and waits for it to end.
async fn run_for<T>(
    phase: Duration,
    stop: &AtomicBool,
    work: impl std::future::Future<Output = T>,
) -> T {
    let timer = async {
        tokio::time::sleep(phase).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (out, ()) = tokio::join!(work, timer);
    out
}

/// Calls `noop` every 20 ms (distinct arguments) until `stop`.
async fn steady(client: &Client, nonce: &str, phase: &str, stop: &AtomicBool) -> Steady {
    let mut s = Steady::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let opts = CallOptions {
            no_cache: true,
            ..Default::default()
        };
        match client
            .call_json("noop", json!([nonce, "flood", phase, i]), &opts)
            .await
        {
            Ok(r) if r.state == "done" => s.ok.push(t.elapsed()),
            Ok(r) => {
                s.failures += 1;
                s.first_error
                    .get_or_insert(format!("a call ended {}", r.state));
            }
            Err(e) => {
                s.failures += 1;
                s.first_error.get_or_insert(e.to_string());
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20).saturating_sub(t.elapsed())).await;
    }
    s
}
