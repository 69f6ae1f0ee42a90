//! A short seeded chaos run in the default suite: real agents killed, paused, cut off and
//! restarted under a workload, then the history and the healed cluster are checked (see
//! `mozen_cli::chaos` and docs/reliability.md). Longer runs: `mozen chaos --duration 10m`.

use crate::harness::*;
use mozen_cli::chaos::{self, ChaosConfig, Fault};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn chaos_short_seeded_run_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ChaosConfig {
        agent_bin: agent_bin().into(),
        agents: 3,
        duration: Duration::from_secs(20),
        seed: 20261123,
        faults: Fault::ALL.to_vec(),
        clients: 3,
        dir: dir.path().to_path_buf(),
    };
    let report = chaos::run(&cfg).await.expect("chaos run completes");
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.faults_injected() >= 3, "{report}");
    assert!(report.history.ok > 0, "{report}");
    assert!(report.cluster.keys_checked > 0, "{report}");
    assert!(report.faults.contains_key("restart-final"), "{report}");
}

#[test]
fn chaos_cli_names_a_bad_flag() {
    let out = std::process::Command::new(cli_bin())
        .args(["chaos", "--faults", "kill,flood"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown fault 'flood'"), "{err}");
    let out = std::process::Command::new(cli_bin())
        .args(["chaos", "--agents", "9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agents '9'"));
    // A directory that already holds a run is not reused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("agent-1")).unwrap();
    let out = std::process::Command::new(cli_bin())
        .args(["chaos", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a chaos run"));
}
