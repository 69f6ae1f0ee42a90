//! `mozen bench` at a tiny scale: every workload runs once on real agents and reports sane
//! figures in its table and JSON. Speed is what the harness reports, never what a test checks.

use crate::harness::{agent_bin, cli_bin};
use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("bench");
    if !args.contains(&"--agent-bin") {
        cmd.args(["--agent-bin", agent_bin()]);
    }
    cmd.args(args).output().unwrap()
}

/// The metric `name` of `workload` in the only run.
fn metric(report: &Value, workload: &str, name: &str) -> f64 {
    let w = &report["runs"][0]["workloads"][workload];
    assert!(w["error"].is_null(), "{workload} failed: {w}");
    w["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{workload} has no metric {name}: {w}"))
}

#[test]
fn smoke_run_of_every_workload_reports_sane_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = bench(&[
        "--workload",
        "all",
        "--runs",
        "1",
        "--scale",
        "0.01",
        "--batch-mb",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mozen bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in ["W1", "W2", "W3", "memo", "failover", "scale", "batch"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(w)),
            "no {w} row in the table:\n{stdout}"
        );
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["settings"]["agents"], 3);
    assert_eq!(r["failures"].as_array().map(Vec::len), Some(0), "{r}");

    assert!(metric(&r, "W1", "calls_per_s") > 0.0);
    let w = &r["runs"][0]["workloads"];
    assert_eq!(w["W1"]["detail"]["calls"], 100);
    assert_eq!(w["W1"]["detail"]["failed"], 0);
    // The calls took log entries; the ratio is computed from them.
    let entries = w["W1"]["detail"]["log_entries"].as_u64().unwrap();
    assert!(entries >= 1, "{entries} log entries for 100 calls");
    let per_entry = metric(&r, "W1", "calls_per_log_entry");
    assert!(
        (per_entry - 100.0 / entries as f64).abs() < 1e-9,
        "{per_entry}"
    );
    for l in ["W2", "memo"] {
        let (p50, p99) = (metric(&r, l, "p50_ms"), metric(&r, l, "p99_ms"));
        assert!(0.0 < p50 && p50 <= p99, "{l}: p50 {p50} p99 {p99}");
        assert_eq!(w[l]["detail"]["latency_ms"]["n"], 10, "{l}");
    }
    assert!(metric(&r, "W3", "warm_ms") > 0.0 && metric(&r, "W3", "cold_ms") > 0.0);
    assert_eq!(w["W3"]["detail"]["requests_per_tree"], 156);

    assert_eq!(metric(&r, "failover", "lost_calls"), 0.0);
    assert!(metric(&r, "failover", "recovery_ms") >= 0.0);
    let f = &w["failover"]["detail"];
    assert_ne!(f["killed_leader"], f["new_leader"], "{f}");
    assert!(f["new_leader"].is_u64(), "{f}");
    let timeline: u64 = f["completions_per_100ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(timeline, 100);

    for n in [3, 50, 500] {
        assert!(metric(&r, "scale", &format!("assign_per_s_{n}_nodes")) > 0.0);
        assert!(metric(&r, "scale", &format!("sched_cpu_us_per_assign_{n}_nodes")) > 0.0);
    }
    assert!(metric(&r, "batch", "mb_per_s") > 0.0 && metric(&r, "batch", "local_mb_per_s") > 0.0);
    assert!(w["batch"]["detail"]["slices"].as_u64().unwrap() >= 1);

    let summary = r["summary"].as_array().unwrap();
    for s in summary {
        assert_eq!(s["runs"], 1, "{s}");
        assert!(s["min"].as_f64() <= s["median"].as_f64(), "{s}");
        assert!(s["median"].as_f64() <= s["max"].as_f64(), "{s}");
    }
}

/// `saturate` is asked for by name (it is not in `all`) and reports every phase's figures:
/// the idle client, then elections, heartbeat ages, the steady client's latency, re-executions
/// and finished calls for the built-in `spin` and the naive `fault.spin_inline` at 1x and 3x
/// the cores per agent.
#[test]
fn saturate_reports_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = bench(&[
        "--workload",
        "saturate",
        "--runs",
        "1",
        "--scale",
        "0.02",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "mozen bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let idle = metric(&r, "saturate", "idle_noop_p50_ms");
    assert!(idle > 0.0, "{idle}");
    for phase in ["spin_1x", "spin_3x", "naive_1x", "naive_3x"] {
        let (p50, p99) = (
            metric(&r, "saturate", &format!("{phase}_noop_p50_ms")),
            metric(&r, "saturate", &format!("{phase}_noop_p99_ms")),
        );
        assert!(0.0 < p50 && p50 <= p99, "{phase}: p50 {p50} p99 {p99}");
        assert!(
            metric(&r, "saturate", &format!("{phase}_calls")) >= 1.0,
            "{phase}"
        );
        for m in ["elections", "max_heartbeat_age_ms", "reexecuted"] {
            assert!(
                metric(&r, "saturate", &format!("{phase}_{m}")) >= 0.0,
                "{phase} {m}"
            );
        }
    }
    let w = &r["runs"][0]["workloads"]["saturate"]["detail"];
    let cores = w["cores"].as_u64().unwrap();
    assert_eq!(
        w["naive_3x"]["in_flight"].as_u64(),
        Some(3 * cores * 3),
        "{w}"
    );
    assert_eq!(w["naive_3x"]["function"], "fault.spin_inline");
}

#[test]
fn bad_flags_are_usage_errors() {
    for (args, says) in [
        (&["--workload", "W9"][..], "unknown workload 'W9'"),
        (&["--runs", "0"][..], "--runs 0"),
        (&["--scale", "0"][..], "--scale 0"),
        (
            &["--agents", "2", "--workload", "failover"][..],
            "at least 3 agents",
        ),
        (
            &["--agent-bin", "/nonexistent/mozen-agent"][..],
            "no such file",
        ),
    ] {
        let out = bench(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
