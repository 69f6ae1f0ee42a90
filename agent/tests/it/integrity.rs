//! Damaged data dirs with real agents: every kind of damage stops the agent with exit code 3
//! and a message naming it; a damaged voter never helps elect a leader that lacks acknowledged
//! values; `mozen-agent repair` brings the member back with everything.

use crate::harness::*;
use mozen_model::{RequestKey, canonical_args};
use mozen_proto as pb;
use serde_json::json;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a damaged agent may take to refuse (it exits as soon as its store is opened).
const REFUSE_WITHIN: Duration = Duration::from_secs(30);

fn value_args(i: u64) -> serde_json::Value {
    json!({ "integrity": i })
}

/// Calls `echo` for every `i` in `range`: each answer is an acknowledged, memoized value.
async fn write_values(client: &mozen_agent::Client, range: std::ops::Range<u64>) {
    for i in range {
        let v: serde_json::Value = client.call("echo", value_args(i)).await.unwrap();
        assert_eq!(v, value_args(i));
    }
}

/// The values of `range` that `client` does not find (answered `MZ-UNKNOWN-REQUEST`).
async fn missing_values(client: &mozen_agent::Client, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut missing = Vec::new();
    for i in range {
        let key = RequestKey::of("echo", &canonical_args(&value_args(i))).to_hex();
        let get = pb::GetRequest {
            key,
            wait: false,
            timeout_ms: 0,
        };
        let r = client
            .rpc(|mut c| {
                let g = get.clone();
                async move { c.get(g).await }
            })
            .await;
        match r {
            Ok(reply) if reply.state == "done" => {}
            Ok(reply) => panic!("value {i}: state {}", reply.state),
            Err(mozen_agent::ClientError::Rejected { code, .. })
                if code == "MZ-UNKNOWN-REQUEST" =>
            {
                missing.push(i)
            }
            Err(e) => panic!("value {i}: {e}"),
        }
    }
    missing
}

fn store_file(agent: &Agent) -> std::path::PathBuf {
    agent.dir.join("db").join("db")
}

/// Overwrites `len` bytes at `at` with pseudo-random bytes.
fn scribble(path: &Path, at: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ at;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
}

fn len_of(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A three-voter cluster holding `n` acknowledged values, with agent 3 then killed.
async fn cluster_with_values(n: u64, extra: &[&str]) -> Cluster {
    let mut c = Cluster::start(3, extra);
    c.ready(3).await;
    write_values(&c.client(), 0..n).await;
    // Agent 3 has applied everything before it goes.
    let target = c.status().await.unwrap().applied_index;
    let a3 = c.by_id(3).client();
    eventually(Duration::from_secs(20), "agent 3 caught up", || async {
        status_via(a3.clone())
            .await
            .is_some_and(|s| s.applied_index >= target)
    })
    .await;
    c.agent(3).kill();
    c
}

fn assert_refused(code: Option<i32>, stderr: &str, names: &[&str]) {
    assert_eq!(code, Some(3), "exit code; stderr:\n{stderr}");
    assert!(stderr.contains("MZ-DAMAGED"), "{stderr}");
    assert!(stderr.contains("mozen-agent repair"), "{stderr}");
    for n in names {
        assert!(stderr.contains(n), "stderr should name {n:?}:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_in_the_middle_of_the_store_file_stops_the_agent_naming_it() {
    let mut c = cluster_with_values(120, &[]).await;
    let file = store_file(c.by_id(3));
    let len = len_of(&file);
    scribble(&file, len / 2, 4096);
    let (code, stderr) = c.agent(3).run_to_exit(REFUSE_WITHIN);
    assert_refused(code, &stderr, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_store_file_stops_the_agent_naming_what_was_lost() {
    let mut c = cluster_with_values(120, &[]).await;
    let file = store_file(c.by_id(3));
    let len = len_of(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len * 6 / 10)
        .unwrap();
    let (code, stderr) = c.agent(3).run_to_exit(REFUSE_WITHIN);
    assert_refused(code, &stderr, &["acknowledged"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zeroed_vote_record_stops_the_agent_naming_the_copy() {
    let mut c = cluster_with_values(5, &[]).await;
    let mark = c.by_id(3).dir.join("watermark");
    let mut bytes = std::fs::read(&mark).unwrap();
    bytes[..512].fill(0);
    std::fs::write(&mark, &bytes).unwrap();
    let (code, stderr) = c.agent(3).run_to_exit(REFUSE_WITHIN);
    assert_refused(code, &stderr, &["watermark", "offset 0", "zeroes"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_snapshot_stops_the_agent_naming_the_file() {
    let mut c = cluster_with_values(60, &["--snapshot-every", "20"]).await;
    let snaps: Vec<_> = std::fs::read_dir(c.by_id(3).dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "one snapshot: {snaps:?}");
    let len = len_of(&snaps[0]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&snaps[0])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let name = snaps[0].file_name().unwrap().to_string_lossy().to_string();
    let (code, stderr) = c.agent(3).run_to_exit(REFUSE_WITHIN);
    assert_refused(code, &stderr, &["snapshots", &name]);
}

/// The scenario: voter 3 lags, voter 2 holds acknowledged values voter 3 lacks and
/// its store is damaged, voter 1 is down. Voters 2 and 3 must not form a cluster without
/// them; with voter 1 back everything is there; repair brings voter 2 back as a voter.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_voter_and_a_lagging_one_elect_no_leader_without_acknowledged_values() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    write_values(&c.client(), 0..50).await;
    c.agent(3).kill();
    let one_two = c.client_of(&[1, 2]);
    write_values(&one_two, 50..250).await;
    c.agent(2).kill();
    let file = store_file(c.by_id(2));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len_of(&file) / 2)
        .unwrap();
    c.agent(1).kill();

    // Voter 2 refuses; voter 3 alone has no quorum.
    let (code, stderr) = c.agent(2).run_to_exit(REFUSE_WITHIN);
    assert_refused(code, &stderr, &[]);
    c.agent(3).start();
    let three = c.by_id(3).client();
    eventually(Duration::from_secs(20), "agent 3 answers", || async {
        status_via(three.clone()).await.is_some()
    })
    .await;
    // Watch voter 3 for three election timeouts and more: it never leads.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let s = status_via(three.clone()).await.unwrap();
        assert_ne!(s.leader_id, Some(3), "voter 3 led without a quorum");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Voter 1 back: a leader with every acknowledged value.
    c.agent(1).start();
    let leader = c.leader().await;
    assert_ne!(leader, 2);
    let both = c.client_of(&[1, 3]);
    assert_eq!(missing_values(&both, 0..250).await, Vec::<u64>::new());

    // Repair voter 2: moved aside, rejoined, promoted back once caught up.
    let log = c.agent(2).start_with(&["repair"]);
    let two = c.by_id(2).client();
    let target = c.status().await.unwrap().applied_index;
    eventually(Duration::from_secs(60), "agent 2 repaired", || async {
        status_via(two.clone())
            .await
            .is_some_and(|s| s.applied_index >= target && s.voters.iter().any(|v| v.id == 2))
    })
    .await;
    let repaired_log = std::fs::read_to_string(&log).unwrap();
    assert!(repaired_log.contains("moved aside"), "{repaired_log}");
    let aside = std::fs::read_dir(c.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("n2.damaged-"));
    assert!(aside, "the damaged dir is kept beside the new one");
    assert_eq!(missing_values(&two, 0..250).await, Vec::<u64>::new());
}

/// A healthy data dir is not repaired: `repair` refuses and leaves it as it was.
#[tokio::test(flavor = "multi_thread")]
async fn repair_of_a_healthy_dir_is_refused() {
    let mut c = cluster_with_values(3, &[]).await;
    let log = c.agent(3).start_with(&["repair"]);
    let deadline = Instant::now() + REFUSE_WITHIN;
    let status = loop {
        if let Some(s) = c.agent(3).child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "repair did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.agent(3).child = None;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not damaged"), "{stderr}");
    // It still starts normally and is a voter.
    c.agent(3).start();
    c.ready(3).await;
}
