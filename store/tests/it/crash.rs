//! Crash: a child process appends entries and prints each index once `append` has reported it
//! durable; the parent SIGKILLs it mid-stream and checks every acknowledged entry on reopen.

use crate::common::*;
use mozen_store::{Command, open};
use openraft::RaftLogReader;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Set in the child: the data dir to append into.
const CHILD_DIR: &str = "MOZEN_STORE_CRASH_CHILD_DIR";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 150;

fn event(i: u64) -> Command {
    Command::Event {
        kind: "crash-test".into(),
        node: Some(1),
        message: format!("entry {i} {}", "x".repeat((i % 200) as usize)),
        at: i,
    }
}

/// The child's role; a no-op in a normal test run.
#[test]
fn crash_child_role() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    runtime().block_on(async {
        let (mut log, _sm) = open(dir.as_ref(), &test_options()).expect("child opens the store");
        let state = log.get_log_state().await.expect("log state");
        let mut next = state.last_log_id.map_or(0, |l| l.index + 1);
        let mut out = std::io::stdout().lock();
        loop {
            // Batches of 1 to 4 entries, acknowledged as a whole.
            let n = next % 4 + 1;
            let batch: Vec<_> = (next..next + n).map(|i| entry(1, i, event(i))).collect();
            log.blocking_append(batch).await.expect("append");
            for i in next..next + n {
                writeln!(out, "ack {i}").expect("stdout");
            }
            out.flush().expect("stdout");
            next += n;
        }
    });
}

/// Runs the child until it acknowledged `ACKS_BEFORE_KILL` more entries, then SIGKILLs it.
/// Returns the highest index acknowledged.
fn run_child_and_kill(dir: &std::path::Path) -> anyhow::Result<u64> {
    let exe = std::env::current_exe()?;
    let mut child = Process::new(exe)
        .args([
            "crash::crash_child_role",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = None;
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(i) = line.strip_prefix("ack ") {
            acked = Some(i.parse::<u64>()?);
            count += 1;
            if count == ACKS_BEFORE_KILL || Instant::now() > deadline {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no final flush.
    child.kill()?;
    child.wait()?;
    acked.ok_or_else(|| anyhow::anyhow!("the child acknowledged nothing"))
}

#[test]
fn acknowledged_appends_survive_sigkill() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    for _round in 0..2 {
        let acked = run_child_and_kill(dir.path())?;
        runtime().block_on(async {
            let (mut log, _sm) = open(dir.path(), &test_options())?;
            let got = log.try_get_log_entries(0..=acked).await?;
            assert_eq!(
                got.len() as u64,
                acked + 1,
                "every acknowledged entry is there"
            );
            for (i, e) in got.iter().enumerate() {
                let i = i as u64;
                assert_eq!(e, &entry(1, i, event(i)), "entry {i} reads back intact");
            }
            let state = log.get_log_state().await?;
            assert!(state.last_log_id.is_some_and(|l| l.index >= acked));
            anyhow::Ok(())
        })?;
    }
    Ok(())
}
