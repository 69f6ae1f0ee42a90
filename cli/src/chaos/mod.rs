//! Chaos testing: a local cluster of real `mozen-agent` processes, a seeded nemesis that
//! SIGKILLs, pauses (SIGSTOP/SIGCONT), partitions and restarts them, a workload of calls whose
//! results are known, a recorded history, and a checker.
//!
//! - [`procs`]: the agent processes and their fault files.
//! - [`nemesis`]: the fault schedule.
//! - [`workload`]: the clients and the expected values.
//! - [`history`]: invoke / ok / fail / info per operation, and faults, with times.
//! - [`check`]: what the history and the healed cluster must satisfy.
//! - [`cli`]: the flags of `mozen chaos`.
//!
//! Driven by `mozen chaos` and by the integration tests. What it checks and the figures of long
//! runs: docs/reliability.md.

pub mod check;
pub mod cli;
pub mod history;
pub mod nemesis;
pub mod procs;
pub mod workload;

use check::{Analysis, Verification};
use history::History;
use mozen_model::Code;
use nemesis::FaultCounts;
use procs::LocalCluster;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGKILL one agent (the leader half of the time), then restart it on its data dir.
    Kill,
    /// SIGSTOP one agent for up to 4.5 s, then SIGCONT it.
    Pause,
    /// Cut the leader off, or a random minority, then heal.
    Partition,
    /// SIGKILL every agent at once, then start them all.
    Restart,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Kill, Fault::Pause, Fault::Partition, Fault::Restart];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Restart => "restart",
        }
    }

    /// Parses `kill,pause,partition,restart` (any subset; `none` for no faults).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "none" {
                continue;
            }
            let f = Fault::ALL
                .into_iter()
                .find(|f| f.name() == part)
                .ok_or_else(|| {
                    format!("--faults '{s}': unknown fault '{part}' (expected kill, pause, partition, restart or none)")
                })?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

/// A chaos run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `mozen-agent` binary to start.
    pub agent_bin: PathBuf,
    /// Agents to start (3 to 7); the largest odd count of them up to 7 are voters.
    pub agents: usize,
    /// How long the workload and the nemesis run (the checks come after).
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<Fault>,
    /// Concurrent clients, each with one call in flight.
    pub clients: usize,
    /// Data dirs, agent logs and `history.jsonl` go here.
    pub dir: PathBuf,
}

impl ChaosConfig {
    pub fn validate(&self) -> Result<(), ChaosError> {
        if !(3..=7).contains(&self.agents) {
            return Err(ChaosError::Usage(format!(
                "--agents '{}': must be 3 to 7",
                self.agents
            )));
        }
        if self.clients == 0 || self.clients > 64 {
            return Err(ChaosError::Usage(format!(
                "--clients '{}': must be 1 to 64",
                self.clients
            )));
        }
        if self.dir.join("agent-1").exists() {
            return Err(ChaosError::Usage(format!(
                "--dir '{}' already holds a chaos run (agent-1/); choose an empty directory",
                self.dir.display()
            )));
        }
        if !self.agent_bin.is_file() {
            return Err(ChaosError::Usage(format!(
                "{}: no mozen-agent binary there (build it, or put it next to mozen)",
                self.agent_bin.display()
            )));
        }
        Ok(())
    }
}

/// Why a chaos run could not be carried out (as opposed to finding violations).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{code}: {0}", code = Code::Usage)]
    Usage(String),
    #[error("{code}: {0}", code = Code::ChaosSetup)]
    Setup(String),
    #[error("{code}: {0}", code = Code::ChaosNotReady)]
    NotReady(String),
    /// The run completed and found this many violations (listed in its report).
    #[error(
        "{code}: {0} violations found; see the report above",
        code = Code::ChaosViolations
    )]
    Violations(usize),
}

/// The outcome of a chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub agents: usize,
    pub faults_enabled: Vec<Fault>,
    pub duration_ms: u64,
    /// Faults injected by name (a final full-cluster restart included).
    pub faults: FaultCounts,
    pub history: Analysis,
    pub cluster: Verification,
    /// Every violation found, from the history and from the cluster.
    pub violations: Vec<String>,
    pub history_file: PathBuf,
}

impl Report {
    pub fn faults_injected(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let enabled: Vec<&str> = self.faults_enabled.iter().map(|x| x.name()).collect();
        writeln!(
            f,
            "chaos: seed {}, {} agents, {:.1} s, faults {}",
            self.seed,
            self.agents,
            self.duration_ms as f64 / 1e3,
            if enabled.is_empty() {
                "none".to_string()
            } else {
                enabled.join(",")
            }
        )?;
        let shown: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "faults injected: {} ({})",
            self.faults_injected(),
            shown.join(", ")
        )?;
        let h = &self.history;
        writeln!(
            f,
            "operations: {} invoked, {} ok, {} failed, {} indeterminate",
            h.invoked, h.ok, h.failed, h.indeterminate
        )?;
        for (code, n) in &h.failures {
            writeln!(f, "  failed with {code}: {n}")?;
        }
        let c = &self.cluster;
        writeln!(
            f,
            "checked: {} acknowledged keys via the leader and on each of {} voters",
            c.keys_checked,
            c.voters.len()
        )?;
        match (&c.digest_index, &c.digest) {
            (Some(i), Some(d)) => writeln!(
                f,
                "voters converged: applied index {i}, state digest {}",
                &d[..16.min(d.len())]
            )?,
            _ => writeln!(f, "voters did not converge")?,
        }
        writeln!(
            f,
            "requests run more than once: {} of {} in the acknowledged trees",
            c.requests_rerun, c.requests_seen
        )?;
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        write!(f, "history: {}", self.history_file.display())
    }
}

/// Runs a chaos test; see the module docs. Violations are in the report, not errors.
pub async fn run(cfg: &ChaosConfig) -> Result<Report, ChaosError> {
    cfg.validate()?;
    let started = Instant::now();
    let history_file = cfg.dir.join("history.jsonl");
    let mut cluster = LocalCluster::new(&cfg.agent_bin, &cfg.dir, cfg.agents)?;
    let history = Arc::new(
        History::new(Some(&history_file))
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", history_file.display())))?,
    );
    cluster.start_all()?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let stop = CancellationToken::new();
    let ops = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for id in 0..cfg.clients {
        clients.push(tokio::spawn(workload::client_loop(
            id,
            cluster.client(Duration::from_secs(15)),
            cfg.seed,
            ops.clone(),
            history.clone(),
            stop.clone(),
        )));
    }
    let timer = {
        let stop = stop.clone();
        let d = cfg.duration;
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        })
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let nemesis = nemesis::run(&mut cluster, &cfg.faults, &mut rng, &history, &stop).await;
    stop.cancel();
    timer.abort();
    let mut faults = match nemesis {
        Ok(f) => f,
        Err(e) => {
            cluster.kill_all().await;
            return Err(e);
        }
    };
    // Calls in flight finish (each within the call timeout) before the checks.
    for c in clients {
        let _ = c.await;
    }
    let mut violations = Vec::new();
    let recovered = cluster.wait_ready(Duration::from_secs(60)).await;
    if let Err(e) = &recovered {
        violations.push(format!("after the faults were undone: {e}"));
    }
    if recovered.is_ok() && cfg.faults.contains(&Fault::Restart) {
        // One last full-cluster restart: nothing acknowledged may be lost across it.
        let ids = cluster.ids();
        history.fault("restart-final", &ids, true);
        cluster.kill_all().await;
        cluster.start_all()?;
        history.fault("restart-final", &ids, false);
        *faults.entry("restart-final".into()).or_default() += 1;
        if let Err(e) = cluster.wait_ready(Duration::from_secs(60)).await {
            violations.push(format!("after the final full-cluster restart: {e}"));
        }
    }
    let entries = history.entries();
    let analysis = check::analyze(&entries);
    let verification = check::verify(&cluster, &analysis).await;
    cluster.kill_all().await;
    violations.extend(analysis.violations.iter().cloned());
    violations.extend(verification.violations.iter().cloned());
    Ok(Report {
        seed: cfg.seed,
        agents: cfg.agents,
        faults_enabled: cfg.faults.clone(),
        duration_ms: started.elapsed().as_millis() as u64,
        faults,
        history: analysis,
        cluster: verification,
        violations,
        history_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_and_name_the_bad_one() {
        assert_eq!(
            Fault::parse_list("kill, restart,kill").unwrap(),
            vec![Fault::Kill, Fault::Restart]
        );
        assert!(Fault::parse_list("none").unwrap().is_empty());
        let e = Fault::parse_list("kill,nuke").unwrap_err();
        assert!(e.contains("unknown fault 'nuke'"), "{e}");
    }
}
