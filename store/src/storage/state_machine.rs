//! The state machine: [`StateMachineStore`], `apply()`, the memoized results, and building
//! and installing snapshots (the file format is in `snapshot_file`).
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
//! A snapshot file is the state followed by every result, short and long, in key order,
//! streamed to a `.part` file, fsynced, then renamed atomically and the directory fsynced.
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

use super::codec::{
    KEY_FLUSHES, KEY_NO_SMALL, KEY_OUTCOMES_PENDING, LOAD_BATCH, TREE_META, TREE_OUTCOMES,
    decode_exact, encode, get_name, io_err, join_err, put_encoded, put_name, sled_err, sync_dir,
    to_storage,
};
use super::snapshot_file::{SnapReader, SnapWriter, encode_header};
use crate::checkpoint::Checkpoints;
use crate::command::{Command, Response};
use crate::error::StoreError;
use crate::mark::Watermark;
use crate::raft_types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::seal::{seal, unseal};
use crate::state::{ClusterState, Effect};
use mozen_model::{Outcome, RequestKey};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageError};
use sled::IVec;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

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
    pub(super) fn load(
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

    /// Index of the last applied entry (0 if none).
    pub(super) fn applied_index(&self) -> u64 {
        self.inner.applied_index()
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StoreOptions, open};
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
