//! Figures of the harness: percentiles within a run, median/min/max over runs, the printed
//! table and the JSON document.

use super::{BenchConfig, Workload};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// What one workload produced in one run. Metric names carry their unit (`_ms`, `_per_s`).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Headline figures, in display order; these enter the table.
    pub metrics: Vec<(String, f64)>,
    /// Everything else worth keeping (distributions, timelines, counts).
    pub detail: Value,
    /// Set when the workload's own check failed; the run is left out of the statistics.
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(metrics: Vec<(&str, f64)>, detail: Value) -> Outcome {
        Outcome {
            metrics: metrics
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            detail,
            error: None,
        }
    }

    pub fn failed(error: String, detail: Value) -> Outcome {
        Outcome {
            metrics: Vec::new(),
            detail,
            error: Some(error),
        }
    }

    /// One line for progress output.
    pub fn headline(&self) -> String {
        match (&self.error, self.metrics.first()) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some((k, v))) => format!("{k} = {}", fmt(*v)),
            (None, None) => "done".into(),
        }
    }

    fn to_json(&self) -> Value {
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({"metrics": metrics, "detail": self.detail, "error": self.error})
    }
}

/// One run: a fresh cluster and the workloads run on it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run: usize,
    pub startup_s: Option<f64>,
    pub results: Vec<(Workload, Outcome)>,
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
    /// The end of each agent's log when a workload failed.
    pub agent_logs: Option<Value>,
}

impl RunRecord {
    pub fn new(run: usize) -> RunRecord {
        RunRecord {
            run,
            startup_s: None,
            results: Vec::new(),
            loadavg_before: loadavg(),
            loadavg_after: None,
            agent_logs: None,
        }
    }

    pub fn push(&mut self, w: Workload, o: Outcome) {
        self.results.push((w, o));
    }

    pub fn failed(&self) -> bool {
        self.results.iter().any(|(_, o)| o.error.is_some())
    }
}

/// Everything one invocation measured.
pub struct Report {
    pub agents: usize,
    pub scale: f64,
    pub workloads: Vec<Workload>,
    pub runs: Vec<RunRecord>,
}

/// Median (mean of the two middle values for an even count), min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// The `p`-th percentile (0-100) of sorted values, interpolating linearly between the closest
/// ranks: the same definition the peers' scripts use, so p50/p99 compare like for like.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let k = (n - 1) as f64 * (p / 100.0);
            let (lo, hi) = (k.floor() as usize, k.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
        }
    }
}

/// p50, p90, p99, mean and max (ms) of per-call durations.
pub fn latency_ms(samples: &[Duration]) -> Value {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({
        "n": v.len(),
        "p50": percentile(&v, 50.0),
        "p90": percentile(&v, 90.0),
        "p99": percentile(&v, 99.0),
        "mean": mean,
        "min": v.first(),
        "max": v.last(),
    })
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some((utime + stime) / 100.0)
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1_048_576.0);
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_gib": mem_gib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Formats a figure with 3-4 significant digits.
pub fn fmt(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "-".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl Report {
    pub fn new(cfg: &BenchConfig) -> Report {
        Report {
            agents: cfg.agents,
            scale: cfg.scale,
            workloads: cfg.workloads.clone(),
            runs: Vec::new(),
        }
    }

    /// (workload, metric) rows in workload order, each with its values over successful runs.
    fn rows(&self) -> Vec<(Workload, String, Vec<f64>)> {
        let mut rows: Vec<(Workload, String, Vec<f64>)> = Vec::new();
        for &w in &self.workloads {
            for rec in &self.runs {
                for (rw, o) in &rec.results {
                    if *rw != w || o.error.is_some() {
                        continue;
                    }
                    for (k, v) in &o.metrics {
                        match rows.iter_mut().find(|(rw, rk, _)| *rw == w && rk == k) {
                            Some(row) => row.2.push(*v),
                            None => rows.push((w, k.clone(), vec![*v])),
                        }
                    }
                }
            }
        }
        rows
    }

    /// "W2 run 1: error" for every failed workload run.
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.results.iter().filter_map(move |(w, o)| {
                    o.error
                        .as_ref()
                        .map(|e| format!("{} run {}: {e}", w.name(), r.run))
                })
            })
            .collect()
    }

    /// The text table: one row per workload metric, median [min, max] over runs.
    pub fn table(&self) -> String {
        let mut out = format!(
            "mozen bench: {} agents, {} run(s), scale {}, {} build\n",
            self.agents,
            self.runs.len(),
            self.scale,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        out.push_str(&format!(
            "{:<9} {:<28} {:>10} {:>10} {:>10} {:>5}\n",
            "WORKLOAD", "METRIC", "MEDIAN", "MIN", "MAX", "RUNS"
        ));
        for (w, k, values) in self.rows() {
            if let Some(s) = Spread::of(&values) {
                out.push_str(&format!(
                    "{:<9} {:<28} {:>10} {:>10} {:>10} {:>5}\n",
                    w.name(),
                    k,
                    fmt(s.median),
                    fmt(s.min),
                    fmt(s.max),
                    s.n
                ));
            }
        }
        for f in self.failures() {
            out.push_str(&format!("FAILED {f}\n"));
        }
        out
    }

    /// The whole report: machine, settings, every run and the summary.
    pub fn to_json(&self) -> Value {
        let summary: Vec<Value> = self
            .rows()
            .into_iter()
            .filter_map(|(w, k, values)| {
                Spread::of(&values).map(|s| {
                    json!({"workload": w.name(), "metric": k, "median": s.median, "min": s.min, "max": s.max, "runs": s.n})
                })
            })
            .collect();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let workloads: Map<String, Value> = r
                    .results
                    .iter()
                    .map(|(w, o)| (w.name().to_string(), o.to_json()))
                    .collect();
                json!({
                    "run": r.run,
                    "startup_s": r.startup_s,
                    "loadavg_before": r.loadavg_before,
                    "loadavg_after": r.loadavg_after,
                    "workloads": workloads,
                    "agent_logs": r.agent_logs,
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "machine": machine(),
            "settings": {
                "agents": self.agents,
                "voters": self.agents,
                "scale": self.scale,
                "workloads": self.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
                "durability": "sled flush before every log append is acknowledged; vote flushed before it is returned",
            },
            "summary": summary,
            "runs": runs,
            "failures": self.failures(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_closest_ranks() {
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert!((percentile(&v, 90.0) - 4.6).abs() < 1e-9);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn spread_takes_the_mean_of_the_middle_pair() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }
}
