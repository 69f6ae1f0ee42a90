//! An agent whose Raft core dies exits with code 4 and says why; a panicking user function
//! fails only its call (issue 28).

use crate::harness::*;
use mozen_agent::client::{CallOptions, ClientError};
use mozen_agent::network::PAYLOAD_VERSION;
use mozen_proto as pb;
use mozen_store::{Command, Entry, LogId, RaftNode, StoreOptions, TypeConfig, Vote};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The exit code of an agent whose Raft core or essential task died.
const EXIT_DIED: i32 = mozen_agent::builder::EXIT_DIED as i32;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Writes the data dir of member 2 of the voters {1, 2} as it stood after leader 1 of term 1
/// wrote entries 0..=`last` and committed up to `committed`, through the store's own API.
async fn prepare_member(dir: &Path, last: u64, committed: u64, addrs: [&str; 2]) {
    {
        let (mut log, sm) = mozen_store::open(dir, &StoreOptions::default()).unwrap();
        log.write_identity(2).unwrap();
        let voters = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([
                (
                    1,
                    RaftNode {
                        addr: addrs[0].into(),
                    },
                ),
                (
                    2,
                    RaftNode {
                        addr: addrs[1].into(),
                    },
                ),
            ]),
        );
        let mut entries = vec![Entry {
            log_id: log_id(1, 0),
            payload: EntryPayload::Membership(voters),
        }];
        entries.extend((1..=last).map(|i| Entry {
            log_id: log_id(1, i),
            payload: EntryPayload::Normal(Command::Event {
                kind: "test".into(),
                node: None,
                message: format!("entry {i}"),
                at: i,
            }),
        }));
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, committed)))
            .await
            .unwrap();
        log.flush().unwrap();
        drop((log, sm));
    }
}

/// Agent 2 of the voters {1, 2}, with data dir `n2` under `root` (not started). Agent 1 is
/// never started: its address is held by the returned socket, bound and not listening, so
/// that no other test's agent can take it and answer.
fn member_two(root: &Path, extra: &[&str]) -> (Agent, String, tokio::net::TcpSocket) {
    let silent = tokio::net::TcpSocket::new_v4().unwrap();
    silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let leader_addr = silent.local_addr().unwrap().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent {
        id: 2,
        addr,
        dir: root.join("n2"),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        child: None,
        peers: format!("1@{leader_addr}"),
        transport: Default::default(),
    };
    (agent, leader_addr, silent)
}

/// Waits up to `limit` for the agent's process to exit; panics naming `why` otherwise.
async fn exit_within(agent: &mut Agent, limit: Duration, why: &str) -> ExitStatus {
    let child = agent.child.as_mut().expect("running");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            agent.child = None;
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "agent {} still running {limit:?} after {why}:\n{}",
            agent.id,
            agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces the agent's fault file in one step.
fn write_fault_file(agent: &Agent, text: &str) {
    let path = agent.fault_file();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_refusing_a_leader_that_lost_committed_entries_exits_with_code_4() {
    let root = tempfile::tempdir().unwrap();
    let (mut member, leader_addr, _silent) = member_two(root.path(), &[]);
    prepare_member(&member.dir, 20, 20, [&leader_addr, &member.addr]).await;
    member.start();
    eventually(Duration::from_secs(20), "agent 2 answering", || async {
        member.status().await.is_some()
    })
    .await;

    // The test plays leader 1 in a later term, having lost entries 11..=20 (which member 2
    // holds committed): its log goes on from 10 with an entry of its own term, committed.
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1000, 1),
        prev_log_id: Some(log_id(1, 10)),
        entries: vec![Entry {
            log_id: log_id(1000, 11),
            payload: EntryPayload::Blank,
        }],
        leader_commit: Some(log_id(1000, 11)),
    };
    let payload = pb::RaftPayload {
        version: PAYLOAD_VERSION,
        data: postcard::to_allocvec(&req).unwrap(),
    };
    let mut raft = pb::raft_client::RaftClient::connect(format!("http://{}", member.addr))
        .await
        .expect("connect to agent 2");
    // The answer does not matter: the member stops, and may be gone before it answers.
    let _ = tokio::time::timeout(Duration::from_secs(10), raft.append_entries(payload)).await;

    let status = exit_within(
        &mut member,
        Duration::from_secs(20),
        "the conflicting append",
    )
    .await;
    let log = Agent::stderr(&member);
    assert_eq!(
        status.code(),
        Some(EXIT_DIED),
        "exit status {status}:\n{log}"
    );
    assert!(
        log.contains("MZ-RAFT-CORE") && log.contains("refusing to delete committed log entries"),
        "stderr names the cause:\n{log}"
    );
    assert!(!log.contains("panicked at"), "no panic:\n{log}");

    // The committed entries are still there: the member refused, it did not follow.
    let (mut kept_log, _sm) = mozen_store::open(&member.dir, &StoreOptions::default()).unwrap();
    let kept = openraft::RaftLogReader::try_get_log_entries(&mut kept_log, 11..=20)
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        (11..=20).map(|i| log_id(1, i)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_committed_past_its_log_end_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let (mut member, leader_addr, _silent) = member_two(root.path(), &[]);
    prepare_member(&member.dir, 10, 20, [&leader_addr, &member.addr]).await;
    member.start();
    let status = exit_within(&mut member, Duration::from_secs(20), "starting").await;
    let log = Agent::stderr(&member);
    assert!(
        matches!(status.code(), Some(3) | Some(EXIT_DIED)),
        "a damaged data dir or a Raft core that cannot start: {status}:\n{log}"
    );
    assert!(log.contains("MZ-"), "an error code:\n{log}");
    assert!(
        log.contains("20") && log.contains("log"),
        "the message names the committed index the log lacks:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_raft_core_ends_the_agent_with_code_4() {
    let mut c = Cluster::new(1, &["--voters", "1"]).with_fault_control();
    c.agent(1).start();
    c.ready(1).await;
    write_fault_file(c.by_id(1), "panic-raft-core");
    let agent = c.agent(1);
    let status = exit_within(agent, Duration::from_secs(20), "the core panicked").await;
    let log = agent.stderr();
    assert_eq!(
        status.code(),
        Some(EXIT_DIED),
        "exit status {status}:\n{log}"
    );
    assert!(
        log.contains("panic: fault injection: the Raft core panics"),
        "the panic hook logged the panic:\n{log}"
    );
    assert!(
        log.contains("agent/src/faults.rs:"),
        "with its location:\n{log}"
    );
    assert!(
        log.contains("MZ-RAFT-CORE: the Raft core stopped: it panicked"),
        "the agent names the cause:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_function_fails_its_call_and_the_agent_goes_on() {
    let mut c = Cluster::new(1, &["--voters", "1"]).with_fault_control();
    c.agent(1).start();
    c.ready(1).await;
    let client = c.client();
    match client
        .call_json("fault.panic", json!("boom 7"), &CallOptions::default())
        .await
    {
        Err(ClientError::Task(e)) => {
            assert_eq!(e.code, "MZ-FUNCTION-FAILED");
            assert!(
                e.message.contains("fault.panic panicked on node 1: boom 7"),
                "{}",
                e.message
            );
        }
        other => panic!("expected the call to fail, got {other:?}"),
    }
    assert_eq!(client.call::<_, Value>("echo", 5).await.unwrap(), json!(5));
    let agent = c.agent(1);
    assert!(
        agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the agent still runs"
    );
    let log = agent.stderr();
    assert!(log.contains("panic: boom 7"), "the panic is logged:\n{log}");
    assert!(
        !log.contains("MZ-TASK-DIED") && !log.contains("MZ-RAFT-CORE"),
        "{log}"
    );
    let status = agent.terminate();
    assert!(status.success(), "a clean stop after it: {status}");
}
