//! The call workloads (W1, W2, W3, memo, failover) through the public client, timed in the
//! client from the first submission to the last value in hand. Every call carries the run's
//! nonce, so nothing is answered from an earlier run's memo table, and every value is checked.

use super::BenchConfig;
use super::cluster::LocalCluster;
use super::report::{Outcome, latency_ms, process_cpu_s};
use futures::StreamExt;
use mozen_client::{CallOptions, Client, ClientError};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Requests in `tree([3, 5, nonce])`: 1 + 5 + 25 + 125.
pub const TREE_REQUESTS: u64 = 156;

fn noop_args(nonce: &str, tag: &str, i: usize) -> Value {
    json!([nonce, tag, i])
}

/// One `noop` call whose value must equal its argument.
async fn noop(client: &Client, args: Value) -> Result<(), String> {
    let v: Value = client
        .call("noop", args.clone())
        .await
        .map_err(|e| e.to_string())?;
    if v == args {
        Ok(())
    } else {
        Err(format!("noop({args}) returned {v}"))
    }
}

/// Calls `noop` on `n` distinct arguments with at most `in_flight` outstanding; returns when
/// each call finished (from `start`) and the first wrong or failed call.
async fn concurrent_noops(
    client: &Client,
    nonce: &str,
    tag: &str,
    n: usize,
    in_flight: usize,
    start: Instant,
    mut on_done: impl FnMut(usize),
) -> (Vec<Duration>, usize, Option<String>) {
    let mut done = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    let mut calls = futures::stream::iter(0..n)
        .map(|i| noop(client, noop_args(nonce, tag, i)))
        .buffer_unordered(in_flight.max(1));
    while let Some(r) = calls.next().await {
        done.push(start.elapsed());
        if let Err(e) = r {
            failed += 1;
            first_error.get_or_insert(e);
        }
        on_done(done.len());
    }
    (done, failed, first_error)
}

/// The peers' warm-up (not timed): 200 calls gathered, then 20 sequential round trips.
pub async fn warm_up(client: &Client, cfg: &BenchConfig, nonce: &str) -> Result<(), String> {
    let n = cfg.count(200, 10);
    let (_, failed, err) =
        concurrent_noops(client, nonce, "warm", n, n, Instant::now(), |_| {}).await;
    if let Some(e) = err {
        return Err(format!("{failed} of {n} calls failed, first: {e}"));
    }
    for i in 0..cfg.count(20, 2) {
        noop(client, noop_args(nonce, "warm-seq", i)).await?;
    }
    Ok(())
}

/// W1: `n` distinct calls in flight at once (or `--in-flight`), every value checked.
pub async fn w1(client: &Client, cfg: &BenchConfig, nonce: &str, cpu: impl Fn() -> f64) -> Outcome {
    let n = cfg.count(10_000, 10);
    let in_flight = cfg.in_flight.unwrap_or(n);
    let index0 = applied_index(client).await;
    let (cpu0, client_cpu0) = (cpu(), own_cpu_s());
    let start = Instant::now();
    let (done, failed, err) =
        concurrent_noops(client, nonce, "w1", n, in_flight, start, |_| {}).await;
    let wall = done.last().copied().unwrap_or_default().as_secs_f64();
    let (agent_cpu, client_cpu) = (cpu() - cpu0, own_cpu_s() - client_cpu0);
    // Log entries the calls took (the leader's applied index moved by them).
    let entries = applied_index(client).await.saturating_sub(index0);
    let detail = json!({
        "calls": n, "in_flight": in_flight, "wall_s": wall, "failed": failed,
        "agents_cpu_s": agent_cpu, "client_cpu_s": client_cpu, "log_entries": entries,
    });
    if let Some(e) = err {
        return Outcome::failed(format!("{failed} of {n} calls failed, first: {e}"), detail);
    }
    Outcome::ok(
        vec![
            ("calls_per_s", n as f64 / wall.max(1e-9)),
            ("agents_cpu_us_per_call", agent_cpu / n as f64 * 1e6),
            ("client_cpu_us_per_call", client_cpu / n as f64 * 1e6),
            ("calls_per_log_entry", n as f64 / entries.max(1) as f64),
        ],
        detail,
    )
}

/// The applied log index of the agent the client talks to (0 when it cannot say).
async fn applied_index(client: &Client) -> u64 {
    client
        .rpc(|mut c| async move { c.status(mozen_proto::StatusRequest {}).await })
        .await
        .map_or(0, |s| s.applied_index)
}

/// CPU seconds this process has used.
fn own_cpu_s() -> f64 {
    process_cpu_s(std::process::id()).unwrap_or(f64::NAN)
}

/// Times `n` sequential calls made by `call(i)`.
async fn sequential<F, Fut>(n: usize, mut call: F) -> Result<Vec<Duration>, String>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        call(i).await.map_err(|e| format!("call {i}: {e}"))?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

fn latency_outcome(lat: Result<Vec<Duration>, String>, extra: Value) -> Outcome {
    match lat {
        Err(e) => Outcome::failed(e, extra),
        Ok(lat) => {
            let l = latency_ms(&lat);
            let metric = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            let out = vec![("p50_ms", metric("p50")), ("p99_ms", metric("p99"))];
            Outcome::ok(out, json!({"latency_ms": l, "extra": extra}))
        }
    }
}

/// W2: `n` sequential distinct calls, each timed.
pub async fn w2(client: &Client, cfg: &BenchConfig, nonce: &str) -> Outcome {
    let n = cfg.count(1_000, 5);
    let lat = sequential(n, |i| noop(client, noop_args(nonce, "w2", i))).await;
    latency_outcome(lat, json!({"calls": n}))
}

/// One `tree([3, 5, [nonce, rep]])`, checked to count 156 requests.
async fn tree(client: &Client, nonce: &str, rep: usize) -> Result<Duration, String> {
    let t = Instant::now();
    let v: u64 = client
        .call("tree", json!([3, 5, [nonce, "w3", rep]]))
        .await
        .map_err(|e| e.to_string())?;
    if v != TREE_REQUESTS {
        return Err(format!("tree returned {v}, expected {TREE_REQUESTS}"));
    }
    Ok(t.elapsed())
}

/// W3: one cold tree, then the median of the warm ones (5 at scale 1).
pub async fn w3(client: &Client, cfg: &BenchConfig, nonce: &str) -> Outcome {
    let reps = cfg.count(5, 1);
    let mut walls = Vec::new();
    for rep in 0..=reps {
        match tree(client, nonce, rep).await {
            Ok(d) => walls.push(d),
            Err(e) => return Outcome::failed(format!("tree {rep}: {e}"), json!({})),
        }
    }
    let cold = walls[0].as_secs_f64() * 1e3;
    let warm = latency_ms(&walls[1..]);
    let median = warm["p50"].as_f64().unwrap_or(f64::NAN);
    Outcome::ok(
        vec![("warm_ms", median), ("cold_ms", cold)],
        json!({"requests_per_tree": TREE_REQUESTS, "warm_trees": reps, "warm_ms": warm}),
    )
}

/// memo: `n` distinct calls made once (not timed), then the same `n` again sequentially; each
/// repeat must be answered from the memo table.
pub async fn memo(client: &Client, cfg: &BenchConfig, nonce: &str) -> Outcome {
    let n = cfg.count(1_000, 5);
    let (_, failed, err) = concurrent_noops(
        client,
        nonce,
        "memo",
        n,
        n.min(1000),
        Instant::now(),
        |_| {},
    )
    .await;
    if let Some(e) = err {
        return Outcome::failed(
            format!("priming: {failed} of {n} calls failed, first: {e}"),
            json!({}),
        );
    }
    let opts = CallOptions::default();
    let lat = sequential(n, |i| {
        let args = noop_args(nonce, "memo", i);
        let opts = &opts;
        async move {
            let r = client
                .call_json("noop", args.clone(), opts)
                .await
                .map_err(|e: ClientError| e.to_string())?;
            let v: Option<Value> = r
                .result_json
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok());
            if !r.cached {
                Err(format!("noop({args}) was not a memo hit"))
            } else if v.as_ref() != Some(&args) {
                Err(format!("noop({args}) returned {v:?}"))
            } else {
                Ok(())
            }
        }
    })
    .await;
    latency_outcome(lat, json!({"calls": n}))
}

/// How throughput behaved around the leader's death, from completion times (sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Completions per second in the second before the kill.
    pub before_per_s: f64,
    /// From the kill to the start of the first 100 ms bucket, after the throughput fell below
    /// half of `before_per_s`, in which it is back at half or more. 0 when it never fell; the
    /// time of the last completion when the calls ran out before it came back.
    pub recovery_ms: f64,
    /// False when the calls ran out before throughput came back.
    pub recovered: bool,
    /// Longest gap between consecutive completions after the kill.
    pub longest_gap_ms: f64,
}

/// Width of the buckets throughput is judged in after a kill.
pub const BUCKET: Duration = Duration::from_millis(100);

pub fn recovery(done: &[Duration], kill: Duration) -> Recovery {
    let from = kill.saturating_sub(Duration::from_secs(1));
    let before = done.iter().filter(|&&t| t >= from && t < kill).count();
    let before_per_s = before as f64 / (kill - from).as_secs_f64().max(1e-3);
    let half = before_per_s * BUCKET.as_secs_f64() / 2.0;
    let after: Vec<Duration> = done.iter().copied().filter(|&t| t >= kill).collect();
    let last = after.last().copied().unwrap_or(kill);
    let longest_gap_ms = std::iter::once(kill)
        .chain(after.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let buckets = ((last - kill).as_nanos() / BUCKET.as_nanos()) as usize + 1;
    let mut counts = vec![0usize; buckets];
    for t in &after {
        counts[((*t - kill).as_nanos() / BUCKET.as_nanos()) as usize] += 1;
    }
    let ms = |k: usize| (BUCKET * k as u32).as_secs_f64() * 1e3;
    // The last bucket is cut short by the end of the calls: it cannot show a dip.
    let dip = counts[..buckets - 1]
        .iter()
        .position(|&c| (c as f64) < half);
    let (recovery_ms, recovered) = match dip {
        None => (0.0, true),
        Some(d) => match (d + 1..buckets).find(|&k| counts[k] as f64 >= half) {
            Some(k) => (ms(k), true),
            None => ((last - kill).as_secs_f64() * 1e3, false),
        },
    };
    Recovery {
        before_per_s,
        recovery_ms,
        recovered,
        longest_gap_ms,
    }
}

/// failover: W1 while the leader is SIGKILLed once a quarter of the calls completed.
pub async fn failover(
    cluster: &LocalCluster,
    client: &Client,
    cfg: &BenchConfig,
    nonce: &str,
) -> Outcome {
    let n = cfg.count(10_000, 20);
    let in_flight = cfg.in_flight.unwrap_or(n);
    let Some(leader) = cluster.leader(client, Duration::from_secs(10)).await else {
        return Outcome::failed("no leader before the kill".into(), json!({}));
    };
    let start = Instant::now();
    let mut kill_at: Option<Duration> = None;
    let mut kill_unix_ms = 0u128;
    let (done, failed, err) =
        concurrent_noops(client, nonce, "failover", n, in_flight, start, |count| {
            if kill_at.is_none() && count >= n / 4 {
                cluster.kill(leader);
                kill_at = Some(start.elapsed());
                kill_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
            }
        })
        .await;
    let wall = done.last().copied().unwrap_or_default();
    let new_leader = cluster.leader(client, Duration::from_secs(10)).await;
    let Some(kill) = kill_at else {
        return Outcome::failed("the calls ended before the kill".into(), json!({}));
    };
    let r = recovery(&done, kill);
    let timeline: Vec<usize> = {
        let mut b = vec![0usize; (wall.as_nanos() / BUCKET.as_nanos()) as usize + 1];
        for t in &done {
            b[(t.as_nanos() / BUCKET.as_nanos()) as usize] += 1;
        }
        b
    };
    let detail = json!({
        "calls": n, "in_flight": in_flight, "killed_leader": leader, "new_leader": new_leader,
        "kill_at_ms": kill.as_secs_f64() * 1e3, "kill_unix_ms": kill_unix_ms as u64,
        "before_per_s": r.before_per_s,
        "recovered_before_end": r.recovered, "failed": failed,
        "completions_per_100ms": timeline,
    });
    if let Some(e) = err {
        return Outcome::failed(
            format!("{failed} of {n} calls failed or were wrong, first: {e}"),
            detail,
        );
    }
    Outcome::ok(
        vec![
            ("recovery_ms", r.recovery_ms),
            ("longest_gap_ms", r.longest_gap_ms),
            ("calls_per_s", n as f64 / wall.as_secs_f64().max(1e-9)),
            ("lost_calls", 0.0),
        ],
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn recovery_is_the_first_bucket_back_at_half_rate_after_the_dip() {
        // 100/s steady for 2 s, the kill at 2 s, nothing until 2.5 s, then 100/s again.
        let mut done: Vec<Duration> = (0..200).map(|i| ms(i * 10)).collect();
        done.extend((0..100).map(|i| ms(2500 + i * 10)));
        let r = recovery(&done, ms(2000));
        assert_eq!(r.recovery_ms, 500.0);
        assert!(r.recovered);
        assert!((r.longest_gap_ms - 500.0).abs() < 1e-6);
        assert!((r.before_per_s - 100.0).abs() < 1e-6);
    }

    #[test]
    fn no_dip_means_no_recovery_time() {
        let done: Vec<Duration> = (0..300).map(|i| ms(i * 10)).collect();
        assert_eq!(recovery(&done, ms(1000)).recovery_ms, 0.0);
    }

    #[test]
    fn calls_that_run_out_during_the_dip_report_the_last_completion() {
        let mut done: Vec<Duration> = (0..100).map(|i| ms(i * 10)).collect();
        done.push(ms(1800));
        let r = recovery(&done, ms(1000));
        assert!(!r.recovered);
        assert_eq!(r.recovery_ms, 800.0);
    }
}
