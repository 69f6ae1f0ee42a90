//! Restart: everything written through the storage comes back after the store is dropped and
//! reopened — state (through the snapshot plus re-applied committed entries), log, vote and
//! memoized results.

use crate::common::*;
use mozen_store::{Command, Entry, LogStore, StateMachineStore, Vote, open};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageHelper};
use std::path::Path;
use tempfile::TempDir;

struct Seen {
    digest: [u8; 32],
    log: Vec<Entry>,
    vote: Option<Vote>,
    outcomes: Vec<Option<mozen_model::Outcome>>,
}

async fn seen(log: &mut LogStore, sm: &StateMachineStore, keys: u32) -> anyhow::Result<Seen> {
    let digest = sm.shared().read().expect("state").digest();
    Ok(Seen {
        digest,
        log: log.try_get_log_entries(..).await?,
        vote: log.read_vote().await?,
        outcomes: (0..keys)
            .map(|k| sm.outcome(&key(k)))
            .collect::<Result<_, _>>()?,
    })
}

fn commands() -> Vec<Command> {
    let mut cmds = vec![Command::RegisterNode {
        node: node(1, 1000),
        at: 1,
    }];
    cmds.extend(lifecycle(0, 40, 64, 10));
    cmds.extend(lifecycle(40, 80, 64, 20));
    cmds.push(Command::Forget {
        selector: mozen_store::ForgetSelector::Oldest(5),
        at: 30,
    });
    cmds.extend(lifecycle(80, 90, 64, 40));
    cmds
}

/// Writes the log, the vote and the committed index; applies `applied_before_snapshot`
/// entries, builds a snapshot (if asked), applies the rest; returns what a reader sees.
async fn write_everything(dir: &Path, snapshot_at: Option<usize>) -> anyhow::Result<Seen> {
    let (mut log, mut sm) = open(dir, &test_options())?;
    let ents = entries(0, commands());
    let last = ents.last().expect("entries").log_id;
    log.save_vote(&Vote::new(3, 1)).await?;
    log.blocking_append(ents.clone()).await?;
    log.save_committed(Some(last)).await?;
    let split = snapshot_at.unwrap_or(ents.len());
    sm.apply(ents[..split].to_vec()).await?;
    if snapshot_at.is_some() {
        sm.build_snapshot().await?;
    }
    sm.apply(ents[split..].to_vec()).await?;
    seen(&mut log, &sm, 90).await
}

async fn reopen(dir: &Path) -> anyhow::Result<(LogStore, StateMachineStore)> {
    let (mut log, mut sm) = open(dir, &test_options())?;
    // What openraft does at start: re-apply committed entries the snapshot does not cover.
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await?;
    Ok((log, sm))
}

/// Index of the last command's entry (entries start at index 0).
fn last_index() -> u64 {
    commands().len() as u64 - 1
}

fn assert_same(before: &Seen, after: &Seen) {
    assert_eq!(before.digest, after.digest, "state digest");
    assert_eq!(before.log, after.log, "log");
    assert_eq!(before.vote, after.vote, "vote");
    assert_eq!(before.outcomes, after.outcomes, "outcomes");
}

#[test]
fn restart_restores_state_log_vote_and_outcomes_from_snapshot_and_log() -> anyhow::Result<()> {
    runtime().block_on(async {
        let dir = TempDir::new()?;
        let before = write_everything(dir.path(), Some(3)).await?;
        let (mut log, sm) = reopen(dir.path()).await?;
        let after = seen(&mut log, &sm, 90).await?;
        assert_same(&before, &after);
        let (index, bytes) = sm.last_snapshot().expect("a snapshot");
        assert_eq!(index, 2);
        assert!(bytes > 0);
        Ok(())
    })
}

#[test]
fn restart_without_snapshot_replays_committed_log() -> anyhow::Result<()> {
    runtime().block_on(async {
        let dir = TempDir::new()?;
        let before = write_everything(dir.path(), None).await?;
        let (mut log, sm) = reopen(dir.path()).await?;
        assert!(sm.last_snapshot().is_none());
        let after = seen(&mut log, &sm, 90).await?;
        assert_same(&before, &after);
        Ok(())
    })
}

#[test]
fn restart_loads_snapshot_without_replaying_purged_log() -> anyhow::Result<()> {
    runtime().block_on(async {
        let dir = TempDir::new()?;
        let before = write_everything(dir.path(), Some(11)).await?;
        {
            let (mut log, mut sm) = open(dir.path(), &test_options())?;
            // A snapshot of everything, then the log is purged up to it.
            let (applied, _) = sm.applied_state().await?;
            let from = applied.map_or(0, |l| l.index + 1);
            let ents = log.try_get_log_entries(from..).await?;
            sm.apply(ents).await?;
            let snap = sm.build_snapshot().await?;
            let upto = snap.meta.last_log_id.expect("snapshot covers entries");
            log.purge(upto).await?;
            assert_eq!(log.log_len(), 0);
        }
        let (mut log, mut sm) = open(dir.path(), &test_options())?;
        // Loaded from the snapshot alone: nothing to re-apply, nothing in the log.
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(last_index()));
        let state = log.get_log_state().await?;
        assert_eq!(
            state.last_purged_log_id.map(|l| l.index),
            Some(last_index())
        );
        assert_eq!(state.last_log_id.map(|l| l.index), Some(last_index()));
        let after = seen(&mut log, &sm, 90).await?;
        assert_eq!(before.digest, after.digest);
        assert_eq!(before.outcomes, after.outcomes);
        assert_eq!(before.vote, after.vote);
        assert!(after.log.is_empty());
        Ok(())
    })
}

#[test]
fn identity_survives_restart() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    {
        let (log, _sm) = open(dir.path(), &test_options())?;
        assert_eq!(log.read_identity()?, None);
        log.write_identity(42)?;
    }
    let (log, _sm) = open(dir.path(), &test_options())?;
    assert_eq!(log.read_identity()?, Some(42));
    Ok(())
}

#[test]
fn second_open_of_the_same_dir_fails_cleanly() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let _first = open(dir.path(), &test_options())?;
    assert!(open(dir.path(), &test_options()).is_err());
    Ok(())
}
