//! A Raft member whose log or leader contradicts its committed entries stops with a storage
//! error: it neither deletes committed entries nor panics (issue 28).
//!
//! The cluster of the report: a voter lost acknowledged entries, became leader, and a member
//! that still held them came back. The leader's log conflicted with the member's below the
//! member's committed index; openraft deleted the committed entries, moved its committed log id
//! back to a lower index, and its core panicked applying the backwards range
//! (`raft_core.rs: index out of bounds: the len is 0 but the index is 18446744073709551615`)
//! while the process went on serving its stale state.

use crate::common::*;
use mozen_store::{
    Entry, LogId, LogStore, Raft, RaftNode, StateMachineStore, TypeConfig, Vote, open,
};
use openraft::error::{Fatal, InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    CommittedLeaderId, EntryPayload, LogState, Membership, RaftLogReader, StorageError,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A network on which no peer ever answers: the tests play the leader themselves.
struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &RaftNode) -> NoPeers {
        NoPeers
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<u64, RaftNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "no peers in this test",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, RaftNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        Err(unreachable())
    }
}

/// Elections off: the member waits for the test's leader.
fn follower_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            enable_elect: false,
            enable_heartbeat: false,
            ..Default::default()
        }
        .validate()
        .expect("raft config"),
    )
}

fn leader_log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entries 0..=last of term 1 (leader 1), the first naming voters 1 and 2.
fn term_one_log(last: u64) -> Vec<Entry> {
    let voters = Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([
            (1, RaftNode { addr: "n1".into() }),
            (2, RaftNode { addr: "n2".into() }),
        ]),
    );
    let mut log = vec![Entry {
        log_id: leader_log_id(1, 0),
        payload: EntryPayload::Membership(voters),
    }];
    log.extend((1..=last).map(|i| Entry {
        log_id: leader_log_id(1, i),
        payload: EntryPayload::Normal(event(i)),
    }));
    log
}

/// A member's data dir as the member that came back had it: entries 0..=20 of term 1, all
/// committed, the vote for leader 1 of term 1.
async fn member_with_committed_log(dir: &TempDir) -> anyhow::Result<(LogStore, StateMachineStore)> {
    let (mut log, sm) = open(dir.path(), &test_options())?;
    for e in term_one_log(20) {
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, [e]).await?;
    }
    log.save_vote(&Vote::new_committed(1, 1)).await?;
    log.save_committed(Some(leader_log_id(1, 20))).await?;
    Ok((log, sm))
}

#[test]
fn a_leader_log_conflicting_below_the_commit_stops_the_member_and_keeps_its_entries()
-> anyhow::Result<()> {
    let dir = TempDir::new()?;
    runtime().block_on(async {
        let (mut log, sm) = member_with_committed_log(&dir).await?;
        let raft = Raft::new(2, follower_config(), NoPeers, log.clone(), sm).await?;

        // The leader of term 2 lost entries 11..=20: its log goes on from 10 with its own
        // entry 11, which it has committed.
        let blank = Entry {
            log_id: leader_log_id(2, 11),
            payload: EntryPayload::Blank,
        };
        let req = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(leader_log_id(1, 10)),
            entries: vec![blank],
            leader_commit: Some(leader_log_id(2, 11)),
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), raft.append_entries(req))
            .await
            .expect("the member answers");
        let err = match answer {
            Err(RaftError::Fatal(Fatal::StorageError(e))) => e.to_string(),
            other => panic!("expected the core to stop with a storage error, got {other:?}"),
        };
        assert!(
            err.contains("refusing to delete committed log entries")
                && err.contains(&leader_log_id(1, 11).to_string())
                && err.contains(&leader_log_id(1, 20).to_string()),
            "the error names the conflicting entry and the committed one: {err}"
        );
        let state = raft.metrics().borrow().running_state.clone();
        assert!(
            matches!(state, Err(Fatal::StorageError(_))),
            "the metrics report the stop: {state:?}"
        );

        // Nothing committed was deleted or overwritten.
        let kept = log.try_get_log_entries(0..=20).await?;
        assert_eq!(
            kept.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            (0..=20).map(|i| leader_log_id(1, i)).collect::<Vec<_>>()
        );
        assert_eq!(log.read_committed().await?, Some(leader_log_id(1, 20)));
        anyhow::Ok(())
    })
}

/// A log store that loses one entry when read: what a store returning damaged data without
/// noticing would hand to Raft.
#[derive(Clone)]
struct Leaky {
    inner: LogStore,
    lost: u64,
}

impl RaftLogReader<TypeConfig> for Leaky {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let mut entries = self.inner.try_get_log_entries(range).await?;
        entries.retain(|e| e.log_id.index != self.lost);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for Leaky {
    type LogReader = Leaky;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Leaky {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.inner.purge(log_id).await
    }
}

#[test]
fn committed_entries_missing_from_the_log_stop_the_member() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    runtime().block_on(async {
        let (mut log, sm) = open(dir.path(), &test_options())?;
        for e in term_one_log(10) {
            openraft::storage::RaftLogStorageExt::blocking_append(&mut log, [e]).await?;
        }
        log.save_vote(&Vote::new_committed(1, 1)).await?;
        let leaky = Leaky {
            inner: log.clone(),
            lost: 13,
        };
        let raft = Raft::new(2, follower_config(), NoPeers, leaky, sm).await?;

        // The leader sends 11..=15 and commits them; the member's log hands back 0..=15
        // without 13 when it applies them.
        let req = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(leader_log_id(1, 10)),
            entries: (11..=15)
                .map(|i| Entry {
                    log_id: leader_log_id(1, i),
                    payload: EntryPayload::Normal(event(i)),
                })
                .collect(),
            leader_commit: Some(leader_log_id(1, 15)),
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), raft.append_entries(req))
            .await
            .expect("the member answers");
        assert!(
            answer.is_ok_and(|r| r.is_success()),
            "the append itself is fine"
        );

        let mut metrics = raft.metrics();
        tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.running_state.is_err()),
        )
        .await
        .expect("the core stops within 10 s")?;
        let stopped = metrics.borrow().running_state.clone();
        let err = match stopped {
            Err(Fatal::StorageError(e)) => e.to_string(),
            other => panic!("expected a storage error, got {other:?}"),
        };
        assert!(
            err.contains("committed log entries are missing")
                && err.contains("[0, 16)")
                && err.contains("got 15 entries"),
            "the error names the range asked and what came back: {err}"
        );
        anyhow::Ok(())
    })
}
