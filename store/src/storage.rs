//! openraft storage (storage-v2) on one sled `Db`: the Raft log, the vote, and the state
//! machine with its memoized results and snapshots.
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
//! # Persistence design
//!
//! `ClusterState` (everything but result payloads) lives in memory. `apply()` runs the pure
//! transition under the state's write lock, then writes the effects it produced
//! (`Effect::PutOutcome`/`DeleteOutcome`): results longer than 64 bytes encoded go to
//! `sm_outcomes` in one sled batch, so large payloads are never all in RAM; shorter ones (the
//! `null`, numbers, short strings and small lists of most fine-grained calls, as short as the
//! arguments the finished records keep in memory anyway) stay in an in-memory map, 60 to 150
//! bytes each, which spares every voter a sled insert per call (a third of a follower's CPU
//! under load, docs/benchmarks.md). A short result shadows an earlier run's
//! value of the same key left in sled; deleting a key removes both. `apply()` does not flush:
//! after a crash the state machine restarts from the newest snapshot (its short results are
//! read back from its file at open) and openraft re-applies the log up to the persisted
//! committed index (`save_committed`/`read_committed`); re-applying rewrites the same effects,
//! which are idempotent. A snapshot is flushed to sled before it becomes current, so
//! `sm_outcomes` on disk is never older than the newest snapshot.
//!
//! A snapshot file is the state (postcard) followed by every result, short and long, in key
//! order, streamed to a `.part` file, fsynced, then renamed atomically and the directory
//! fsynced:
//!
//! ```text
//! "MOZSNAP\0" | format u32 LE | header_len u64 LE | blake3(header) | header
//!     (header = postcard { SnapshotMeta, ClusterState })
//! { 0x01 | request key [32] | len u32 LE | postcard(Outcome) }*
//! 0x00 | record count u64 LE | blake3(every byte before this hash)
//! ```
//!
//! Building runs beside `apply()`: the state is encoded and the short results copied under its
//! read lock (the snapshot point; `apply()` waits meanwhile, about 1 s per million requests in
//! release builds), then `sm_outcomes` is scanned in key order, merged with that copy, while
//! `apply()` goes on. While the scan runs,
//! `apply()` saves the value a key had at the snapshot point before it first changes a key the
//! scan has not reached yet; the scan uses those saved values instead of what it reads, and
//! writes the saved values of keys deleted before the scan reached them at the end. The file
//! thus holds exactly the results as of the snapshot point.
//!
//! A snapshot received through `begin_receiving_snapshot` is installed by renaming the file
//! it was written to (any other file is copied first). Installing verifies the whole file
//! (both hashes, every result decodes), records its name
//! under `outcomes_pending` (flushed), renames it into place, makes the `sm_outcomes`
//! contents equal to the file's records, short ones included (merging both in key order and
//! writing only the keys that differ), clears the marker, empties the map of short results and
//! swaps the in-memory state. A crash
//! in between is repaired at open: a marker naming the newest snapshot reloads `sm_outcomes`
//! from it.
//!
//! # Durability
//!
//! Log and vote writes reach disk through `Db::flush` (sled's `pwrite` + `sync_file_range`),
//! run in place with `block_in_place` (never `flush_async`, which can deadlock in sled 0.34):
//! `save_vote` returns after the flush; `append` inserts the entries, flushes, and only then
//! reports `log_io_completed`; `truncate` and `purge` flush before returning, and `purge`
//! writes `last_purged` before it removes entries. Between flushes, the ordering arguments
//! (`last_purged` before removal, the pending marker before the rename, the committed index
//! before the results of the entries it covers) rely on sled recovering its log in the order
//! writes were issued, as its log-structured design does; the SIGKILL test checks
//! acknowledged appends. The flush is `sync_file_range`, not `fsync`: enough for process
//! crashes, not for power loss.
//!
//! sled releases its file lock from a background thread a little after the last handle is
//! dropped, so `open` waits up to 3 s for the lock; a directory used by another live process
//! still fails after that.
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

use crate::checkpoint::Checkpoints;
use crate::command::{Command, Response};
use crate::error::StoreError;
use crate::mark::{self, Mark, Watermark};
use crate::raft_types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use crate::seal::{seal, unseal};
use crate::state::{ClusterState, Effect};
use mozen_model::{Outcome, RequestKey};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogReader, RaftSnapshotBuilder,
    StorageError, StorageIOError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::IVec;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// Version of the on-disk format (sled trees and snapshot files). Bump on any incompatible
/// change; a directory with another version is refused with `StoreError::Version`.
pub const FORMAT_VERSION: u32 = 3;
/// Version of the snapshot file format: unchanged since format 2 of the directory (the file
/// has its own hashes), and what other members send and receive.
const SNAPSHOT_FORMAT: u32 = 2;
/// The previous format (values without seals), upgraded in place at open.
const FORMAT_UNSEALED: u32 = 2;

const TREE_LOG: &str = "raft_log";
const TREE_META: &str = "raft_meta";
const TREE_OUTCOMES: &str = "sm_outcomes";
const TREE_SNAPSHOTS: &str = "snapshots";

const KEY_VERSION: &str = "format_version";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_IDENTITY: &str = "identity";
const KEY_OUTCOMES_PENDING: &str = "outcomes_pending";
/// Name of a snapshot file whose results are all in `sm_outcomes` (it holds no short result,
/// or it was installed): opening with it as the newest need not read its records.
const KEY_NO_SMALL: &str = "no_small_results";
/// Count of the state machine's flushes, mirrored in the watermark ([`Mark::flushes`]).
const KEY_FLUSHES: &str = "flushes";

const SNAP_MAGIC: &[u8; 8] = b"MOZSNAP\0";
const SNAP_RECORD: u8 = 1;
const SNAP_END: u8 = 0;
/// Writes per sled batch when loading a snapshot's results.
const LOAD_BATCH: usize = 4096;

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

    let (flush_tx, flush_rx) = std::sync::mpsc::channel();
    let flusher = {
        let db = db.clone();
        let watermark = watermark.clone();
        std::thread::Builder::new()
            .name("mozen-log-flush".into())
            .spawn(move || flush_in_background(db, watermark, flush_rx))
            .map_err(io_err(dir))?
    };
    let log_store = LogStore {
        inner: Arc::new(LogInner {
            db: db.clone(),
            log,
            meta: meta.clone(),
            snap_dir: snap_dir.clone(),
            mark: watermark.clone(),
            torn_tail: tear.as_ref().map(|t| t.to_string()),
            flush_tx: Some(flush_tx),
            flusher: Some(flusher),
        }),
    };
    let sm = StateMachineStore::load(db, meta, outcomes, snap_dir, watermark)?;
    if let Some(purged) = facts.last_purged
        && sm.inner.applied_index() < purged.index
    {
        return Err(damaged(format!(
            "the log was purged up to index {}, but the newest snapshot in {} covers only up to {}: the entries between are gone",
            purged.index,
            sm.inner.snap_dir.display(),
            sm.inner.applied_index()
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

// ----- the log -----

/// The Raft log and vote. Cheap to clone: clones share one sled `Db`.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

struct LogInner {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    snap_dir: PathBuf,
    /// What has been flushed, kept in step with every flush, truncation and purge.
    mark: Arc<Watermark>,
    /// What sled's recovery dropped at this open, past the last acknowledged write.
    torn_tail: Option<String>,
    /// Appends whose flush Raft does not wait for (the leader's own), to the flusher thread.
    flush_tx: Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        // The flusher holds a handle of the Db: stop it before the Db is reported closed.
        self.flush_tx.take();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// The flusher thread: flushes once for every append waiting (many appends of a busy leader
/// share one flush) and reports each done, until the log store is dropped.
fn flush_in_background(
    db: sled::Db,
    mark: Arc<Watermark>,
    rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let ticket = mark.ticket();
        let result = db
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|_| mark.flushed(ticket).map_err(|e| e.to_string()));
        for callback in waiting {
            callback.log_io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

impl LogStore {
    /// This agent's node id, stored in the meta tree by [`LogStore::write_identity`].
    pub fn read_identity(&self) -> Result<Option<u64>, StoreError> {
        let Some(sealed) = self
            .inner
            .meta
            .get(KEY_IDENTITY)
            .map_err(sled_err(TREE_META))?
        else {
            return Ok(None);
        };
        let v = unseal(TREE_META, KEY_IDENTITY.as_bytes(), &sealed)?;
        let bytes: [u8; 8] = v.try_into().map_err(|_| StoreError::Corrupt {
            tree: TREE_META,
            key: KEY_IDENTITY.into(),
            reason: format!("expected 8 bytes, found {}", v.len()),
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Records this agent's node id; durable (flushed) before it returns.
    pub fn write_identity(&self, id: u64) -> Result<(), StoreError> {
        self.inner
            .meta
            .insert(
                KEY_IDENTITY,
                seal(
                    TREE_META,
                    KEY_IDENTITY.as_bytes(),
                    id.to_be_bytes().to_vec(),
                ),
            )
            .map_err(sled_err(TREE_META))?;
        self.inner.db.flush().map_err(sled_err(TREE_META))?;
        Ok(())
    }

    /// What sled's recovery dropped when this store was opened, if anything: written after
    /// the last flush (never acknowledged), trimmed and logged at open.
    pub fn torn_tail(&self) -> Option<&str> {
        self.inner.torn_tail.as_deref()
    }

    /// Whether this store has never held a vote, a log entry or a purge point: a new member.
    pub fn is_fresh(&self) -> Result<bool, StoreError> {
        Ok(self.inner.read_vote()?.is_none()
            && self.inner.last_purged()?.is_none()
            && self.inner.log.is_empty())
    }

    /// Flushes every tree to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|source| StoreError::Sled { tree: "db", source })
    }

    /// Bytes on disk: the sled files plus the snapshot files.
    pub fn disk_size(&self) -> u64 {
        let db = self.inner.db.size_on_disk().unwrap_or(0);
        let snaps = fs::read_dir(&self.inner.snap_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        db + snaps
    }

    /// Entries currently in the log tree (the log has no holes, so this is last - first + 1).
    pub fn log_len(&self) -> u64 {
        let first = self.inner.log.first().ok().flatten();
        let last = self.inner.log.last().ok().flatten();
        match (first, last) {
            (Some((f, _)), Some((l, v))) => match (be_index(&f), be_index(&l), chunk_len(&v)) {
                (Some(f), Some(l), Some(n)) if l >= f => l - f + n,
                _ => 0,
            },
            _ => 0,
        }
    }
}

impl LogInner {
    fn read_vote(&self) -> Result<Option<Vote>, StoreError> {
        get_decoded(&self.meta, TREE_META, KEY_VOTE)
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        get_decoded(&self.meta, TREE_META, KEY_LAST_PURGED)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.log.last().map_err(sled_err(TREE_LOG))? {
            None => Ok(None),
            Some((k, v)) => Ok(decode_chunk(&k, &v)?.pop().map(|e| e.log_id)),
        }
    }

    /// The chunk holding `index`, or the last one before it: (its first index, its value).
    fn chunk_at_or_before(&self, index: u64) -> Result<Option<(u64, IVec)>, StoreError> {
        match self.log.range(..=index.to_be_bytes()).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv.map_err(sled_err(TREE_LOG))?;
                Ok(Some((chunk_key(&k)?, v)))
            }
        }
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        // An empty range (start > end) makes sled panic; openraft may ask for one.
        if start > end {
            return Ok(Vec::new());
        }
        let from = self.chunk_at_or_before(start)?.map_or(start, |(k, _)| k);
        let mut out = Vec::new();
        for kv in self.log.range(from.to_be_bytes()..=end.to_be_bytes()) {
            let (k, v) = kv.map_err(sled_err(TREE_LOG))?;
            out.extend(
                decode_chunk(&k, &v)?
                    .into_iter()
                    .filter(|e| (start..=end).contains(&e.log_id.index)),
            );
        }
        Ok(out)
    }

    /// Lowers the watermark to the entry before `index`, ahead of a truncation at `index`.
    fn truncating(&self, index: u64) -> Result<(), StoreError> {
        let keep = match index.checked_sub(1) {
            None => None,
            Some(prev) => match self.entries(prev..=prev)?.pop() {
                Some(e) => Some(e.log_id),
                None => self.last_purged()?,
            },
        };
        self.mark.truncating(keep)
    }

    /// Adds to `batch` what deletes every entry at `index` and above: later chunks go, the
    /// chunk holding `index` keeps the entries before it.
    fn truncate_into(&self, index: u64, batch: &mut sled::Batch) -> Result<(), StoreError> {
        if let Some((first, v)) = self.chunk_at_or_before(index)?
            && first < index
        {
            let keep: Vec<Entry> = decode_chunk(&first.to_be_bytes(), &v)?
                .into_iter()
                .filter(|e| e.log_id.index < index)
                .collect();
            for (k, v) in encode_chunks(keep)? {
                batch.insert(&k.to_be_bytes(), v);
            }
        }
        for kv in self.log.range(index.to_be_bytes()..) {
            let (k, _) = kv.map_err(sled_err(TREE_LOG))?;
            batch.remove(k);
        }
        Ok(())
    }

    /// Blocks this task's thread for the flush (about 100-150 us here): handing it to a
    /// blocking thread and being woken back cost about 70 us more per flush and as much CPU
    /// (docs/benchmarks.md). On a multi-thread runtime the thread's other tasks move to
    /// another worker meanwhile.
    async fn flush(&self) -> Result<(), StoreError> {
        let flush = || {
            let ticket = self.mark.ticket();
            self.db.flush().map_err(sled_err("db"))?;
            self.mark.flushed(ticket)
        };
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(flush),
            _ => flush(),
        }
    }
}

fn be_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Entries per log chunk at most.
const CHUNK_ENTRIES: usize = 256;
/// A chunk takes no more entries once its value is this large.
const CHUNK_BYTES: usize = 64 << 10;

/// Encodes consecutive entries into sealed log chunks: (index of the chunk's first entry,
/// value).
///
/// One sled record per chunk rather than per entry: sled's cost is per record (about 10 us to
/// insert one here), so a 1,000-entry append costs a few inserts instead of a thousand.
fn encode_chunks(
    entries: impl IntoIterator<Item = Entry>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut chunks = Vec::new();
    let mut open: Option<(u64, u32, Vec<u8>)> = None;
    for entry in entries {
        let (_, count, buf) = open.get_or_insert_with(|| (entry.log_id.index, 0, vec![0; 4]));
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        let with =
            postcard::to_extend(&entry, std::mem::take(buf)).map_err(|e| StoreError::Encode {
                what: "log entry",
                reason: e.to_string(),
            })?;
        *buf = with;
        let len = (buf.len() - at - 4) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        *count += 1;
        buf[..4].copy_from_slice(&count.to_le_bytes());
        if *count as usize >= CHUNK_ENTRIES || buf.len() >= CHUNK_BYTES {
            let (first, _, buf) = open.take().expect("just filled");
            chunks.push((first, seal(TREE_LOG, &first.to_be_bytes(), buf)));
        }
    }
    if let Some((first, _, buf)) = open {
        chunks.push((first, seal(TREE_LOG, &first.to_be_bytes(), buf)));
    }
    Ok(chunks)
}

fn chunk_key(key: &[u8]) -> Result<u64, StoreError> {
    be_index(key).ok_or_else(|| StoreError::Corrupt {
        tree: TREE_LOG,
        key: format!("0x{}", hex_of(key)),
        reason: format!("log keys are 8 bytes, this one has {}", key.len()),
    })
}

/// Entries in a chunk, from its header alone.
fn chunk_len(value: &[u8]) -> Option<u64> {
    let head: [u8; 4] = value.get(..4)?.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(head)))
}

/// Decodes a log chunk: `count u32 LE | { len u32 LE | postcard(Entry) }* | seal`, its
/// entries numbered from the index in its key without gaps.
fn decode_chunk(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let first = chunk_key(key)?;
    let value = unseal(TREE_LOG, key, value)?;
    let corrupt = |index: u64, reason: String| StoreError::Corrupt {
        tree: TREE_LOG,
        key: format!("index {index}"),
        reason,
    };
    let count = chunk_len(value)
        .filter(|n| *n > 0)
        .ok_or_else(|| corrupt(first, "not a log chunk (no entry count)".into()))?;
    let mut rest = &value[4..];
    let mut out = Vec::new();
    for i in 0..count {
        let index = first + i;
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt(index, "the chunk ends before this entry".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt(index, "the chunk ends inside this entry".into()));
        }
        let entry: Entry = decode_exact(&tail[..len]).map_err(|r| corrupt(index, r))?;
        if entry.log_id.index != index {
            return Err(corrupt(
                index,
                format!("the entry says it is index {}", entry.log_id.index),
            ));
        }
        out.push(entry);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(corrupt(
            first,
            format!("{} bytes after the chunk's {count} entries", rest.len()),
        ));
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        self.inner
            .entries(range)
            .map_err(to_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let read = to_storage(ErrorSubject::Logs, ErrorVerb::Read);
        let last_purged_log_id = self.inner.last_purged().map_err(&read)?;
        let last_log_id = self.inner.last_log_id().map_err(&read)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let write = to_storage(ErrorSubject::Vote, ErrorVerb::Write);
        put_encoded(&self.inner.meta, TREE_META, KEY_VOTE, vote).map_err(&write)?;
        self.inner.flush().await.map_err(&write)?;
        self.inner.mark.voted(*vote).map_err(&write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        self.inner
            .read_vote()
            .map_err(to_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Not flushed: losing the last committed index only means re-applying less at start.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let write = to_storage(ErrorSubject::Store, ErrorVerb::Write);
        match committed {
            Some(c) => put_encoded(&self.inner.meta, TREE_META, KEY_COMMITTED, &c).map_err(write),
            None => self
                .inner
                .meta
                .remove(KEY_COMMITTED)
                .map(drop)
                .map_err(sled_err(TREE_META))
                .map_err(write),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        get_decoded(&self.inner.meta, TREE_META, KEY_COMMITTED)
            .map_err(to_storage(ErrorSubject::Store, ErrorVerb::Read))
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
        let write = to_storage(ErrorSubject::Logs, ErrorVerb::Write);
        let mut last = None;
        let chunks = encode_chunks(entries.into_iter().inspect(|e| last = Some(e.log_id)))
            .map_err(&write)?;
        let Some(&(first, _)) = chunks.first() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let last = last.expect("entries were encoded");
        let mut batch = sled::Batch::default();
        // Entries replacing stored ones (openraft truncates first, but stay safe): the
        // chunk holding `first` must not keep its copy of them.
        let overlaps = match self.inner.chunk_at_or_before(first).map_err(&write)? {
            Some((k, v)) => k + chunk_len(&v).unwrap_or(0) > first,
            None => false,
        };
        if overlaps {
            self.inner.truncating(first).map_err(&write)?;
            self.inner
                .truncate_into(first, &mut batch)
                .map_err(&write)?;
        }
        for (k, v) in chunks {
            batch.insert(&k.to_be_bytes(), v);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(sled_err(TREE_LOG))
            .map_err(&write)?;
        self.inner.mark.appended(last);
        // Acknowledge only what is on disk: a crash after the callback must not lose entries.
        // The leader's own appends are flushed on the flusher thread while Raft replicates
        // them (it counts its own copy towards the commit only once the callback comes); a
        // follower's append is flushed here, Raft answering the leader right after.
        if !callback.awaited() {
            if let Some(tx) = &self.inner.flush_tx
                && let Err(back) = tx.send(callback)
            {
                back.0
                    .log_io_completed(Err(io::Error::other("the log flusher thread stopped")));
                return Err(write(StoreError::Io {
                    path: self.inner.snap_dir.display().to_string(),
                    source: io::Error::other("the log flusher thread stopped"),
                }));
            }
            return Ok(());
        }
        match self.inner.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let write = to_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        self.inner.truncating(log_id.index).map_err(&write)?;
        let mut batch = sled::Batch::default();
        self.inner
            .truncate_into(log_id.index, &mut batch)
            .map_err(&write)?;
        self.inner
            .log
            .apply_batch(batch)
            .map_err(sled_err(TREE_LOG))
            .map_err(&write)?;
        self.inner.flush().await.map_err(&write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let write = to_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        // last_purged first: a crash between the two writes leaves entries below the purge
        // point, which are ignored, never a log whose start nobody remembers.
        put_encoded(&self.inner.meta, TREE_META, KEY_LAST_PURGED, &log_id).map_err(&write)?;
        let mut batch = sled::Batch::default();
        for kv in self.inner.log.range(..=log_id.index.to_be_bytes()) {
            let (k, v) = kv.map_err(sled_err(TREE_LOG)).map_err(&write)?;
            let first = chunk_key(&k).map_err(&write)?;
            batch.remove(k);
            if first + chunk_len(&v).unwrap_or(0) > log_id.index + 1 {
                // The chunk holding the purge point keeps the entries after it.
                let keep: Vec<Entry> = decode_chunk(&first.to_be_bytes(), &v)
                    .map_err(&write)?
                    .into_iter()
                    .filter(|e| e.log_id.index > log_id.index)
                    .collect();
                for (k, v) in encode_chunks(keep).map_err(&write)? {
                    batch.insert(&k.to_be_bytes(), v);
                }
            }
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(sled_err(TREE_LOG))
            .map_err(&write)?;
        self.inner.flush().await.map_err(&write)?;
        self.inner.mark.purged(log_id).map_err(&write)
    }
}

// ----- the state machine -----

/// The replicated state, shared with the agent's readers. Readers hold the read lock briefly
/// and never across an `.await`; `apply()` holds the write lock for one batch of entries.
pub type SharedState = Arc<RwLock<ClusterState>>;

/// Told about every change of the state machine, for wake-ups and caches outside the store.
pub trait ApplyObserver: Send + Sync + 'static {
    /// Called after each apply() call of the state machine with the normal commands applied
    /// (log index, command, response), after the write lock on the state is released. Not
    /// called for a call that applied only blank or membership entries. Runs on openraft's
    /// state-machine task: keep it short and never block on Raft.
    fn applied(&self, batch: &[(u64, &Command, &Response)]);
    /// Called after a snapshot replaced the whole state.
    fn snapshot_installed(&self);
}

/// The state machine: `ClusterState` in memory, result payloads in `sm_outcomes`, snapshots
/// in files. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<SmInner>,
}

struct SmInner {
    db: sled::Db,
    /// Records each of the flushes below (see [`SmInner::durable_flush`]).
    mark: Arc<Watermark>,
    meta: sled::Tree,
    outcomes: sled::Tree,
    snap_dir: PathBuf,
    state: SharedState,
    /// Last applied log id and membership. Changed only while the state's write lock is held,
    /// so a reader holding the state's read lock sees both consistent with the state.
    applied: Mutex<Applied>,
    observer: RwLock<Option<Arc<dyn ApplyObserver>>>,
    /// Results whose encoding is at most [`SMALL_OUTCOME`] bytes, kept here instead of in
    /// `sm_outcomes` (see the module docs). Changed only under the state's write lock.
    small: RwLock<BTreeMap<RequestKey, IVec>>,
    /// Set while a snapshot scans `sm_outcomes`; see the module docs.
    capture: Mutex<Option<Capture>>,
    current: Mutex<Option<CurrentSnapshot>>,
    /// One snapshot build or install at a time: both rewrite the snapshot directory, and an
    /// install rewrites `sm_outcomes` under a running scan.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Files handed out by `begin_receiving_snapshot`, by (device, inode), so that installing
    /// one renames it instead of copying it.
    receiving: Mutex<HashMap<(u64, u64), PathBuf>>,
    /// Sequence number of the next snapshot file; file names sort in creation order.
    next_file: AtomicU64,
    /// State digests taken by `apply()` at every multiple of the interval (module `checkpoint`).
    checkpoints: Checkpoints,
}

#[derive(Clone, Debug, Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Clone, Debug)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    path: PathBuf,
    bytes: u64,
}

/// Longest result encoding kept in memory rather than in `sm_outcomes`: the `null`, numbers,
/// short strings and small lists most fine-grained functions return (up to 22 bytes without
/// a heap allocation of their own).
const SMALL_OUTCOME: usize = 64;

/// Values `sm_outcomes` had at a snapshot point, for the keys changed since then that the scan
/// has not passed yet. `None`: the key did not exist.
#[derive(Default)]
struct Capture {
    /// The last key the scan handled; keys at or before it need no saving.
    cursor: Option<IVec>,
    before: HashMap<IVec, Option<IVec>>,
}

impl StateMachineStore {
    fn load(
        db: sled::Db,
        meta: sled::Tree,
        outcomes: sled::Tree,
        snap_dir: PathBuf,
        mark: Arc<Watermark>,
    ) -> Result<Self, StoreError> {
        let mut newest: Option<(u64, PathBuf)> = None;
        let mut older = Vec::new();
        for e in fs::read_dir(&snap_dir).map_err(io_err(&snap_dir))? {
            let path = e.map_err(io_err(&snap_dir))?.path();
            let ext = path.extension().and_then(|x| x.to_str());
            let seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            match (ext, seq) {
                // An interrupted build or transfer.
                (Some("part"), _) => fs::remove_file(&path).map_err(io_err(&path))?,
                (Some("snap"), Some(seq)) => {
                    if let Some((s, p)) = newest.take() {
                        if s > seq {
                            newest = Some((s, p));
                            older.push(path);
                            continue;
                        }
                        older.push(p);
                    }
                    newest = Some((seq, path));
                }
                _ => {}
            }
        }
        // Older snapshots are left by a crash between a rename and the clean-up.
        for p in older {
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
        let next_file = newest.as_ref().map_or(1, |(s, _)| s + 1);
        let (state, applied, current) = match &newest {
            None => (ClusterState::new(), Applied::default(), None),
            Some((_, path)) => {
                let mut r = SnapReader::open(path)?;
                let (meta, state) = r.header()?;
                let bytes = fs::metadata(path).map_err(io_err(path))?.len();
                let applied = Applied {
                    last: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                };
                let current = CurrentSnapshot {
                    meta,
                    path: path.clone(),
                    bytes,
                };
                (state, applied, Some(current))
            }
        };
        // The small results as of the snapshot point are in its file only; the log entries
        // after it are applied again.
        let small = match &newest {
            None => BTreeMap::new(),
            Some((_, path)) => {
                let none = get_name(&meta, KEY_NO_SMALL)?.is_some_and(|n| {
                    path.file_name()
                        .is_some_and(|f| f.as_encoded_bytes() == &n[..])
                });
                if none {
                    // Nothing to keep from the records, but their hashes are still checked:
                    // a snapshot is what a lagging member receives.
                    let mut r = SnapReader::open(path)?;
                    r.skip_header()?;
                    while r.next_record()?.is_some() {}
                    r.finish()?;
                    BTreeMap::new()
                } else {
                    small_records(path)?
                }
            }
        };
        let inner = SmInner {
            db,
            mark,
            meta,
            outcomes,
            small: RwLock::new(small),
            snap_dir,
            state: Arc::new(RwLock::new(state)),
            applied: Mutex::new(applied),
            observer: RwLock::new(None),
            capture: Mutex::new(None),
            current: Mutex::new(current),
            snapshot_lock: tokio::sync::Mutex::new(()),
            receiving: Mutex::new(HashMap::new()),
            next_file: AtomicU64::new(next_file),
            checkpoints: Checkpoints::default(),
        };
        inner.finish_pending_load(newest.as_ref().map(|(_, p)| p.as_path()))?;
        Ok(StateMachineStore {
            inner: Arc::new(inner),
        })
    }

    /// The replicated state. Take the read lock briefly; never hold it across an `.await`.
    pub fn shared(&self) -> SharedState {
        self.inner.state.clone()
    }

    /// The last applied log index with a digest of the state as of that index, read under one
    /// lock so that the two agree. Encodes the whole state: for checks, not for hot paths.
    pub fn digest(&self) -> (u64, [u8; 32]) {
        let state = self.inner.state.read().expect("state");
        let index = lock(&self.inner.applied).last.map_or(0, |l| l.index);
        (index, state.digest())
    }

    /// The state checkpoints taken while applying (see [`crate::checkpoint`]).
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.inner.checkpoints
    }

    /// The memoized result of a request, read from sled.
    pub fn outcome(&self, key: &RequestKey) -> Result<Option<Outcome>, StoreError> {
        let small = read_lock(&self.inner.small).get(key).cloned();
        let stored = match small {
            Some(v) => Some(v),
            None => self
                .inner
                .outcomes
                .get(key.0)
                .map_err(sled_err(TREE_OUTCOMES))?
                .map(|v| unseal(TREE_OUTCOMES, &key.0, &v).map(IVec::from))
                .transpose()?,
        };
        match stored {
            None => Ok(None),
            Some(v) => decode_exact(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: TREE_OUTCOMES,
                    key: key.to_hex(),
                    reason,
                }),
        }
    }

    /// Registers the observer told about applied commands and installed snapshots (replacing
    /// any earlier one).
    pub fn set_observer(&self, obs: Arc<dyn ApplyObserver>) {
        *write_lock(&self.inner.observer) = Some(obs);
    }

    /// Log index (0 if it covers nothing) and size in bytes of the current snapshot.
    pub fn last_snapshot(&self) -> Option<(u64, u64)> {
        lock(&self.inner.current).as_ref().map(|c| {
            let index = c.meta.last_log_id.map_or(0, |l| l.index);
            (index, c.bytes)
        })
    }

    fn observer(&self) -> Option<Arc<dyn ApplyObserver>> {
        read_lock(&self.inner.observer).clone()
    }
}

impl SmInner {
    /// Index of the last applied entry (0 if none).
    fn applied_index(&self) -> u64 {
        lock(&self.applied).last.map_or(0, |l| l.index)
    }

    /// Flushes sled with the next flush number stored in it, then records the number in the
    /// watermark: at open, a store holding an older number lost writes flushed here.
    fn durable_flush(&self) -> Result<(), StoreError> {
        let n = self.mark.next_flush();
        put_encoded(&self.meta, TREE_META, KEY_FLUSHES, &n)?;
        self.db.flush().map_err(sled_err("db"))?;
        self.mark.flush_done(n)
    }

    /// Writes the effects of one apply() call in one batch. Called with the state's write lock
    /// held, which makes the write atomic with the transition for a snapshot taking its point.
    fn write_effects(&self, effects: &[Effect]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut small = write_lock(&self.small);
        for eff in effects {
            match eff {
                Effect::PutOutcome(k, o) => {
                    let bytes = encode("outcome", o)?;
                    if bytes.len() <= SMALL_OUTCOME {
                        // A value of the key left in sled (an earlier run's) is shadowed, and
                        // removed with this one.
                        small.insert(*k, IVec::from(&bytes[..]));
                    } else {
                        small.remove(k);
                        batch.insert(&k.0[..], seal(TREE_OUTCOMES, &k.0, bytes));
                    }
                }
                Effect::DeleteOutcome(k) => {
                    small.remove(k);
                    batch.remove(&k.0[..]);
                }
            }
        }
        drop(small);
        let mut capture = lock(&self.capture);
        if let Some(cap) = capture.as_mut() {
            for eff in effects {
                let (Effect::PutOutcome(k, _) | Effect::DeleteOutcome(k)) = eff;
                let key = &k.0[..];
                let passed = cap.cursor.as_ref().is_some_and(|c| key <= c.as_ref());
                if !passed && !cap.before.contains_key(key) {
                    let old = self.outcomes.get(key).map_err(sled_err(TREE_OUTCOMES))?;
                    cap.before.insert(IVec::from(key), old);
                }
            }
        }
        // Applied while `capture` is locked: a scan that reads a changed value finds the
        // saved one.
        self.outcomes
            .apply_batch(batch)
            .map_err(sled_err(TREE_OUTCOMES))
    }

    /// Writes a snapshot of `state` (taken at `applied`) and of the results as of the same
    /// point (`sm_outcomes`, and `small`, the small ones then), makes it current and deletes
    /// older ones. Blocking; runs on a blocking thread. `capture` must have been set at the
    /// snapshot point.
    fn write_snapshot(
        &self,
        meta: SnapshotMeta,
        header: Vec<u8>,
        small: BTreeMap<RequestKey, IVec>,
    ) -> Result<CurrentSnapshot, StoreError> {
        struct EndCapture<'a>(&'a Mutex<Option<Capture>>);
        impl Drop for EndCapture<'_> {
            fn drop(&mut self) {
                lock(self.0).take();
            }
        }
        let end_capture = EndCapture(&self.capture);
        let seq = self.next_file.fetch_add(1, Ordering::Relaxed);
        let part = self.snap_dir.join(format!("{seq:020}.part"));
        let name = format!("{seq:020}.snap");
        let path = self.snap_dir.join(&name);
        let no_small = small.is_empty();
        let result = (|| {
            let mut w = SnapWriter::create(&part, &header)?;
            drop(header);
            // Both in key order, merged; a small result shadows what sled holds for its key.
            let mut pending = small.iter().peekable();
            for kv in self.outcomes.iter() {
                let (k, v) = kv.map_err(sled_err(TREE_OUTCOMES))?;
                let value = {
                    let mut capture = lock(&self.capture);
                    match capture.as_mut() {
                        Some(cap) => {
                            cap.cursor = Some(k.clone());
                            cap.before.remove(&k).unwrap_or(Some(v))
                        }
                        None => Some(v),
                    }
                };
                while let Some((sk, sv)) = pending.next_if(|(sk, _)| sk.0[..] <= k[..]) {
                    w.record(&sk.0, sv)?;
                }
                if let Some(v) = value.filter(|_| !is_small_key(&small, &k)) {
                    w.record(&k, unseal(TREE_OUTCOMES, &k, &v)?)?;
                }
            }
            for (sk, sv) in pending {
                w.record(&sk.0, sv)?;
            }
            // Keys deleted after the snapshot point, before the scan reached them.
            let mut rest: Vec<(IVec, IVec)> = lock(&self.capture)
                .take()
                .map(|c| c.before)
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !is_small_key(&small, k))
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            rest.sort();
            for (k, v) in rest {
                w.record(&k, unseal(TREE_OUTCOMES, &k, &v)?)?;
            }
            let bytes = w.finish()?;
            // The results up to the snapshot point must be on disk before the snapshot is.
            self.durable_flush()?;
            fs::rename(&part, &path).map_err(io_err(&path))?;
            sync_dir(&self.snap_dir)?;
            if no_small {
                // Not flushed: a lost marker only costs the next open a read of the file.
                put_name(&self.meta, KEY_NO_SMALL, &name)?;
            }
            Ok(bytes)
        })();
        drop(end_capture);
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        let current = CurrentSnapshot { meta, path, bytes };
        self.make_current(current.clone())?;
        Ok(current)
    }

    /// Makes `snap` the current snapshot and deletes the files of older ones.
    fn make_current(&self, snap: CurrentSnapshot) -> Result<(), StoreError> {
        let old = lock(&self.current).replace(snap);
        if let Some(old) = old {
            fs::remove_file(&old.path).map_err(io_err(&old.path))?;
        }
        Ok(())
    }

    /// Verifies a received snapshot file, makes it current and replaces the state and
    /// `sm_outcomes` with its content. Blocking.
    fn install_file(&self, part: &Path, meta: &SnapshotMeta) -> Result<(), StoreError> {
        let (file_meta, state) = {
            let mut r = SnapReader::open(part)?;
            let header = r.header()?;
            r.verify_records()?;
            header
        };
        if &file_meta != meta {
            return Err(StoreError::SnapshotMismatch {
                snapshot: meta.snapshot_id.clone(),
                reason: format!("the file holds snapshot {file_meta:?}, Raft announced {meta:?}"),
            });
        }
        let seq = self.next_file.fetch_add(1, Ordering::Relaxed);
        let name = format!("{seq:020}.snap");
        let path = self.snap_dir.join(&name);
        // The marker goes first: once the file is in place under this name, a crash before
        // the results are loaded is finished at open.
        put_name(&self.meta, KEY_OUTCOMES_PENDING, &name)?;
        self.durable_flush()?;
        fs::rename(part, &path).map_err(io_err(&path))?;
        sync_dir(&self.snap_dir)?;
        self.load_outcomes(&path)?;
        put_name(&self.meta, KEY_NO_SMALL, &name)?;
        let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
        {
            let mut st = write_lock(&self.state);
            let mut applied = lock(&self.applied);
            // Every result of the snapshot, small ones too, is in sm_outcomes now.
            write_lock(&self.small).clear();
            *st = state;
            *applied = Applied {
                last: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
        }
        self.make_current(CurrentSnapshot {
            meta: meta.clone(),
            path,
            bytes,
        })
    }

    /// Replaces the contents of `sm_outcomes` with the records of a snapshot file, then clears
    /// the pending marker. Blocking.
    ///
    /// Both are in key order, so they are merged: only keys whose value differs are written
    /// and only keys the file lacks are removed. A follower that fell behind usually holds
    /// most of the results already, and a sled read is far cheaper than a write.
    fn load_outcomes(&self, path: &Path) -> Result<(), StoreError> {
        let mut r = SnapReader::open(path)?;
        r.skip_header()?;
        let mut held = self.outcomes.iter();
        let mut ours = held.next().transpose().map_err(sled_err(TREE_OUTCOMES))?;
        let mut theirs = r.next_record()?;
        let mut batch = sled::Batch::default();
        let mut writes = 0;
        loop {
            if writes >= LOAD_BATCH {
                self.outcomes
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(sled_err(TREE_OUTCOMES))?;
                writes = 0;
            }
            let order = match (&ours, &theirs) {
                (None, None) => break,
                (Some(_), None) => CmpOrdering::Less,
                (None, Some(_)) => CmpOrdering::Greater,
                (Some((ok, _)), Some((tk, _))) => ok[..].cmp(&tk[..]),
            };
            // The iterator goes on after the last key it returned, so writes at or before
            // that key do not disturb it.
            if order != CmpOrdering::Greater {
                let (k, v) = ours.take().expect("compared above");
                ours = held.next().transpose().map_err(sled_err(TREE_OUTCOMES))?;
                if order == CmpOrdering::Less {
                    // A result the snapshot does not have.
                    batch.remove(k);
                    writes += 1;
                    continue;
                }
                let same = match &theirs {
                    Some((_, tv)) => unseal(TREE_OUTCOMES, &k, &v)? == &tv[..],
                    None => false,
                };
                if same {
                    theirs = r.next_record()?;
                    continue;
                }
            }
            let (k, v) = theirs.take().expect("compared above");
            batch.insert(&k[..], seal(TREE_OUTCOMES, &k, v));
            writes += 1;
            theirs = r.next_record()?;
        }
        r.finish()?;
        self.outcomes
            .apply_batch(batch)
            .map_err(sled_err(TREE_OUTCOMES))?;
        self.meta
            .remove(KEY_OUTCOMES_PENDING)
            .map_err(sled_err(TREE_META))?;
        self.durable_flush()
    }

    /// Finishes an install interrupted by a crash: see the module docs.
    fn finish_pending_load(&self, newest: Option<&Path>) -> Result<(), StoreError> {
        let Some(name) = get_name(&self.meta, KEY_OUTCOMES_PENDING)? else {
            return Ok(());
        };
        let is_newest = newest
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.as_encoded_bytes() == &name[..]);
        if let (true, Some(path)) = (is_newest, newest) {
            tracing::warn!(snapshot = %path.display(), "finishing an interrupted snapshot install");
            self.load_outcomes(path)
        } else {
            // The crash came before the rename: sm_outcomes was not touched yet.
            self.meta
                .remove(KEY_OUTCOMES_PENDING)
                .map_err(sled_err(TREE_META))?;
            self.durable_flush()
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<u64>> {
        let write = to_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        let _one_at_a_time = self.inner.snapshot_lock.lock().await;
        // The snapshot point: no apply() runs while the read lock is held, and capturing
        // starts before the next one. Encoding under the lock costs less time and memory than
        // cloning the state and encoding outside.
        let point = {
            let st = read_lock(&self.inner.state);
            let meta = new_snapshot_meta(lock(&self.inner.applied).clone());
            let header = encode_header(&meta, &st).map_err(&write)?;
            *lock(&self.inner.capture) = Some(Capture::default());
            let small = read_lock(&self.inner.small).clone();
            (meta, header, small)
        };
        let (meta, header, small) = point;
        let inner = self.inner.clone();
        let current =
            tokio::task::spawn_blocking(move || inner.write_snapshot(meta, header, small))
                .await
                .map_err(join_err)
                .and_then(|r| r)
                .map_err(&write)?;
        let file = tokio::fs::File::open(&current.path)
            .await
            .map_err(io_err(&current.path))
            .map_err(&write)?;
        tracing::info!(
            snapshot = %current.meta.snapshot_id,
            bytes = current.bytes,
            "built snapshot"
        );
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let a = lock(&self.inner.applied).clone();
        Ok((a.last, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut state = write_lock(&self.inner.state);
            let mut applied = lock(&self.inner.applied);
            for e in &entries {
                applied.last = Some(e.log_id);
                let r = match &e.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(cmd) => state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        Response::Ok
                    }
                };
                responses.push(r);
                self.inner.checkpoints.after_apply(e.log_id.index, &state);
            }
            let effects = state.take_effects();
            if !effects.is_empty()
                && let Err(err) = self.inner.write_effects(&effects)
            {
                let subject = match entries.last() {
                    Some(e) => ErrorSubject::Apply(e.log_id),
                    None => ErrorSubject::StateMachine,
                };
                return Err(to_storage(subject, ErrorVerb::Write)(err));
            }
        }
        if let Some(obs) = self.observer() {
            let batch: Vec<(u64, &Command, &Response)> = entries
                .iter()
                .zip(&responses)
                .filter_map(|(e, r)| match &e.payload {
                    EntryPayload::Normal(c) => Some((e.log_id.index, c, r)),
                    _ => None,
                })
                .collect();
            if !batch.is_empty() {
                obs.applied(&batch);
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let write = to_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        // openraft receives one snapshot at a time: a new stream abandons the earlier ones.
        let abandoned: Vec<PathBuf> = lock(&self.inner.receiving)
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in abandoned {
            let _ = tokio::fs::remove_file(&p).await;
        }
        let seq = self.inner.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.snap_dir.join(format!("{seq:020}.part"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_err(&path))
            .map_err(&write)?;
        let md = file
            .metadata()
            .await
            .map_err(io_err(&path))
            .map_err(&write)?;
        lock(&self.inner.receiving).insert((md.dev(), md.ino()), path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let write = to_storage(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        );
        let _one_at_a_time = self.inner.snapshot_lock.lock().await;
        let part = self.received_file(*snapshot).await.map_err(&write)?;
        let inner = self.inner.clone();
        let m = meta.clone();
        let p = part.clone();
        let res = tokio::task::spawn_blocking(move || inner.install_file(&p, &m))
            .await
            .map_err(join_err)
            .and_then(|r| r);
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(write(e));
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        if let Some(obs) = self.observer() {
            obs.snapshot_installed();
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<u64>> {
        // A build finishing meanwhile deletes the file we are about to open; the next
        // current one is then there.
        let mut attempts = 0;
        loop {
            let Some(cur) = lock(&self.inner.current).clone() else {
                return Ok(None);
            };
            match tokio::fs::File::open(&cur.path).await {
                Ok(file) => {
                    return Ok(Some(Snapshot {
                        meta: cur.meta,
                        snapshot: Box::new(file),
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => {
                    let read = to_storage(
                        ErrorSubject::Snapshot(Some(cur.meta.signature())),
                        ErrorVerb::Read,
                    );
                    return Err(read(io_err(&cur.path)(e)));
                }
            }
        }
    }
}

impl StateMachineStore {
    /// Returns the path of a fsynced `.part` file holding the received snapshot: the file
    /// itself when it came from `begin_receiving_snapshot`, else a copy.
    async fn received_file(&self, mut file: tokio::fs::File) -> Result<PathBuf, StoreError> {
        use tokio::io::AsyncSeekExt;
        let dir = self.inner.snap_dir.clone();
        let md = file.metadata().await.map_err(io_err(&dir))?;
        let ours = lock(&self.inner.receiving).remove(&(md.dev(), md.ino()));
        if let Some(path) = ours {
            file.sync_all().await.map_err(io_err(&path))?;
            return Ok(path);
        }
        let seq = self.inner.next_file.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{seq:020}.part"));
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(io_err(&path))?;
        file.seek(io::SeekFrom::Start(0))
            .await
            .map_err(io_err(&path))?;
        tokio::io::copy(&mut file, &mut out)
            .await
            .map_err(io_err(&path))?;
        out.sync_all().await.map_err(io_err(&path))?;
        Ok(path)
    }
}

// ----- snapshot files -----

#[derive(Serialize)]
struct HeaderRef<'a> {
    meta: &'a SnapshotMeta,
    state: &'a ClusterState,
}

#[derive(serde::Deserialize)]
struct Header {
    meta: SnapshotMeta,
    state: ClusterState,
}

/// Names a snapshot of the state at `applied`. The id is unique across builds and restarts.
fn new_snapshot_meta(applied: Applied) -> SnapshotMeta {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let snapshot_id = match applied.last {
        Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
        None => format!("0-0-{nanos}"),
    };
    SnapshotMeta {
        last_log_id: applied.last,
        last_membership: applied.membership,
        snapshot_id,
    }
}

fn encode_header(meta: &SnapshotMeta, state: &ClusterState) -> Result<Vec<u8>, StoreError> {
    encode("snapshot header", &HeaderRef { meta, state })
}

/// Writes a snapshot file, hashing everything it writes.
struct SnapWriter {
    out: BufWriter<fs::File>,
    hasher: blake3::Hasher,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

impl SnapWriter {
    /// Creates the file and writes the preamble and `header` (from [`encode_header`]).
    fn create(path: &Path, header: &[u8]) -> Result<Self, StoreError> {
        let file = fs::File::create(path).map_err(io_err(path))?;
        let mut w = SnapWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            path: path.to_path_buf(),
            records: 0,
            bytes: 0,
        };
        w.put(SNAP_MAGIC)?;
        w.put(&SNAPSHOT_FORMAT.to_le_bytes())?;
        w.put(&(header.len() as u64).to_le_bytes())?;
        w.put(blake3::hash(header).as_bytes())?;
        w.put(header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(io_err(&self.path))
    }

    fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(value.len()).map_err(|_| StoreError::Encode {
            what: "snapshot record",
            reason: format!("a result of {} bytes exceeds 4 GiB", value.len()),
        })?;
        self.put(&[SNAP_RECORD])?;
        self.put(key)?;
        self.put(&len.to_le_bytes())?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs; returns the file size.
    fn finish(mut self) -> Result<u64, StoreError> {
        self.put(&[SNAP_END])?;
        self.put(&self.records.to_le_bytes())?;
        let hash = *self.hasher.finalize().as_bytes();
        self.out.write_all(&hash).map_err(io_err(&self.path))?;
        let file = self.out.into_inner().map_err(|e| StoreError::Io {
            path: self.path.display().to_string(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&self.path))?;
        Ok(self.bytes + 32)
    }
}

/// One memoized result in a snapshot file: request key and postcard(Outcome).
type SnapRecord = ([u8; 32], Vec<u8>);

/// Reads a snapshot file: the header, then the records, checking the hashes.
struct SnapReader {
    input: BufReader<fs::File>,
    hasher: blake3::Hasher,
    name: String,
    records: u64,
}

impl SnapReader {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let file = fs::File::open(path).map_err(io_err(path))?;
        Ok(SnapReader {
            input: BufReader::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            records: 0,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            tree: TREE_SNAPSHOTS,
            key: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<Vec<u8>, StoreError> {
        // Read through `take` so that a damaged length cannot allocate more than the file has.
        let mut buf = Vec::new();
        (&mut self.input)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| self.corrupt(format!("reading {what}: {e}")))?;
        if buf.len() as u64 != n {
            return Err(self.corrupt(format!("the file ends inside {what}")));
        }
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], StoreError> {
        let mut buf = [0u8; N];
        self.input
            .read_exact(&mut buf)
            .map_err(|e| self.corrupt(format!("reading {what}: {e}")))?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn header_bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        let magic: [u8; 8] = self.take_array("the magic")?;
        if &magic != SNAP_MAGIC {
            return Err(self.corrupt("not a Mozen snapshot (bad magic)"));
        }
        let version = u32::from_le_bytes(self.take_array("the format version")?);
        if version != SNAPSHOT_FORMAT {
            return Err(self.corrupt(format!(
                "snapshot format {version}, this build reads {SNAPSHOT_FORMAT}"
            )));
        }
        let len = u64::from_le_bytes(self.take_array("the header length")?);
        let hash: [u8; 32] = self.take_array("the header hash")?;
        let header = self.take(len, "the header")?;
        if blake3::hash(&header).as_bytes() != &hash {
            return Err(self.corrupt("the header hash does not match"));
        }
        Ok(header)
    }

    /// Reads and decodes the header: the snapshot's metadata and the state.
    fn header(&mut self) -> Result<(SnapshotMeta, ClusterState), StoreError> {
        let bytes = self.header_bytes()?;
        let h: Header = decode_exact(&bytes).map_err(|e| self.corrupt(format!("header: {e}")))?;
        Ok((h.meta, h.state))
    }

    fn skip_header(&mut self) -> Result<(), StoreError> {
        self.header_bytes().map(drop)
    }

    /// The next record, or None at the trailer (which is then checked).
    fn next_record(&mut self) -> Result<Option<SnapRecord>, StoreError> {
        let [tag] = self.take_array::<1>("a record tag")?;
        match tag {
            SNAP_RECORD => {
                let key: [u8; 32] = self.take_array("a record key")?;
                let len = u32::from_le_bytes(self.take_array("a record length")?);
                let value = self.take(u64::from(len), "a record")?;
                self.records += 1;
                Ok(Some((key, value)))
            }
            SNAP_END => {
                let count = u64::from_le_bytes(self.take_array("the record count")?);
                if count != self.records {
                    return Err(self.corrupt(format!(
                        "the trailer counts {count} records, the file holds {}",
                        self.records
                    )));
                }
                let expected = *self.hasher.finalize().as_bytes();
                let mut hash = [0u8; 32];
                self.input
                    .read_exact(&mut hash)
                    .map_err(|e| self.corrupt(format!("reading the file hash: {e}")))?;
                if hash != expected {
                    return Err(self.corrupt("the file hash does not match"));
                }
                Ok(None)
            }
            t => Err(self.corrupt(format!("unknown record tag {t}"))),
        }
    }

    /// Checks that nothing follows the trailer.
    fn finish(&mut self) -> Result<(), StoreError> {
        let mut probe = [0u8; 1];
        match self.input.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt("bytes after the trailer")),
            Err(e) => Err(self.corrupt(format!("reading past the trailer: {e}"))),
        }
    }

    /// Reads every record, checking that each result decodes and that the hashes match.
    fn verify_records(&mut self) -> Result<(), StoreError> {
        while let Some((key, value)) = self.next_record()? {
            decode_exact::<Outcome>(&value)
                .map_err(|e| self.corrupt(format!("result of request {}: {e}", hex_of(&key))))?;
        }
        self.finish()
    }
}

// ----- helpers -----

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn sled_err(tree: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Sled { tree, source }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "<blocking storage task>".into(),
        source: io::Error::other(e.to_string()),
    }
}

/// Maps a store error to openraft's at the trait boundary, keeping the message (tree, key).
fn to_storage(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl Fn(StoreError) -> StorageError<u64> {
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::new(&e)).into()
}

/// Whether sled key `k` has a result in `small`.
fn is_small_key(small: &BTreeMap<RequestKey, IVec>, k: &[u8]) -> bool {
    <[u8; 32]>::try_from(k).is_ok_and(|k| small.contains_key(&RequestKey(k)))
}

/// The small results (see [`SMALL_OUTCOME`]) among the records of snapshot file `path`.
fn small_records(path: &Path) -> Result<BTreeMap<RequestKey, IVec>, StoreError> {
    let mut r = SnapReader::open(path)?;
    r.skip_header()?;
    let mut small = BTreeMap::new();
    while let Some((key, value)) = r.next_record()? {
        if value.len() <= SMALL_OUTCOME {
            small.insert(RequestKey(key), IVec::from(&value[..]));
        }
    }
    r.finish()?;
    Ok(small)
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a whole value: trailing bytes mean damage too.
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} unexpected trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn get_decoded<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(sled_err(name))? {
        None => Ok(None),
        Some(v) => decode_exact(unseal(name, key.as_bytes(), &v)?)
            .map(Some)
            .map_err(|reason| StoreError::Corrupt {
                tree: name,
                key: key.to_string(),
                reason,
            }),
    }
}

fn put_encoded<T: Serialize>(
    tree: &sled::Tree,
    name: &'static str,
    key: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    tree.insert(key, seal(name, key.as_bytes(), encode(key, value)?))
        .map(drop)
        .map_err(sled_err(name))
}

/// A snapshot file name stored under `key` in the meta tree.
fn get_name(meta: &sled::Tree, key: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
    match meta.get(key).map_err(sled_err(TREE_META))? {
        None => Ok(None),
        Some(v) => Ok(Some(unseal(TREE_META, key.as_bytes(), &v)?.to_vec())),
    }
}

fn put_name(meta: &sled::Tree, key: &'static str, name: &str) -> Result<(), StoreError> {
    meta.insert(
        key,
        seal(TREE_META, key.as_bytes(), name.as_bytes().to_vec()),
    )
    .map(drop)
    .map_err(sled_err(TREE_META))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mozen_model::TaskError;
    use tempfile::TempDir;

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 8 << 20,
        }
    }

    fn k(n: u8) -> RequestKey {
        RequestKey([n; 32])
    }

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "t".into(),
        }
    }

    #[test]
    fn snapshot_file_round_trips() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("1.snap");
        let mut w = SnapWriter::create(&path, &encode_header(&meta(), &ClusterState::new())?)?;
        w.record(&[1; 32], b"one")?;
        w.record(&[2; 32], b"")?;
        let bytes = w.finish()?;
        assert_eq!(bytes, fs::metadata(&path).expect("file").len());

        let mut r = SnapReader::open(&path)?;
        let (m, st) = r.header()?;
        assert_eq!(m, meta());
        assert_eq!(st, ClusterState::new());
        assert_eq!(r.next_record()?, Some(([1; 32], b"one".to_vec())));
        assert_eq!(r.next_record()?, Some(([2; 32], Vec::new())));
        assert_eq!(r.next_record()?, None);
        r.finish()
    }

    #[test]
    fn damaged_record_fails_the_file_hash() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("1.snap");
        let mut w = SnapWriter::create(&path, &encode_header(&meta(), &ClusterState::new())?)?;
        w.record(&[1; 32], b"payload")?;
        w.finish()?;
        let mut bytes = fs::read(&path).expect("read");
        let at = bytes.len() - 32 - 8 - 1 - 2; // inside "payload"
        bytes[at] ^= 1;
        fs::write(&path, bytes).expect("write");
        let mut r = SnapReader::open(&path)?;
        r.header()?;
        assert!(r.next_record()?.is_some());
        let err = r.next_record().expect_err("hash mismatch");
        assert!(err.to_string().contains("file hash"), "{err}");
        Ok(())
    }

    #[test]
    fn decode_exact_refuses_trailing_bytes() {
        let mut bytes = postcard::to_allocvec(&7u64).expect("encode");
        assert_eq!(decode_exact::<u64>(&bytes), Ok(7));
        bytes.push(0);
        assert!(decode_exact::<u64>(&bytes).is_err());
    }

    /// A result too long to be kept in memory (see [`SMALL_OUTCOME`]).
    fn large(s: &str) -> Outcome {
        Outcome::Value(format!("{s}{}", "-".repeat(SMALL_OUTCOME)).into_bytes())
    }

    #[test]
    fn small_results_stay_out_of_sled_and_survive_a_snapshot_and_a_restart()
    -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let small = |s: &str| Outcome::Value(s.as_bytes().to_vec());
        {
            let (_log, sm) = open(dir.path(), &opts())?;
            sm.inner.write_effects(&[
                Effect::PutOutcome(k(1), small("null")),
                Effect::PutOutcome(k(2), large("b")),
                Effect::PutOutcome(k(3), large("c")),
                Effect::PutOutcome(k(4), small("4")),
            ])?;
            // Key 2 run again with a small result (its sled value is shadowed), key 4 with a
            // large one (its small one goes).
            sm.inner.write_effects(&[
                Effect::PutOutcome(k(2), small("2")),
                Effect::PutOutcome(k(4), large("d")),
            ])?;
            assert_eq!(sm.outcome(&k(1))?, Some(small("null")));
            assert_eq!(sm.outcome(&k(2))?, Some(small("2")));
            assert_eq!(sm.outcome(&k(4))?, Some(large("d")));
            assert_eq!(read_lock(&sm.inner.small).len(), 2, "keys 1 and 2");
            *lock(&sm.inner.capture) = Some(Capture::default());
            let small_now = read_lock(&sm.inner.small).clone();
            let header = encode_header(&meta(), &ClusterState::new())?;
            let snap = sm.inner.write_snapshot(meta(), header, small_now)?;
            let mut r = SnapReader::open(&snap.path)?;
            r.skip_header()?;
            let mut keys = Vec::new();
            while let Some((key, _)) = r.next_record()? {
                keys.push(key[0]);
            }
            assert_eq!(keys, [1, 2, 3, 4], "each result once, in key order");
            let marker = sm.inner.meta.get(KEY_NO_SMALL).expect("meta");
            let name = snap
                .path
                .file_name()
                .expect("name")
                .as_encoded_bytes()
                .to_vec();
            assert_ne!(
                marker.as_deref(),
                Some(&name[..]),
                "the open must read it back"
            );
            // Deleted after the snapshot: the restart goes back to the snapshot (the log
            // entries after it are applied again).
            sm.inner.write_effects(&[Effect::DeleteOutcome(k(1))])?;
            assert_eq!(sm.outcome(&k(1))?, None);
        }
        let (_log, sm) = open(dir.path(), &opts())?;
        assert_eq!(sm.outcome(&k(1))?, Some(small("null")));
        assert_eq!(sm.outcome(&k(2))?, Some(small("2")));
        assert_eq!(sm.outcome(&k(3))?, Some(large("c")));
        assert_eq!(sm.outcome(&k(4))?, Some(large("d")));
        sm.inner.write_effects(&[Effect::DeleteOutcome(k(2))])?;
        assert_eq!(sm.outcome(&k(2))?, None, "the shadowed sled value goes too");
        Ok(())
    }

    #[test]
    fn a_snapshot_without_short_results_is_not_read_again_at_open() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let name = {
            let (_log, sm) = open(dir.path(), &opts())?;
            sm.inner
                .write_effects(&[Effect::PutOutcome(k(1), large("a"))])?;
            *lock(&sm.inner.capture) = Some(Capture::default());
            let header = encode_header(&meta(), &ClusterState::new())?;
            let snap = sm.inner.write_snapshot(meta(), header, BTreeMap::new())?;
            sm.inner.db.flush().map_err(sled_err("db"))?;
            snap.path
        };
        let marker = {
            let (_log, sm) = open(dir.path(), &opts())?;
            assert_eq!(sm.outcome(&k(1))?, Some(large("a")));
            get_name(&sm.inner.meta, KEY_NO_SMALL)?
        };
        let file = name.file_name().expect("name").as_encoded_bytes();
        assert_eq!(marker.as_deref(), Some(file));
        // The marker spares keeping the records, not checking them: with the file's records
        // damaged, the open fails naming the file.
        let mut bytes = fs::read(&name).expect("read");
        let at = bytes.len() - 32 - 8 - 1 - 2;
        bytes[at] ^= 1;
        fs::write(&name, bytes).expect("write");
        let err = open(dir.path(), &opts()).err().expect("damage is seen");
        assert!(err.to_string().contains("snapshots"), "{err}");
        Ok(())
    }

    #[test]
    fn capture_saves_first_values_of_keys_ahead_of_the_scan() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let (_log, sm) = open(dir.path(), &opts())?;
        let inner = &sm.inner;
        let v = large;
        inner.write_effects(&[
            Effect::PutOutcome(k(3), v("a")),
            Effect::PutOutcome(k(7), v("b")),
        ])?;
        *lock(&inner.capture) = Some(Capture {
            cursor: Some(IVec::from(&k(5).0[..])),
            before: HashMap::new(),
        });
        // Key 3 is behind the scan: not saved. Key 7 is ahead: its first value is saved,
        // later changes keep it. Key 9 did not exist: saved as absent.
        inner.write_effects(&[
            Effect::DeleteOutcome(k(3)),
            Effect::PutOutcome(k(7), v("c")),
            Effect::PutOutcome(k(9), v("d")),
        ])?;
        inner.write_effects(&[Effect::DeleteOutcome(k(7))])?;
        let cap = lock(&inner.capture).take().expect("capture");
        assert_eq!(cap.before.len(), 2);
        let saved = cap.before[&IVec::from(&k(7).0[..])].clone().expect("value");
        let saved = unseal(TREE_OUTCOMES, &k(7).0, &saved)?;
        assert_eq!(decode_exact::<Outcome>(saved), Ok(v("b")));
        assert_eq!(cap.before[&IVec::from(&k(9).0[..])], None);
        assert_eq!(sm.outcome(&k(7))?, None);
        assert_eq!(sm.outcome(&k(9))?, Some(v("d")));
        Ok(())
    }

    #[test]
    fn log_reads_handle_empty_and_reversed_ranges() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let (log, _sm) = open(dir.path(), &opts())?;
        assert!(log.inner.entries(5..5)?.is_empty());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = log.inner.entries(6..=2)?;
        assert!(reversed.is_empty());
        assert_eq!(log.log_len(), 0);
        Ok(())
    }

    #[test]
    fn truncate_and_purge_cut_inside_chunks() {
        use openraft::storage::RaftLogStorageExt;
        use openraft::{CommittedLeaderId, EntryPayload};
        let dir = TempDir::new().expect("tempdir");
        let (mut log, _sm) = open(dir.path(), &opts()).expect("open");
        let id = |i: u64| LogId::new(CommittedLeaderId::new(1, 1), i);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            // 600 entries in one append: chunks of 256, 256 and 88.
            let entries = (0..600).map(|i| Entry {
                log_id: id(i),
                payload: EntryPayload::Blank,
            });
            log.blocking_append(entries).await?;
            assert_eq!(log.inner.log.len(), 3);
            log.truncate(id(300)).await?;
            log.purge(id(100)).await?;
            let got: Vec<u64> = log
                .try_get_log_entries(0..1000)
                .await?
                .iter()
                .map(|e| e.log_id.index)
                .collect();
            assert_eq!(got, (101..300).collect::<Vec<_>>());
            assert_eq!(log.log_len(), 199);
            // Appending over stored entries replaces them.
            log.blocking_append([Entry {
                log_id: id(150),
                payload: EntryPayload::Blank,
            }])
            .await?;
            let last = log.get_log_state().await?.last_log_id;
            assert_eq!(last, Some(id(150)));
            assert_eq!(log.try_get_log_entries(140..).await?.len(), 11);
            Ok::<(), StorageError<u64>>(())
        })
        .expect("log operations");
    }

    #[test]
    fn loading_results_writes_only_the_differences() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let (_log, sm) = open(dir.path(), &opts())?;
        let v = large;
        sm.inner.write_effects(&[
            Effect::PutOutcome(k(1), v("a")),
            Effect::PutOutcome(k(2), v("b")),
            Effect::PutOutcome(k(4), v("d")),
        ])?;
        let path = dir.path().join("x.snap");
        let mut w = SnapWriter::create(&path, &encode_header(&meta(), &ClusterState::new())?)?;
        for (n, s) in [(1, "a"), (2, "B"), (3, "c")] {
            w.record(&k(n).0, &encode("outcome", &v(s))?)?;
        }
        w.finish()?;
        sm.inner.load_outcomes(&path)?;
        assert_eq!(sm.outcome(&k(1))?, Some(v("a")));
        assert_eq!(sm.outcome(&k(2))?, Some(v("B")));
        assert_eq!(sm.outcome(&k(3))?, Some(v("c")));
        assert_eq!(sm.outcome(&k(4))?, None);
        assert_eq!(sm.inner.outcomes.len(), 3);
        Ok(())
    }

    #[test]
    fn pending_marker_without_its_file_is_dropped_at_open() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        {
            let (_log, sm) = open(dir.path(), &opts())?;
            let err = Outcome::Error(TaskError::new(
                "X",
                "kept in sm_outcomes over a restart ".repeat(3),
            ));
            sm.inner
                .write_effects(&[Effect::PutOutcome(k(1), err.clone())])?;
            put_name(
                &sm.inner.meta,
                KEY_OUTCOMES_PENDING,
                "00000000000000000009.snap",
            )?;
            sm.inner.db.flush().map_err(sled_err("db"))?;
        }
        let (_log, sm) = open(dir.path(), &opts())?;
        assert!(
            sm.inner
                .meta
                .get(KEY_OUTCOMES_PENDING)
                .expect("get")
                .is_none()
        );
        // sm_outcomes was not touched.
        assert!(sm.outcome(&k(1))?.is_some());
        Ok(())
    }

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

    #[test]
    fn interrupted_install_reloads_results_from_the_snapshot_at_open() -> Result<(), StoreError> {
        let dir = TempDir::new().expect("tempdir");
        let v = Outcome::Value(b"kept".to_vec());
        let name = {
            let (_log, sm) = open(dir.path(), &opts())?;
            sm.inner
                .write_effects(&[Effect::PutOutcome(k(1), v.clone())])?;
            *lock(&sm.inner.capture) = Some(Capture::default());
            let header = encode_header(&meta(), &ClusterState::new())?;
            let small = read_lock(&sm.inner.small).clone();
            let snap = sm.inner.write_snapshot(meta(), header, small)?;
            // A crash halfway through loading the results of that snapshot.
            sm.inner.outcomes.clear().map_err(sled_err(TREE_OUTCOMES))?;
            sm.inner
                .write_effects(&[Effect::PutOutcome(k(2), v.clone())])?;
            let name = snap.path.file_name().expect("name").to_owned();
            put_name(
                &sm.inner.meta,
                KEY_OUTCOMES_PENDING,
                name.to_str().expect("a file name of digits"),
            )?;
            sm.inner.db.flush().map_err(sled_err("db"))?;
            name
        };
        let (_log, sm) = open(dir.path(), &opts())?;
        assert_eq!(sm.outcome(&k(1))?, Some(v));
        assert_eq!(sm.outcome(&k(2))?, None);
        assert!(
            sm.inner
                .meta
                .get(KEY_OUTCOMES_PENDING)
                .expect("get")
                .is_none()
        );
        assert!(dir.path().join("snapshots").join(name).exists());
        Ok(())
    }
}
