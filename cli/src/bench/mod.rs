//! `mozen bench`: the benchmark harness. It starts fresh local clusters of real `mozen-agent`
//! processes (durable sled data dirs in a temp dir, ephemeral 127.0.0.1 ports), runs the
//! workloads, prints median, min and max over runs and writes every run's figures as JSON.
//!
//! The workloads are the peers' benchmark workloads, unchanged, plus Mozen's own:
//!
//! - `W1`: 10,000 distinct `noop` calls in flight at once from one client, until every value is
//!   in hand (calls/s).
//! - `W2`: 1,000 sequential distinct `noop` calls (p50, p99).
//! - `W3`: `tree([3, 5, nonce])`, 156 requests with parents blocked on their children: one cold
//!   tree, then the median of 5 warm ones (wall time).
//! - `memo`: 1,000 sequential calls answered from the memo table (p50, p99).
//! - `failover`: W1 while the leader is SIGKILLed: time from the kill until throughput is back,
//!   and every value checked.
//! - `scale`: the real scheduler and state machine driven in-process (in the agent binary)
//!   with 3, 50 and 500 registered nodes (assignments/s, scheduler CPU per assignment).
//! - `batch`: wordcount over a generated corpus with the batch runner (MB/s).
//! - `saturate`: CPU-bound calls on every core of every agent (1× and 3×, the built-in `spin`
//!   and a naive `async fn`) while a probe watches elections, heartbeat ages and a steady
//!   client's `noop` latency. Not in `all` (about 4.5 minutes a run): ask for it by name.
//! - `flood`: one client submits distinct `sleep(60000)` calls past the queue bound while
//!   another calls `noop`: the other's p50/p99 beside its idle figures, elections, the
//!   flooder's admitted and refused calls, agents' memory, and the bulk cancel's time. Its
//!   cluster runs with `--max-queue 20000` (`--flood-queue`). Not in `all`: ask for it by name.
//!
//! Modules: [`cluster`] (agent processes), [`calls`] (the call workloads), [`scale`],
//! [`wordcount`], [`saturate`], [`flood`], [`report`] (statistics, the table and the JSON). See
//! docs/benchmarks.md.

pub mod calls;
pub mod cluster;
pub mod flood;
pub mod report;
pub mod saturate;
pub mod scale;
pub mod wordcount;

use cluster::LocalCluster;
use mozen_client::Client;
use report::{Outcome, Report, RunRecord};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

/// Why the harness could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad flag: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The cluster could not be started, a file could not be written, or a workload failed.
    #[error("{0}")]
    Runtime(String),
}

impl BenchError {
    pub fn is_usage(&self) -> bool {
        matches!(self, BenchError::Usage(_))
    }
}

/// One workload of the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    Memo,
    Scale,
    Batch,
    /// Last in a run: it kills the leader of the run's cluster.
    Failover,
    /// Every core computing; by name only (not in `all`).
    Saturate,
    /// One client flooding past the queue bound; by name only (not in `all`).
    Flood,
}

impl Workload {
    /// Every workload, in the order a run executes them.
    pub const NAMED: [Workload; 9] = [
        Workload::Scale,
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::Memo,
        Workload::Batch,
        Workload::Saturate,
        Workload::Flood,
        Workload::Failover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Saturate => "saturate",
            Workload::Flood => "flood",
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::Memo => "memo",
            Workload::Failover => "failover",
            Workload::Scale => "scale",
            Workload::Batch => "batch",
        }
    }

    /// Whether it needs the run's cluster of agents.
    fn needs_cluster(self) -> bool {
        self != Workload::Scale
    }
}

/// Parses `NAME[,NAME...]` or `all` (names as in [`Workload::name`], any case).
pub fn parse_workloads(s: &str) -> Result<Vec<Workload>, BenchError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("all") {
            out.extend(
                Workload::NAMED
                    .into_iter()
                    .filter(|w| !matches!(w, Workload::Saturate | Workload::Flood)),
            );
            continue;
        }
        let w = Workload::NAMED
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(part))
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "--workload '{s}': unknown workload '{part}'; expected all or a comma-separated list of {}",
                    Workload::NAMED.map(Workload::name).join(", ")
                ))
            })?;
        out.push(w);
    }
    out.sort_by_key(|w| Workload::NAMED.iter().position(|x| x == w));
    out.dedup();
    Ok(out)
}

/// Flags of `mozen bench`, as typed.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Agents in each run's cluster (voters: 1, 3, 5 or 7 of them); failover needs at least 3.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// all, or a comma-separated list of W1, W2, W3, memo, failover, scale, batch, saturate,
    /// flood (saturate and flood are not in all).
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// Runs, each on a fresh cluster; the table gives median, min and max over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Write every run's figures and the summary to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Multiplies every count (calls, assignments, corpus size), e.g. 0.01 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Size of the batch workload's corpus in MB (before --scale).
    #[arg(long, default_value_t = 20.0)]
    pub batch_mb: f64,
    /// Most W1/failover calls in flight at once (default: all of them).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// The agent binary (default: `mozen-agent` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// `--max-queue` of the flood workload's cluster (each client may hold half).
    #[arg(long, default_value_t = flood::MAX_QUEUE)]
    pub flood_queue: usize,
}

/// Validated settings of one harness invocation.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub agents: usize,
    pub workloads: Vec<Workload>,
    pub runs: usize,
    pub json: Option<PathBuf>,
    pub scale: f64,
    pub batch_mb: f64,
    pub in_flight: Option<usize>,
    pub agent_bin: PathBuf,
    pub flood_queue: usize,
}

impl BenchArgs {
    /// Checks every flag; errors quote the bad value and say what is expected.
    pub fn validate(self) -> Result<BenchConfig, BenchError> {
        let usage = |m: String| Err(BenchError::Usage(m));
        if !(1..=7).contains(&self.agents) {
            return usage(format!("--agents {}: expected 1 to 7", self.agents));
        }
        if self.runs == 0 {
            return usage("--runs 0: expected at least 1 run".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale <= 100.0) {
            return usage(format!(
                "--scale {}: expected a factor above 0 and at most 100 (1 = the defined workloads)",
                self.scale
            ));
        }
        if !(self.batch_mb.is_finite() && self.batch_mb > 0.0) {
            return usage(format!(
                "--batch-mb {}: expected a size above 0",
                self.batch_mb
            ));
        }
        if self.flood_queue < 2 {
            return usage(format!(
                "--flood-queue {}: expected at least 2",
                self.flood_queue
            ));
        }
        if self.in_flight == Some(0) {
            return usage("--in-flight 0: expected at least 1".into());
        }
        let workloads = parse_workloads(&self.workload)?;
        if workloads.contains(&Workload::Failover) && self.agents < 3 {
            return usage(format!(
                "--agents {}: the failover workload needs at least 3 agents (a quorum must survive the leader); pass --agents 3 or leave failover out",
                self.agents
            ));
        }
        let agent_bin = match self.agent_bin {
            Some(p) => p,
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("mozen-agent")))
                .unwrap_or_else(|| PathBuf::from("mozen-agent")),
        };
        // Every workload runs the agent binary: on a cluster, or (scale) for its measurement.
        if !agent_bin.is_file() {
            return usage(format!(
                "--agent-bin {}: no such file; build it with `cargo build --release -p mozen-agent --bins` or pass --agent-bin PATH",
                agent_bin.display()
            ));
        }
        Ok(BenchConfig {
            agents: self.agents,
            workloads,
            runs: self.runs,
            json: self.json,
            scale: self.scale,
            batch_mb: self.batch_mb,
            in_flight: self.in_flight,
            agent_bin,
            flood_queue: self.flood_queue,
        })
    }
}

impl BenchConfig {
    /// `base` scaled by `--scale`, at least `min`.
    pub fn count(&self, base: usize, min: usize) -> usize {
        ((base as f64 * self.scale).round() as usize).max(min)
    }
}

/// `mozen bench`: validates the flags, runs everything, prints the table and writes the JSON.
pub async fn cli(args: BenchArgs) -> Result<(), BenchError> {
    let cfg = args.validate()?;
    let report = run(&cfg).await?;
    print!("{}", report.table());
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| {
            BenchError::Runtime(format!("--json {}: cannot write: {e}", path.display()))
        })?;
        eprintln!("wrote {}", path.display());
    }
    let failed = report.failures();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Runtime(format!(
            "{} workload run(s) failed: {}",
            failed.len(),
            failed.join("; ")
        )))
    }
}

/// Runs every configured workload `runs` times, each run on a fresh cluster.
pub async fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let mut dir = tempfile::Builder::new()
        .prefix("mozen-bench-")
        .tempdir()
        .map_err(|e| BenchError::Runtime(format!("cannot create a temp dir: {e}")))?;
    // MOZEN_BENCH_KEEP=1 keeps the agents' data dirs and logs (agent-N.log in each run's dir;
    // MOZEN_BENCH_AGENT_LOG sets the agents' log filter) for a look afterwards.
    if std::env::var_os("MOZEN_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!(
            "keeping the clusters' data dirs and logs in {}",
            dir.path().display()
        );
    }
    let corpus = if cfg.workloads.contains(&Workload::Batch) {
        Some(wordcount::Corpus::generate(
            &dir.path().join("corpus"),
            cfg.batch_mb * cfg.scale,
        )?)
    } else {
        None
    };
    let mut report = Report::new(cfg);
    for run in 1..=cfg.runs {
        let mut rec = RunRecord::new(run);
        let nonce = format!(
            "{}-{run}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        if cfg.workloads.contains(&Workload::Scale) {
            eprintln!("run {run}/{}: scale (in-process)", cfg.runs);
            let out = scale::run(cfg).await;
            rec.push(Workload::Scale, out);
        }
        if cfg.workloads.iter().any(|w| w.needs_cluster()) {
            let flags = if cfg.workloads.contains(&Workload::Flood) {
                flood::agent_flags(cfg.flood_queue)
            } else {
                Vec::new()
            };
            let cluster = LocalCluster::start_with_flags(
                &cfg.agent_bin,
                cfg.agents,
                &dir.path().join(format!("run{run}")),
                cfg.workloads.contains(&Workload::Saturate),
                &flags,
            )
            .await?;
            let client = cluster.client();
            rec.startup_s = Some(cluster.startup.as_secs_f64());
            eprintln!(
                "run {run}/{}: {} agents up in {:.2}s",
                cfg.runs,
                cfg.agents,
                cluster.startup.as_secs_f64()
            );
            calls::warm_up(&client, cfg, &nonce)
                .await
                .map_err(|e| BenchError::Runtime(format!("warm-up: {e}")))?;
            for &w in cfg.workloads.iter().filter(|w| w.needs_cluster()) {
                eprintln!("run {run}/{}: {}", cfg.runs, w.name());
                let started = Instant::now();
                let out = run_on_cluster(w, cfg, &cluster, &client, &nonce, corpus.as_ref()).await;
                eprintln!(
                    "run {run}/{}: {} {} in {:.1}s",
                    cfg.runs,
                    w.name(),
                    out.headline(),
                    started.elapsed().as_secs_f64()
                );
                rec.push(w, out);
            }
            rec.agent_logs = cluster.log_tail_if_failed(&rec);
            drop(cluster);
        }
        rec.loadavg_after = report::loadavg();
        report.runs.push(rec);
    }
    Ok(report)
}

async fn run_on_cluster(
    w: Workload,
    cfg: &BenchConfig,
    cluster: &LocalCluster,
    client: &Client,
    nonce: &str,
    corpus: Option<&wordcount::Corpus>,
) -> Outcome {
    match w {
        Workload::W1 => calls::w1(client, cfg, nonce, || cluster.cpu_s()).await,
        Workload::W2 => calls::w2(client, cfg, nonce).await,
        Workload::W3 => calls::w3(client, cfg, nonce).await,
        Workload::Memo => calls::memo(client, cfg, nonce).await,
        Workload::Failover => calls::failover(cluster, client, cfg, nonce).await,
        Workload::Batch => match corpus {
            Some(c) => wordcount::run(c, client).await,
            None => Outcome::failed("no corpus".into(), Value::Null),
        },
        Workload::Saturate => saturate::run(cluster, client, cfg, nonce).await,
        Workload::Flood => flood::run(cluster, cfg, nonce).await,
        Workload::Scale => Outcome::failed("scale runs in-process".into(), json!({})),
    }
}
