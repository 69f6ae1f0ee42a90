//! `mozen plan`: measure a job's costs and say whether distributing it is worth it.

use super::cost::{CostModel, Estimate};
use super::run::{JobError, Prepared, measure};
use crate::client::Client;
use serde::Serialize;

/// Nodes added in the "what if" rows of a plan.
pub const MORE_NODES: [usize; 3] = [5, 20, 500];

/// A job's measured costs and estimates.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub lines: u64,
    pub bytes: u64,
    pub per_line_us: f64,
    pub overhead_ms: f64,
    pub max_rate: f64,
    /// MB/s at which shipped input is stored in the cluster (0: the agents read the files).
    pub ship_mb_per_s: f64,
    pub workers: usize,
    /// Workers each node adds (the current cluster's average).
    pub workers_per_node: f64,
    pub nodes: usize,
    pub local_seconds: f64,
    /// (label, estimate): the current cluster, then with more nodes.
    pub cluster: Vec<(String, EstimateRow)>,
    pub verdict: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct EstimateRow {
    pub workers: usize,
    pub lines_per_slice: u64,
    pub slices: u64,
    pub seconds: f64,
}

impl From<Estimate> for EstimateRow {
    fn from(e: Estimate) -> Self {
        EstimateRow {
            workers: e.workers,
            lines_per_slice: e.lines_per_slice,
            slices: e.slices,
            seconds: e.seconds,
        }
    }
}

/// Builds the plan from a measured model (pure: the benchmark and tests reuse it).
pub fn plan_from(model: &CostModel, lines: u64, bytes: u64, nodes: usize, fan_in: usize) -> Plan {
    let nodes = nodes.max(1);
    let per_node = model.workers as f64 / nodes as f64;
    let local = model.local_seconds(lines);
    let mut cluster = vec![(
        format!("current cluster ({nodes} node(s))"),
        model.cluster(lines, model.workers, fan_in).into(),
    )];
    for more in MORE_NODES {
        let w = model.workers + (per_node * more as f64).round() as usize;
        cluster.push((
            format!("+{more} nodes"),
            model.cluster(lines, w, fan_in).into(),
        ));
    }
    let now: EstimateRow = cluster[0].1;
    let verdict = if now.seconds < local * 0.8 {
        format!(
            "worth distributing: the cluster should take {:.1}s against {:.1}s locally ({:.1}x faster)",
            now.seconds,
            local,
            local / now.seconds
        )
    } else {
        let why = if model.ship_seconds(lines) > local * 0.5 {
            "shipping the input into the cluster takes longer than the work (ship = false lets the agents read it from a shared filesystem)"
        } else if model.overhead * now.slices as f64 > local * 0.5
            || now.slices as f64 / model.max_rate > local
        {
            "the per-request overhead is larger than the work"
        } else {
            "the cluster has no more usable cores than this machine"
        };
        format!(
            "not worth distributing: run it locally ({:.1}s) rather than on the cluster ({:.1}s); {why}",
            local, now.seconds
        )
    };
    Plan {
        lines,
        bytes,
        per_line_us: model.per_line * 1e6,
        overhead_ms: model.overhead * 1e3,
        max_rate: model.max_rate,
        ship_mb_per_s: if model.ship_per_byte > 0.0 {
            1e-6 / model.ship_per_byte
        } else {
            0.0
        },
        workers: model.workers,
        workers_per_node: per_node,
        nodes,
        local_seconds: local,
        cluster,
        verdict,
    }
}

/// Measures the job on the cluster and plans it.
pub async fn plan(job: &Prepared, client: &Client) -> Result<Plan, JobError> {
    let model = measure(job, client).await?;
    let nodes = client
        .rpc(|mut c| async move { c.nodes(mozen_proto::NodesRequest {}).await })
        .await?
        .nodes
        .iter()
        .filter(|n| n.state == "active")
        .count();
    Ok(plan_from(
        &model,
        job.lines(),
        job.bytes(),
        nodes,
        job.spec.fan_in,
    ))
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "input        {} lines, {:.1} MB",
            self.lines,
            self.bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "map cost     {:.3} us/line (sample slice)",
            self.per_line_us
        )?;
        writeln!(
            f,
            "overhead     {:.1} ms/request, {:.0} requests/s at most",
            self.overhead_ms, self.max_rate
        )?;
        if self.ship_mb_per_s > 0.0 {
            writeln!(
                f,
                "shipping     {:.1} MB/s into the cluster's log",
                self.ship_mb_per_s
            )?;
        }
        writeln!(
            f,
            "workers      {} free ({} node(s))",
            self.workers, self.nodes
        )?;
        writeln!(
            f,
            "{:<28} {:>8} {:>8} {:>12} {:>10}",
            "WHERE", "WORKERS", "SLICES", "LINES/SLICE", "TIME"
        )?;
        writeln!(
            f,
            "{:<28} {:>8} {:>8} {:>12} {:>9.1}s",
            "locally (1 core)", 1, 1, self.lines, self.local_seconds
        )?;
        for (label, e) in &self.cluster {
            writeln!(
                f,
                "{label:<28} {:>8} {:>8} {:>12} {:>9.1}s",
                e.workers, e.slices, e.lines_per_slice, e.seconds
            )?;
        }
        write!(f, "{}", self.verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_model() {
        let heavy = CostModel {
            per_line: 1e-4,
            overhead: 0.02,
            max_rate: 300.0,
            workers: 6,
            bytes_per_line: 50.0,
            ship_per_byte: 0.0,
        };
        let p = plan_from(&heavy, 1_000_000, 50_000_000, 3, 16);
        assert!(p.verdict.starts_with("worth distributing"), "{}", p.verdict);
        assert_eq!(p.cluster.len(), 4);
        assert!(p.cluster[2].1.seconds < p.cluster[0].1.seconds);
        let light = CostModel {
            per_line: 1e-8,
            ..heavy
        };
        let p = plan_from(&light, 1000, 50_000, 3, 16);
        assert!(
            p.verdict.starts_with("not worth distributing"),
            "{}",
            p.verdict
        );
        assert!(p.to_string().contains("+500 nodes"));
        // Shipping at 1 MB/s: 50 MB take 50 s whatever the workers, more than the 100 s of
        // work on one core spread over six.
        let shipped = CostModel {
            ship_per_byte: 1e-6,
            ..heavy
        };
        let p = plan_from(&shipped, 1_000_000, 50_000_000, 3, 16);
        let (now, more) = (p.cluster[0].1.seconds, p.cluster[3].1.seconds);
        assert!(now > 50.0 && more > 50.0, "{now} {more}");
        assert!(p.to_string().contains("shipping     1.0 MB/s"));
    }
}
