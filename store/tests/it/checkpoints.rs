//! Checkpoints taken by `apply()`: state machines fed the same log record equal digests at the
//! same indexes, whatever the batches they were applied in, and again after a restart.

use crate::common::*;
use mozen_store::{ClusterState, Command, open};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use tempfile::TempDir;

const EVERY: u64 = 8;

fn commands() -> Vec<Command> {
    let mut cmds = vec![Command::RegisterNode {
        node: node(1, 1000),
        at: 1,
    }];
    for round in 0..20 {
        cmds.extend(lifecycle(round * 5, round * 5 + 5, 100, u64::from(round)));
    }
    cmds
}

#[test]
fn stores_applying_the_same_log_in_other_batches_record_equal_checkpoints() -> anyhow::Result<()> {
    let rt = runtime();
    let ents = entries(1, commands());
    let (da, db) = (TempDir::new()?, TempDir::new()?);
    let (_la, mut a) = open(da.path(), &test_options())?;
    let (_lb, mut b) = open(db.path(), &test_options())?;
    a.checkpoints().set_every(EVERY);
    b.checkpoints().set_every(EVERY);
    rt.block_on(async {
        for chunk in ents.chunks(3) {
            a.apply(chunk.to_vec()).await?;
        }
        for chunk in ents.chunks(7) {
            b.apply(chunk.to_vec()).await?;
        }
        anyhow::Ok(())
    })?;
    let got = a.checkpoints().list();
    let indexes: Vec<u64> = got.iter().map(|c| c.index).collect();
    assert_eq!(indexes, (1..=7).map(|i| i * EVERY).collect::<Vec<_>>());
    assert_eq!(got, b.checkpoints().list());
    // Each is the digest of the state right after its entry, not of the batch's end.
    let mut pure = ClusterState::new();
    for (i, cmd) in commands().iter().enumerate().take(2 * EVERY as usize) {
        pure.apply(cmd);
        if i + 1 == EVERY as usize {
            assert_eq!(got[0].digest, pure.digest());
        }
    }
    assert_eq!(got[1].digest, pure.digest());
    Ok(())
}

#[test]
fn a_restarted_store_records_the_same_checkpoints_as_it_applies_the_log_again() -> anyhow::Result<()>
{
    let rt = runtime();
    let ents = entries(1, commands());
    let dir = TempDir::new()?;
    let before = {
        let (_log, mut sm) = open(dir.path(), &test_options())?;
        sm.checkpoints().set_every(EVERY);
        rt.block_on(async {
            sm.apply(ents[..20].to_vec()).await?;
            sm.build_snapshot().await?;
            sm.apply(ents[20..].to_vec()).await?;
            anyhow::Ok(())
        })?;
        sm.checkpoints().list()
    };
    let (_log, mut sm) = open(dir.path(), &test_options())?;
    sm.checkpoints().set_every(EVERY);
    assert!(sm.checkpoints().list().is_empty(), "kept in memory only");
    // What openraft does at start: apply the committed entries after the snapshot.
    rt.block_on(sm.apply(ents[20..].to_vec()))?;
    let after = sm.checkpoints().list();
    assert_eq!(after.first().map(|c| c.index), Some(24));
    assert_eq!(after[..], before[before.len() - after.len()..]);
    Ok(())
}
