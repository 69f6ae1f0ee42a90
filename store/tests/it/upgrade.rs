//! A data dir written by the previous release (format 2: values without checksums, no
//! watermark) opens with this one, is sealed in place, and keeps everything it held.

use crate::common::*;
use mozen_store::{FORMAT_VERSION, open};
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use std::path::Path;
use tempfile::TempDir;

/// The fixture, written by the release before sealed values: node 1 registered, keys 0..40
/// submitted, assigned and completed (values of 100, 4 and 200 bytes), entries 1..=10 with a
/// snapshot at index 7, the log purged up to 4, vote committed for node 0 in term 1.
const FIXTURE: &str = "tests/it/fixtures/format2-data-dir";

#[test]
fn a_format_2_data_dir_opens_sealed_with_everything_it_held() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE),
        dir.path(),
    )?;
    for round in 0..2 {
        // The first open upgrades; the second opens a current dir with its watermark.
        let (mut log, sm) = open(dir.path(), &test_options())?;
        runtime().block_on(async {
            let state = log.get_log_state().await?;
            assert_eq!(
                state.last_purged_log_id,
                Some(log_id(1, 4)),
                "round {round}"
            );
            assert_eq!(state.last_log_id, Some(log_id(1, 10)), "round {round}");
            let entries = log.try_get_log_entries(5..=10).await?;
            assert_eq!(entries.len(), 6);
            let vote = log.read_vote().await?;
            assert_eq!(vote, Some(openraft::Vote::new_committed(1, 0)));
            anyhow::Ok(())
        })?;
        assert!(dir.path().join("watermark").exists());
        // Results of the snapshot: large ones from sled, small ones from the snapshot file.
        for k in 0..20 {
            let got = sm.outcome(&key(k))?;
            assert_eq!(
                got,
                Some(mozen_model::Outcome::Value(value(k, 100))),
                "key {k}"
            );
        }
        assert_eq!(sm.last_snapshot().map(|s| s.0), Some(7));
    }
    let db = sled::open(dir.path().join("db"));
    // The version was moved on (read it raw once the store is closed and its lock gone).
    if let Ok(db) = db {
        let v = db.open_tree("raft_meta")?.get("format_version")?;
        assert_eq!(v.as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
    }
    Ok(())
}
