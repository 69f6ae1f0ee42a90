use mozen_model::{NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RetryPolicy};
use mozen_store::*;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry as RaftEntry, EntryPayload, LogId as RaftLogId, RaftLogReader,
    RaftSnapshotBuilder,
};
use std::collections::BTreeMap;

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("n{id}"),
        addr: format!("127.0.0.1:{}", 7000 + id),
        cpus: 2,
        memory_bytes: 4 << 30,
        slots: 4,
        state: NodeState::Active,
        role: NodeRole::Voter,
        labels: BTreeMap::new(),
    }
}

fn key(i: u64) -> RequestKey {
    RequestKey::of("echo", format!("[{i}]").as_bytes())
}

/// A realistic history: nodes, submits, assignments, completions.
pub fn history(n: u64) -> Vec<Command> {
    let mut cmds = vec![
        Command::RegisterNode {
            node: node(1),
            at: 1,
        },
        Command::RegisterNode {
            node: node(2),
            at: 1,
        },
    ];
    for i in 0..n {
        let nr = NewRequest {
            key: key(i),
            function: "echo".into(),
            args: format!("[{i}]").into_bytes(),
            parent: None,
            priority: 0,
            retry: RetryPolicy::default(),
            no_cache: false,
        };
        cmds.push(Command::Submit {
            requests: vec![nr],
            at: 10 + i,
        });
        cmds.push(Command::Assign {
            assignments: vec![Assignment {
                key: key(i),
                node: 1 + i % 2,
                attempt: 1,
            }],
            at: 11 + i,
        });
        cmds.push(Command::Complete {
            completions: vec![Completion {
                key: key(i),
                node: 1 + i % 2,
                attempt: 1,
                outcome: Outcome::Value(format!("[{i}]").into_bytes()),
                duration_ms: 1,
            }],
            at: 12 + i,
        });
    }
    cmds
}

fn entry(index: u64, cmd: Command) -> Entry {
    RaftEntry {
        log_id: RaftLogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.unwrap();
}

#[tokio::test]
async fn reopen_gives_identical_state_log_and_vote() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = history(200);
    let (digest, vote, log_before, outcome) = {
        let (mut log, mut sm) = open(dir.path(), &StoreOptions::default()).unwrap();
        let vote = Vote::new(3, 1);
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<Entry> = cmds
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect();
        append(&mut log, entries.clone()).await;
        // Apply half, snapshot, apply the rest: restart must not need the log before the snapshot.
        let half = entries.len() / 2;
        sm.apply(entries[..half].to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(entries[half..].to_vec()).await.unwrap();
        log.save_committed(Some(entries.last().unwrap().log_id))
            .await
            .unwrap();
        let digest = sm.shared().read().unwrap().digest();
        let logs = log.try_get_log_entries(0..).await.unwrap();
        (digest, vote, logs, sm.outcome(&key(7)).unwrap())
    };
    let (mut log, mut sm) = open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.try_get_log_entries(0..).await.unwrap(), log_before);
    // The state machine starts from the snapshot; openraft re-applies up to `committed`.
    let (applied, _) = sm.applied_state().await.unwrap();
    let committed = log.read_committed().await.unwrap().unwrap();
    assert!(applied.unwrap().index < committed.index);
    let rest: Vec<Entry> = log
        .try_get_log_entries(applied.unwrap().index + 1..=committed.index)
        .await
        .unwrap();
    sm.apply(rest).await.unwrap();
    assert_eq!(sm.shared().read().unwrap().digest(), digest);
    assert_eq!(sm.outcome(&key(7)).unwrap(), outcome);
    assert!(outcome.is_some());
    assert_eq!(log.read_identity().unwrap(), None);
    log.write_identity(5).unwrap();
    drop((log, sm));
    let (log, _) = open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(log.read_identity().unwrap(), Some(5));
}

#[tokio::test]
async fn snapshot_installs_into_a_fresh_store_with_identical_state_and_outcomes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_la, mut sa) = open(a.path(), &StoreOptions::default()).unwrap();
    let entries: Vec<Entry> = history(300)
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c))
        .collect();
    sa.apply(entries).await.unwrap();
    let snap = sa
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_lb, mut sb) = open(b.path(), &StoreOptions::default()).unwrap();
    let mut buf = sb.begin_receiving_snapshot().await.unwrap();
    let mut src = *snap.snapshot;
    tokio::io::copy(&mut src, &mut *buf).await.unwrap();
    sb.install_snapshot(&snap.meta, buf).await.unwrap();
    assert_eq!(
        sa.shared().read().unwrap().digest(),
        sb.shared().read().unwrap().digest()
    );
    for i in [0, 150, 299] {
        assert_eq!(sa.outcome(&key(i)).unwrap(), sb.outcome(&key(i)).unwrap());
        assert!(sb.outcome(&key(i)).unwrap().is_some());
    }
    assert_eq!(sb.applied_state().await.unwrap().0, snap.meta.last_log_id);
}
