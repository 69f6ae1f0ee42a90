//! Random damage to the files of a data dir: wherever it lands, the store either refuses to
//! open with a damage error, or opens with everything it acknowledged intact. It never opens
//! with less and says nothing.

use crate::common::*;
use mozen_model::Outcome;
use mozen_store::{Command, Entry, StoreError, open};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

/// Keys whose results were applied and acknowledged (large results, stored in sled).
const KEYS: u32 = 60;

/// A data dir with a log of 1 + 3 * 6 entries (each appended and acknowledged on its own), a
/// snapshot at index 10, results for every key, the log purged up to 4 and a committed vote;
/// built once, copied for each case.
struct Template {
    dir: TempDir,
    entries: Vec<Entry>,
    vote: Vote<u64>,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = TempDir::new().expect("tempdir");
        let mut cmds = vec![Command::RegisterNode {
            node: node(1, 10),
            at: 1,
        }];
        for part in 0..6 {
            let from = part * KEYS / 6;
            cmds.extend(lifecycle(from, from + KEYS / 6, 150, 2 + u64::from(part)));
        }
        let entries = entries(1, cmds);
        let vote = Vote::new_committed(3, 1);
        runtime().block_on(async {
            let (mut log, mut sm) = open(dir.path(), &test_options()).expect("open");
            for e in &entries {
                log.blocking_append([e.clone()]).await.expect("append");
            }
            log.save_vote(&vote).await.expect("vote");
            sm.apply(entries[..10].to_vec()).await.expect("apply");
            sm.build_snapshot().await.expect("snapshot");
            log.purge(log_id(1, 4)).await.expect("purge");
            sm.apply(entries[10..].to_vec()).await.expect("apply");
            sm.build_snapshot().await.expect("snapshot");
        });
        Template { dir, entries, vote }
    })
}

/// The files damage may land in: sled's, the watermark, the snapshot.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join("db").join("db"), dir.join("watermark")];
    for sub in ["db", "snapshots"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().to_string());
                name.is_some_and(|n| n.starts_with("snap.") || n.ends_with(".snap"))
            })
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

#[derive(Debug, Clone)]
enum Damage {
    /// `len` pseudo-random bytes from the offset (a fraction of the file, in thousandths).
    Scribble { at: u32, len: usize, seed: u64 },
    /// Zeroes `len` bytes from the offset.
    Zero { at: u32, len: usize },
    /// Cuts the file at the offset.
    Truncate { at: u32 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u32..1000, 1usize..4097, any::<u64>()).prop_map(|(at, len, seed)| Damage::Scribble {
            at,
            len,
            seed
        }),
        (0u32..1000, 1usize..4097).prop_map(|(at, len)| Damage::Zero { at, len }),
        (0u32..1000).prop_map(|at| Damage::Truncate { at }),
    ]
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).expect("read");
    if bytes.is_empty() {
        return;
    }
    let offset = |at: u32| (bytes.len() as u64 * u64::from(at) / 1000) as usize;
    match *d {
        Damage::Scribble { at, len, seed } => {
            let from = offset(at);
            let mut x = seed | 1;
            for b in bytes.iter_mut().skip(from).take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        Damage::Zero { at, len } => {
            let from = offset(at);
            let to = (from + len).min(bytes.len());
            bytes[from..to].fill(0);
        }
        Damage::Truncate { at } => bytes.truncate(offset(at)),
    }
    std::fs::write(path, bytes).expect("write");
}

/// Everything acknowledged is there, read back through the store.
fn intact(dir: &Path, t: &Template) -> Result<(), String> {
    let (mut log, sm) = match open(dir, &test_options()) {
        Ok(s) => s,
        Err(e) => return Err(format!("second open: {e}")),
    };
    runtime().block_on(async {
        let state = log.get_log_state().await.map_err(|e| e.to_string())?;
        let last = t.entries.last().expect("entries").log_id;
        if state.last_log_id != Some(last) {
            return Err(format!(
                "log ends at {:?}, {last} was acknowledged",
                state.last_log_id
            ));
        }
        let first = state.last_purged_log_id.map_or(1, |p| p.index + 1);
        let got = log
            .try_get_log_entries(first..=last.index)
            .await
            .map_err(|e| e.to_string())?;
        let want: Vec<_> = t.entries[(first - 1) as usize..].to_vec();
        if format!("{got:?}") != format!("{want:?}") {
            return Err("log entries differ".into());
        }
        if log.read_vote().await.map_err(|e| e.to_string())? != Some(t.vote) {
            return Err("vote differs".into());
        }
        Ok(())
    })?;
    for k in 0..KEYS {
        match sm.outcome(&key(k)) {
            Ok(Some(Outcome::Value(v))) if v == value(k, 150) => {}
            other => return Err(format!("result {k}: {other:?}")),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damage_is_refused_or_harmless(file in 0usize..4, d in damage()) {
        let t = template();
        let case = TempDir::new().expect("tempdir");
        copy_dir(t.dir.path(), case.path()).expect("copy");
        let all = files(case.path());
        let target = &all[file % all.len()];
        apply(target, &d);
        let opened = open(case.path(), &test_options());
        match opened {
            Err(e) => prop_assert!(
                e.is_damage() || matches!(e, StoreError::Version { .. }),
                "damage {d:?} to {} gave an error that is not a damage error: {e}",
                target.display()
            ),
            Ok(stores) => {
                drop(stores);
                if let Err(what) = intact(case.path(), t) {
                    prop_assert!(false, "damage {d:?} to {} was not seen and lost data: {what}", target.display());
                }
            }
        }
    }
}
