//! openraft storage (storage-v2) on one sled `Db`: the Raft log, the vote, and the state
//! machine with its memoized results and snapshots.
//!
//! - this module: [`open`] and the checks it makes against the watermark before Raft starts
//!   (format version, the upgrade of the unsealed format, what the trees hold).
//! - `log`: [`LogStore`], the Raft log in chunks and the vote, with its flusher thread.
//! - `state_machine`: [`StateMachineStore`], apply, the memoized results, snapshot build and
//!   install.
//! - `snapshot_file`: the snapshot file format, written and read with its hashes.
//! - `codec`: the names of the sled trees and keys, sealed encode/decode helpers and the error
//!   mappers the others share.
//!
//! Imports go one way: this module uses `log`, `state_machine` and `codec`; `state_machine`
//! uses `snapshot_file`; every module uses `codec`, which uses none of the others. How log
//! and vote writes reach disk, and in which order, is told in `log` (Durability); how results
//! and snapshots are kept, in `state_machine`.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/db/          one sled Db, trees:
//!     raft_log       chunks of consecutive entries, one record per chunk: key = big-endian
//!                    u64 index of the chunk's first entry (so sled order is log order),
//!                    value = count u32 LE | { len u32 LE | postcard(openraft Entry) }* | seal
//!                    (at most 256 entries; closed at 64 KiB). An append writes its entries
//!                    as new chunks; truncate and purge rewrite the one chunk they cut.
//!     raft_meta      "format_version" (u32 BE, the only value without a seal), "vote",
//!                    "committed", "last_purged", "flushes" (postcard), "identity" (u64 BE,
//!                    this agent's node id),
//!                    "outcomes_pending" (name of a snapshot whose results are being loaded),
//!                    "no_small_results" (name of a snapshot with no short result to read
//!                    back at open)
//!     sm_outcomes    key = 32-byte request key, value = postcard(Outcome), for results
//!                    whose encoding is longer than SMALL_OUTCOME (64) bytes
//! <dir>/snapshots/   <seq>.snap: the newest complete snapshot (older ones are deleted);
//!                    <seq>.part: a snapshot being written or received (deleted at open)
//! <dir>/watermark    what was last flushed and acknowledged (see `crate::mark`)
//! ```
//!
//! Every sled value but the format version ends with a seal: a CRC32 of (tree, key, value),
//! checked on every read (`crate::seal`). Snapshot files keep unsealed result records (their
//! own hashes cover them; other members read them).
//!
//! # Damage
//!
//! A fresh directory gets `format_version` = [`FORMAT_VERSION`]; a directory of the previous
//! format (2, without seals) is sealed in place at open; any other value is
//! `StoreError::Version`. A value that fails its seal or does not decode is
//! `StoreError::Corrupt` naming the tree and key; at the openraft trait boundary it becomes a
//! `StorageError` carrying that message. At open every log chunk, meta record, stored result
//! and the newest snapshot file are read and checked, then compared with the watermark: a
//! store holding less than it acknowledged is `StoreError::Damaged`, while data sled dropped
//! past the last flush (a torn tail) is trimmed and logged. Nothing read from disk is
//! unwrapped.
//!
//! sled releases its file lock from a background thread a little after the last handle is
//! dropped, so `open` waits up to 3 s for the lock; a directory used by another live process
//! still fails after that.

mod codec;
mod log;
mod snapshot_file;
mod state_machine;

pub use log::LogStore;
pub use state_machine::{ApplyObserver, SharedState, StateMachineStore};

use crate::error::StoreError;
use crate::mark::{self, Mark, Watermark};
use crate::raft_types::{LogId, Vote};
use crate::seal::{seal, unseal};
use codec::{
    KEY_COMMITTED, KEY_FLUSHES, KEY_LAST_PURGED, KEY_VERSION, KEY_VOTE, LOAD_BATCH, TREE_LOG,
    TREE_META, TREE_OUTCOMES, get_decoded, io_err, sled_err,
};
use log::{chunk_key, decode_chunk};
use std::cmp::Ordering as CmpOrdering;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Version of the on-disk format (sled trees and snapshot files). Bump on any incompatible
/// change; a directory with another version is refused with `StoreError::Version`.
pub const FORMAT_VERSION: u32 = 3;
/// The previous format (values without seals), upgraded in place at open.
const FORMAT_UNSEALED: u32 = 2;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled's page cache. sled's own default (1 GiB) is too much for several agents per host.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Opens (creating if needed) the data dir: `<dir>/db` (sled) and `<dir>/snapshots/`.
///
/// Checks the format version, decodes the vote, the purge point and the last log entry, and
/// loads the newest snapshot into the state machine, so a damaged directory fails here rather
/// than inside Raft.
pub fn open(dir: &Path, opts: &StoreOptions) -> Result<(LogStore, StateMachineStore), StoreError> {
    let snap_dir = dir.join("snapshots");
    fs::create_dir_all(&snap_dir).map_err(io_err(&snap_dir))?;
    let damaged = |detail: String| StoreError::Damaged {
        dir: dir.display().to_string(),
        detail,
    };
    // Read before sled recovers, so nothing below can rewrite it first.
    let recorded = mark::read(dir)?;
    let config = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(opts.cache_capacity_bytes);
    let db = open_db(dir, &config).map_err(|e| match e {
        StoreError::Sled { source, .. } if matches!(source, sled::Error::Corruption { .. }) => {
            damaged(format!(
                "{}: sled cannot recover it: {source}",
                dir.join("db").display()
            ))
        }
        e => e,
    })?;
    // What sled's recovery dropped, if it stopped short of its written log: said once, at
    // this open (sled has rewritten the tail by the next one).
    let tear = db.recovery_tear();
    let log = db.open_tree(TREE_LOG).map_err(sled_err(TREE_LOG))?;
    let meta = db.open_tree(TREE_META).map_err(sled_err(TREE_META))?;
    let outcomes = db
        .open_tree(TREE_OUTCOMES)
        .map_err(sled_err(TREE_OUTCOMES))?;
    let found = check_version(dir, &db, &log, &meta, &outcomes)?;
    let with_tear = |e: StoreError| match (e, &tear) {
        (StoreError::Damaged { dir, detail }, Some(t)) => StoreError::Damaged {
            dir,
            detail: format!("{detail}; sled's recovery of db/db stopped early: {t}"),
        },
        (StoreError::Corrupt { tree, key, reason }, Some(t)) => StoreError::Corrupt {
            tree,
            key,
            reason: format!("{reason}; sled's recovery of db/db stopped early: {t}"),
        },
        (e, _) => e,
    };
    let probe = recorded.as_ref().and_then(|m| m.flushed).map(|l| l.index);
    let facts = StoredFacts::scan(&log, &meta, &outcomes, probe).map_err(with_tear)?;
    let mark = match (found, recorded) {
        (Found::Fresh, None) => Mark::default(),
        (Found::Fresh, Some(m)) if m == Mark::default() => m,
        (Found::Fresh, Some(m)) => {
            return Err(with_tear(damaged(format!(
                "{} is empty, but {} records a store that held data ({})",
                dir.join("db").display(),
                dir.join(mark::MARK_FILE).display(),
                describe_mark(&m)
            ))));
        }
        (Found::Upgraded, None) => facts.as_mark(),
        (Found::Current, None) if facts.is_empty() => Mark::default(),
        (Found::Current, None) => {
            return Err(with_tear(damaged(format!(
                "{} is missing: nothing tells what this store acknowledged (it holds {})",
                dir.join(mark::MARK_FILE).display(),
                describe_mark(&facts.as_mark())
            ))));
        }
        (Found::Current | Found::Upgraded, Some(m)) => {
            facts.check(&m).map_err(damaged).map_err(with_tear)?;
            m
        }
    };
    if let Some(t) = &tear {
        // Everything acknowledged is there: what sled dropped was written after the last
        // flush, by a crash mid-write.
        tracing::warn!(
            dir = %dir.display(),
            log_ends_at = ?facts.last_log.map(|l| l.index),
            acknowledged_up_to = ?mark.flushed.map(|l| l.index),
            "trimmed a torn tail of the store (never acknowledged): {t}"
        );
    }
    let watermark = Arc::new(Watermark::create(dir, mark, facts.last_log)?);

    let log_store = LogStore::start(
        db.clone(),
        log,
        meta.clone(),
        snap_dir.clone(),
        watermark.clone(),
        tear.as_ref().map(|t| t.to_string()),
    )
    .map_err(io_err(dir))?;
    let sm = StateMachineStore::load(db, meta, outcomes, snap_dir.clone(), watermark)?;
    if let Some(purged) = facts.last_purged
        && sm.applied_index() < purged.index
    {
        return Err(damaged(format!(
            "the log was purged up to index {}, but the newest snapshot in {} covers only up to {}: the entries between are gone",
            purged.index,
            snap_dir.display(),
            sm.applied_index()
        )));
    }
    Ok((log_store, sm))
}

fn describe_mark(m: &Mark) -> String {
    format!(
        "log flushed up to index {}, vote {}, purged up to {}, {} state-machine flushes",
        m.flushed.map_or("none".into(), |l| l.index.to_string()),
        m.vote.map_or("none".into(), |v| v.to_string()),
        m.purged.map_or("none".into(), |l| l.index.to_string()),
        m.flushes
    )
}

/// What the sled trees hold, read and checked in full at open.
#[derive(Debug, Default)]
struct StoredFacts {
    first_log: Option<u64>,
    last_log: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    flushes: u64,
    /// The log id found at the index the watermark says was flushed last, if the log holds it.
    at_flushed: Option<LogId>,
}

impl StoredFacts {
    /// Reads every stored result, meta record and log chunk, checking seals, decoding the
    /// meta records and log entries, and that the chunks follow each other without a gap.
    fn scan(
        log: &sled::Tree,
        meta: &sled::Tree,
        outcomes: &sled::Tree,
        probe: Option<u64>,
    ) -> Result<Self, StoreError> {
        // Every stored result too: a damaged one is named now, not when a caller asks for it
        // (about 30 ms per 100,000 results).
        for kv in outcomes.iter() {
            let (k, v) = kv.map_err(sled_err(TREE_OUTCOMES))?;
            unseal(TREE_OUTCOMES, &k, &v)?;
        }
        for kv in meta.iter() {
            let (k, v) = kv.map_err(sled_err(TREE_META))?;
            if &k[..] != KEY_VERSION.as_bytes() {
                unseal(TREE_META, &k, &v)?;
            }
        }
        let mut facts = StoredFacts {
            last_purged: get_decoded(meta, TREE_META, KEY_LAST_PURGED)?,
            vote: get_decoded(meta, TREE_META, KEY_VOTE)?,
            committed: get_decoded(meta, TREE_META, KEY_COMMITTED)?,
            flushes: get_decoded(meta, TREE_META, KEY_FLUSHES)?.unwrap_or(0),
            ..StoredFacts::default()
        };
        let mut next: Option<u64> = None;
        for kv in log.iter() {
            let (k, v) = kv.map_err(sled_err(TREE_LOG))?;
            let entries = decode_chunk(&k, &v)?;
            let first = chunk_key(&k)?;
            if let Some(n) = next
                && n != first
            {
                return Err(StoreError::Corrupt {
                    tree: TREE_LOG,
                    key: format!("index {first}"),
                    reason: format!("the log has a hole: the previous chunk ends before index {n}"),
                });
            }
            facts.first_log.get_or_insert(first);
            next = Some(first + entries.len() as u64);
            if let Some(e) = probe.and_then(|p| entries.iter().find(|e| e.log_id.index == p)) {
                facts.at_flushed = Some(e.log_id);
            }
            facts.last_log = entries.last().map(|e| e.log_id).or(facts.last_log);
        }
        Ok(facts)
    }

    fn is_empty(&self) -> bool {
        self.as_mark() == Mark::default() && self.last_log.is_none()
    }

    /// A watermark for a store that had none (upgraded from the unsealed format).
    fn as_mark(&self) -> Mark {
        Mark {
            flushed: self.last_log,
            vote: self.vote,
            purged: self.last_purged,
            flushes: self.flushes,
        }
    }

    /// Checks the trees against the watermark: a detail of what was lost, if anything was.
    fn check(&self, m: &Mark) -> Result<(), String> {
        let ends = self.last_log.or(self.last_purged);
        let end_index = ends.map_or(0, |l| l.index);
        if let Some(flushed) = m.flushed
            && end_index < flushed.index
        {
            return Err(format!(
                "the Raft log ends at index {end_index}, but entries up to index {} were flushed and acknowledged: {} acknowledged entries are gone",
                flushed.index,
                flushed.index - end_index
            ));
        }
        if let (Some(flushed), Some(at)) = (m.flushed, self.at_flushed)
            && at != flushed
        {
            return Err(format!(
                "the log holds {at} at index {}, but {flushed} was flushed and acknowledged there",
                flushed.index
            ));
        }
        if let Some(v) = m.vote {
            // Equal, or newer: saved after the watermark was last written.
            let stored_ok = self
                .vote
                .is_some_and(|s| s == v || s.partial_cmp(&v) == Some(CmpOrdering::Greater));
            if !stored_ok {
                return Err(format!(
                    "the stored vote is {}, but vote {v} was saved and acknowledged: this member could vote twice in a term",
                    self.vote.map_or("missing".into(), |s| s.to_string())
                ));
            }
        }
        if let Some(p) = m.purged
            && self.last_purged.is_none_or(|s| s.index < p.index)
        {
            return Err(format!(
                "the log's purge point is {}, but index {} was recorded as purged",
                self.last_purged
                    .map_or("none".into(), |s| s.index.to_string()),
                p.index
            ));
        }
        if self.flushes < m.flushes {
            return Err(format!(
                "state-machine flush {} was recorded but the store holds only up to flush {}: results written before a snapshot are gone",
                m.flushes, self.flushes
            ));
        }
        if let Some(c) = self.committed
            && c.index > end_index
        {
            return Err(format!(
                "the committed index is {}, past the log's end at {end_index}",
                c.index
            ));
        }
        Ok(())
    }
}

/// How long `open` waits for sled's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled Db, waiting up to [`LOCK_WAIT`] for its file lock: sled releases the lock
/// from a background thread shortly after the last handle of an earlier open in this process
/// is dropped (seen as EWOULDBLOCK under load). A directory held by another live process still
/// fails once the wait is over.
fn open_db(dir: &Path, config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // sled's recovery panics on some damage to older segments of its file: that is a
        // damaged store, not a crash of the agent.
        let opened = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
        {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                return Err(StoreError::Damaged {
                    dir: dir.display().to_string(),
                    detail: format!(
                        "sled's recovery of {} failed: it panicked: {what}",
                        dir.join("db").display()
                    ),
                });
            }
        };
        match opened {
            Err(sled::Error::Io(e)) if lock_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.map_err(sled_err("db")),
        }
    }
}

/// Whether sled's open failed on its file lock being held. sled reports it as an `Other` error
/// whose text names the lock (the `WouldBlock` inside is only in the message).
pub fn lock_busy(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// What `check_version` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A new directory (now marked with [`FORMAT_VERSION`]).
    Fresh,
    /// A directory of this format.
    Current,
    /// A directory of the unsealed format, upgraded in place.
    Upgraded,
}

fn check_version(
    dir: &Path,
    db: &sled::Db,
    log: &sled::Tree,
    meta: &sled::Tree,
    outcomes: &sled::Tree,
) -> Result<Found, StoreError> {
    let mismatch = |found: String| StoreError::Version {
        dir: dir.display().to_string(),
        found,
        expected: FORMAT_VERSION,
    };
    let set_version = || -> Result<(), StoreError> {
        meta.insert(KEY_VERSION, &FORMAT_VERSION.to_be_bytes())
            .map_err(sled_err(TREE_META))?;
        db.flush().map_err(sled_err(TREE_META))?;
        Ok(())
    };
    match meta.get(KEY_VERSION).map_err(sled_err(TREE_META))? {
        None => {
            let fresh = log.is_empty() && meta.is_empty() && outcomes.is_empty();
            if !fresh {
                return Err(mismatch(
                    "none (the directory has data but no version)".into(),
                ));
            }
            set_version()?;
            Ok(Found::Fresh)
        }
        Some(v) => {
            let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                tree: TREE_META,
                key: KEY_VERSION.into(),
                reason: format!("expected 4 bytes, found {}", v.len()),
            })?;
            match u32::from_be_bytes(bytes) {
                FORMAT_VERSION => {
                    // Created, but a crash came before anything else was written.
                    let only_version = log.is_empty() && outcomes.is_empty() && meta.len() == 1;
                    Ok(if only_version {
                        Found::Fresh
                    } else {
                        Found::Current
                    })
                }
                FORMAT_UNSEALED => {
                    tracing::info!(dir = %dir.display(), "upgrading the data dir: sealing every stored value with a checksum");
                    for (tree, name) in [
                        (log, TREE_LOG),
                        (meta, TREE_META),
                        (outcomes, TREE_OUTCOMES),
                    ] {
                        seal_tree(tree, name)?;
                    }
                    set_version()?;
                    Ok(Found::Upgraded)
                }
                found => Err(mismatch(found.to_string())),
            }
        }
    }
}

/// Seals every value of `tree` that is not sealed yet (all but the format version), in
/// batches. Values already sealed (an upgrade interrupted by a crash) are left alone.
fn seal_tree(tree: &sled::Tree, name: &'static str) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for kv in tree.iter() {
        let (k, v) = kv.map_err(sled_err(name))?;
        if &k[..] == KEY_VERSION.as_bytes() || crate::seal::is_sealed(name, &k, &v) {
            continue;
        }
        batch.insert(k.clone(), seal(name, &k, v.to_vec()));
        n += 1;
        if n % LOAD_BATCH == 0 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err(name))?;
        }
    }
    tree.apply_batch(batch).map_err(sled_err(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_sled_lock_is_recognised_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new().path(dir.path().join("db"));
        let _held = config.open().unwrap();
        match sled::Config::new().path(dir.path().join("db")).open() {
            Err(sled::Error::Io(e)) => assert!(lock_busy(&e), "{e}"),
            Err(e) => panic!("expected an I/O error for the held lock, got {e}"),
            Ok(_) => panic!("a second open of a held sled dir succeeded"),
        }
        assert!(!lock_busy(&io::Error::other("disk on fire")));
    }
}
