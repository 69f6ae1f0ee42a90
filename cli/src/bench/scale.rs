//! scale: the real scheduler (`mozen_scheduler::plan_on`) and the real state machine
//! (`ClusterState::apply`) driven in one process with 3, 50 and 500 registered nodes, without
//! Raft, sled or the network (their costs are in W1 and the store's benchmarks).
//!
//! That process is the agent binary (`mozen-agent bench-scale ASSIGNMENTS`, see
//! `mozen_agent::bench_scale`): the measured code is the daemon's, which the CLI does not
//! compile. It prints the figures as JSON; this module turns them into the workload's outcome.
//! Reported per node count: assignments per second of the whole loop, and the CPU time of the
//! scheduling pass per assignment.

use super::BenchConfig;
use super::report::Outcome;
use serde_json::{Value, json};

/// The agent binary's first argument that runs the measurement.
const COMMAND: &str = "bench-scale";

/// Runs the measurement in the agent binary, `cfg.count(20_000, 100)` assignments per node
/// count.
pub async fn run(cfg: &BenchConfig) -> Outcome {
    let assignments = cfg.count(20_000, 100);
    let out = tokio::process::Command::new(&cfg.agent_bin)
        .args([COMMAND, &assignments.to_string()])
        .output()
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let bin = cfg.agent_bin.display();
            return Outcome::failed(format!("cannot run {bin} {COMMAND}: {e}"), json!({}));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Outcome::failed(err, json!({}));
    }
    match parse(&out.stdout) {
        Ok((metrics, detail)) => Outcome::ok(
            metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
            detail,
        ),
        Err(e) => Outcome::failed(format!("{COMMAND}: {e}"), json!({})),
    }
}

/// The metrics (in display order) and the detail of the agent's figures.
fn parse(stdout: &[u8]) -> Result<(Vec<(String, f64)>, Value), String> {
    let v: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("unreadable figures: {e}"))?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or("no metrics in the figures")?
        .iter()
        .map(|m| match (m[0].as_str(), m[1].as_f64()) {
            (Some(k), Some(x)) => Ok((k.to_string(), x)),
            // A ratio of two empty measurements is not a number, which JSON writes as null.
            (Some(k), None) if m[1].is_null() => Ok((k.to_string(), f64::NAN)),
            _ => Err(format!("a metric is not [name, number]: {m}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((metrics, v["detail"].clone()))
}
