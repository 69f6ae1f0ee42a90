//! openraft storage (storage-v2) on one sled `Db` per agent.
//!
//! Layout of a data dir:
//! - `db/`: sled, with trees `raft_log` (big-endian u64 index -> postcard `Entry`),
//!   `raft_meta` (format version, vote, committed, last purged, node identity) and
//!   `sm_outcomes` (32-byte request key -> postcard `Outcome`);
//! - `snapshots/`: snapshot files `snap-<index>-<term>.bin`, written to a temporary file,
//!   fsynced and renamed, older ones deleted.
//!
//! Persistence design: the `ClusterState` (everything but result payloads) lives in memory and
//! is persisted only in snapshots; result payloads go to `sm_outcomes` as they are applied, so
//! a million memoized results never sit in RAM. At start the state is loaded from the newest
//! snapshot and openraft re-applies the committed entries after it (we persist `committed`),
//! so a restart never replays the log from index 0 once a snapshot exists. Re-applying is
//! harmless: apply is deterministic and the outcome writes are idempotent.
//!
//! Durability: `save_vote` flushes before returning; `append` inserts, flushes (on a blocking
//! thread, never `flush_async`) and only then reports the IO complete; `purge` records
//! `last_purged` before deleting. A flush covers every tree, so outcomes written by apply reach
//! disk with the next append at the latest; building a snapshot flushes first as well.

use crate::command::{Command, Response};
use crate::error::StoreError;
use crate::raft_types::*;
use crate::state::{ClusterState, Effect};
use mozen_model::{Outcome, RequestKey};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError,
};
use std::fmt::Debug;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Version of the on-disk layout; a data dir with another version is refused.
pub const FORMAT_VERSION: u32 = 1;
const SNAP_MAGIC: &[u8; 8] = b"MZSNAP1\n";

const T_LOG: &str = "raft_log";
const T_META: &str = "raft_meta";
const T_OUT: &str = "sm_outcomes";
const K_VERSION: &str = "format_version";
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";
const K_IDENTITY: &str = "identity";

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled page cache.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 << 20,
        }
    }
}

/// The replicated state, shared with readers. Take the read lock briefly, never across await.
pub type SharedState = Arc<RwLock<ClusterState>>;

/// Told about every applied batch, after the state's write lock is released.
pub trait ApplyObserver: Send + Sync + 'static {
    fn applied(&self, batch: &[(u64, &Command, &Response)]);
    fn snapshot_installed(&self);
}

struct Trees {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    outcomes: sled::Tree,
    snap_dir: PathBuf,
}

fn sled_err(tree: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Sled { tree, source }
}

fn corrupt(tree: &'static str, key: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: key.into(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn se(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e.to_string())),
    }
}

fn rd_logs(e: impl ToString) -> StorageError<u64> {
    se(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn wr_logs(e: impl ToString) -> StorageError<u64> {
    se(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    se(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    se(ErrorSubject::Snapshot(None), verb, e)
}

impl Trees {
    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.meta.get(key).map_err(sled_err(T_META))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| corrupt(T_META, key, e)),
        }
    }

    fn meta_put<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(v).map_err(|e| corrupt(T_META, key, e))?;
        self.meta.insert(key, bytes).map_err(sled_err(T_META))?;
        Ok(())
    }

    fn entry_at(&self, k: &[u8], v: &[u8]) -> Result<Entry, StoreError> {
        let idx = <[u8; 8]>::try_from(k)
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(T_LOG, hex(k), "key is not 8 bytes"))?;
        postcard::from_bytes(v).map_err(|e| {
            corrupt(
                T_LOG,
                idx.to_string(),
                format!("entry does not decode: {e}"),
            )
        })
    }

    fn outcome(&self, key: &RequestKey) -> Result<Option<Outcome>, StoreError> {
        match self.outcomes.get(key.0).map_err(sled_err(T_OUT))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| corrupt(T_OUT, key.to_hex(), e)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn flush(db: &sled::Db) -> Result<(), StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
        .await
        .map_err(|e| StoreError::Io {
            path: "sled flush".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(sled_err("db"))
}

/// Opens (creating if needed) the data dir.
pub fn open(dir: &Path, opts: &StoreOptions) -> Result<(LogStore, StateMachineStore), StoreError> {
    let snap_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir).map_err(io_err(&snap_dir))?;
    let db_dir = dir.join("db");
    let db = sled::Config::new()
        .path(&db_dir)
        .cache_capacity(opts.cache_capacity_bytes)
        .open()
        .map_err(sled_err("db"))?;
    let t = |name: &'static str| db.open_tree(name).map_err(sled_err(name));
    let trees = Arc::new(Trees {
        log: t(T_LOG)?,
        meta: t(T_META)?,
        outcomes: t(T_OUT)?,
        db: db.clone(),
        snap_dir,
    });
    match trees.meta.get(K_VERSION).map_err(sled_err(T_META))? {
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).ok();
            if found != Some(FORMAT_VERSION) {
                return Err(StoreError::Version {
                    dir: dir.display().to_string(),
                    found: found
                        .map_or_else(|| format!("unreadable ({})", hex(&v)), |f| f.to_string()),
                    expected: FORMAT_VERSION,
                });
            }
        }
        None => {
            if !trees.log.is_empty() || !trees.meta.is_empty() {
                return Err(StoreError::Version {
                    dir: dir.display().to_string(),
                    found: "none".into(),
                    expected: FORMAT_VERSION,
                });
            }
            trees
                .meta
                .insert(K_VERSION, &FORMAT_VERSION.to_be_bytes())
                .map_err(sled_err(T_META))?;
            db.flush().map_err(sled_err("db"))?;
        }
    }
    // Check the log's ends decode, so damage is reported at open, not deep inside Raft.
    for kv in [trees.log.first(), trees.log.last()] {
        if let Some((k, v)) = kv.map_err(sled_err(T_LOG))? {
            trees.entry_at(&k, &v)?;
        }
    }
    let _: Option<Vote> = trees.meta_get(K_VOTE)?;
    let _: Option<LogId> = trees.meta_get(K_PURGED)?;
    let sm = StateMachineStore::load(trees.clone())?;
    Ok((LogStore { t: trees }, sm))
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    t: Arc<Trees>,
}

impl LogStore {
    /// This agent's node id, if one was stored.
    pub fn read_identity(&self) -> Result<Option<u64>, StoreError> {
        self.t.meta_get(K_IDENTITY)
    }

    /// Stores this agent's node id durably.
    pub fn write_identity(&self, id: u64) -> Result<(), StoreError> {
        self.t.meta_put(K_IDENTITY, &id)?;
        self.t.db.flush().map_err(sled_err("db"))?;
        Ok(())
    }

    /// Bytes on disk (sled's estimate).
    pub fn disk_size(&self) -> u64 {
        self.t.db.size_on_disk().unwrap_or(0)
    }

    /// Entries currently in the log.
    pub fn log_len(&self) -> u64 {
        self.t.log.len() as u64
    }

    /// Flushes everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.t.db.flush().map(|_| ()).map_err(sled_err("db"))
    }

    fn range_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Bound::Included(e.to_be_bytes()),
            Bound::Excluded(e) => Bound::Excluded(e.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self
            .t
            .log
            .range((Bound::Included(start.to_be_bytes()), end))
        {
            let (k, v) = kv.map_err(sled_err(T_LOG))?;
            out.push(self.t.entry_at(&k, &v)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        self.range_entries(range).map_err(rd_logs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let purged: Option<LogId> = self.t.meta_get(K_PURGED).map_err(rd_logs)?;
        let last = match self.t.log.last().map_err(|e| rd_logs(sled_err(T_LOG)(e)))? {
            Some((k, v)) => Some(self.t.entry_at(&k, &v).map_err(rd_logs)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let w = |e: StoreError| se(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.t.meta_put(K_VOTE, vote).map_err(w)?;
        flush(&self.t.db).await.map_err(w)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        self.t
            .meta_get(K_VOTE)
            .map_err(|e| se(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        self.t.meta_put(K_COMMITTED, &committed).map_err(wr_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self
            .t
            .meta_get::<Option<LogId>>(K_COMMITTED)
            .map_err(rd_logs)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = postcard::to_allocvec(&e).map_err(wr_logs)?;
            batch.insert(&e.log_id.index.to_be_bytes(), bytes);
        }
        self.t
            .log
            .apply_batch(batch)
            .map_err(|e| wr_logs(sled_err(T_LOG)(e)))?;
        match flush(&self.t.db).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(wr_logs(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let mut batch = sled::Batch::default();
        for kv in self.t.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = kv.map_err(|e| wr_logs(sled_err(T_LOG)(e)))?;
            batch.remove(k);
        }
        self.t
            .log
            .apply_batch(batch)
            .map_err(|e| wr_logs(sled_err(T_LOG)(e)))?;
        flush(&self.t.db).await.map_err(wr_logs)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.t.meta_put(K_PURGED, &log_id).map_err(wr_logs)?;
        flush(&self.t.db).await.map_err(wr_logs)?;
        let mut batch = sled::Batch::default();
        for kv in self.t.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = kv.map_err(|e| wr_logs(sled_err(T_LOG)(e)))?;
            batch.remove(k);
        }
        self.t
            .log
            .apply_batch(batch)
            .map_err(|e| wr_logs(sled_err(T_LOG)(e)))
    }
}

#[derive(Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, PathBuf, u64)>,
}

/// The state machine: in-memory `ClusterState`, payloads in sled, snapshots in files.
#[derive(Clone)]
pub struct StateMachineStore {
    t: Arc<Trees>,
    state: SharedState,
    applied: Arc<Mutex<Applied>>,
    observer: Arc<Mutex<Option<Arc<dyn ApplyObserver>>>>,
}

impl StateMachineStore {
    fn load(t: Arc<Trees>) -> Result<Self, StoreError> {
        let mut applied = Applied::default();
        let mut state = ClusterState::new();
        if let Some((path, meta_idx)) = newest_snapshot(&t.snap_dir)? {
            let _ = meta_idx;
            let f = std::fs::File::open(&path).map_err(io_err(&path))?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut r = BufReader::new(f);
            let (meta, st) = read_snapshot_head(&mut r, &path)?;
            state = st;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.snapshot = Some((meta, path, size));
        }
        Ok(StateMachineStore {
            t,
            state: Arc::new(RwLock::new(state)),
            applied: Arc::new(Mutex::new(applied)),
            observer: Arc::new(Mutex::new(None)),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// The memoized outcome of a request, read from sled.
    pub fn outcome(&self, key: &RequestKey) -> Result<Option<Outcome>, StoreError> {
        self.t.outcome(key)
    }

    pub fn set_observer(&self, obs: Arc<dyn ApplyObserver>) {
        *self.observer.lock().expect("observer lock") = Some(obs);
    }

    /// Index and size of the newest snapshot.
    pub fn last_snapshot(&self) -> Option<(u64, u64)> {
        let a = self.applied.lock().expect("applied lock");
        a.snapshot
            .as_ref()
            .map(|(m, _, size)| (m.last_log_id.map_or(0, |l| l.index), *size))
    }

    fn write_effects(&self, effects: Vec<Effect>) -> Result<(), StoreError> {
        if effects.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for e in effects {
            match e {
                Effect::PutOutcome(k, o) => {
                    let bytes =
                        postcard::to_allocvec(&o).map_err(|err| corrupt(T_OUT, k.to_hex(), err))?;
                    batch.insert(&k.0, bytes);
                }
                Effect::DeleteOutcome(k) => batch.remove(&k.0),
            }
        }
        self.t.outcomes.apply_batch(batch).map_err(sled_err(T_OUT))
    }
}

fn snap_name(meta: &SnapshotMeta) -> String {
    let (idx, term) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.index, l.leader_id.term));
    format!("snap-{idx:020}-{term:020}.bin")
}

fn newest_snapshot(dir: &Path) -> Result<Option<(PathBuf, u64)>, StoreError> {
    let mut best: Option<(PathBuf, u64)> = None;
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name
            .strip_prefix("snap-")
            .and_then(|r| r.strip_suffix(".bin"))
            && let Some(idx) = rest.split('-').next().and_then(|i| i.parse::<u64>().ok())
            && best.as_ref().is_none_or(|(_, b)| idx >= *b)
        {
            best = Some((e.path(), idx));
        }
    }
    Ok(best)
}

fn read_exact_or<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), StoreError> {
    r.read_exact(buf).map_err(|e| {
        corrupt(
            "snapshots",
            path.display().to_string(),
            format!("{what}: {e}"),
        )
    })
}

fn read_snapshot_head<R: Read>(
    r: &mut R,
    path: &Path,
) -> Result<(SnapshotMeta, ClusterState), StoreError> {
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, path, "header")?;
    if &magic != SNAP_MAGIC {
        return Err(corrupt(
            "snapshots",
            path.display().to_string(),
            "not a Mozen snapshot (bad magic)",
        ));
    }
    let mut len = [0u8; 8];
    read_exact_or(r, &mut len, path, "meta length")?;
    let mut buf = vec![0u8; u64::from_be_bytes(len) as usize];
    read_exact_or(r, &mut buf, path, "meta")?;
    let meta: SnapshotMeta = postcard::from_bytes(&buf)
        .map_err(|e| corrupt("snapshots", path.display().to_string(), e))?;
    read_exact_or(r, &mut len, path, "state length")?;
    let n = u64::from_be_bytes(len) as usize;
    let mut buf = Vec::new();
    r.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() != n {
        return Err(corrupt(
            "snapshots",
            path.display().to_string(),
            "state is truncated",
        ));
    }
    let state: ClusterState = postcard::from_bytes(&buf)
        .map_err(|e| corrupt("snapshots", path.display().to_string(), e))?;
    Ok((meta, state))
}

/// Reads the outcome records after the head: (key, postcard outcome bytes).
fn for_each_outcome<R: Read>(
    r: &mut R,
    path: &Path,
    mut f: impl FnMut([u8; 32], Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    loop {
        let mut key = [0u8; 32];
        match r.read_exact(&mut key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        }
        let mut len = [0u8; 4];
        read_exact_or(r, &mut len, path, "outcome length")?;
        let mut v = vec![0u8; u32::from_be_bytes(len) as usize];
        read_exact_or(r, &mut v, path, "outcome")?;
        f(key, v)?;
    }
}

/// Writes a snapshot file: header, meta, state, then every terminal request's outcome.
fn write_snapshot(
    t: &Trees,
    meta: &SnapshotMeta,
    state: &ClusterState,
) -> Result<(PathBuf, u64), StoreError> {
    let final_path = t.snap_dir.join(snap_name(meta));
    let tmp = t.snap_dir.join(format!("{}.tmp", snap_name(meta)));
    let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let meta_b = postcard::to_allocvec(meta).map_err(|e| corrupt("snapshots", "meta", e))?;
    let state_b = postcard::to_allocvec(state).map_err(|e| corrupt("snapshots", "state", e))?;
    let wr = |w: &mut BufWriter<std::fs::File>, b: &[u8]| w.write_all(b).map_err(io_err(&tmp));
    wr(&mut w, SNAP_MAGIC)?;
    wr(&mut w, &(meta_b.len() as u64).to_be_bytes())?;
    wr(&mut w, &meta_b)?;
    wr(&mut w, &(state_b.len() as u64).to_be_bytes())?;
    wr(&mut w, &state_b)?;
    drop(state_b);
    for r in state.requests().filter(|r| r.state.is_terminal()) {
        if let Some(v) = t.outcomes.get(r.key.0).map_err(sled_err(T_OUT))? {
            wr(&mut w, &r.key.0)?;
            wr(&mut w, &(v.len() as u32).to_be_bytes())?;
            wr(&mut w, &v)?;
        }
    }
    let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    f.sync_all().map_err(io_err(&tmp))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    if let Ok(d) = std::fs::File::open(&t.snap_dir) {
        let _ = d.sync_all();
    }
    remove_older(&t.snap_dir, &final_path);
    Ok((final_path, size))
}

fn remove_older(dir: &Path, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p != keep
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("snap-"))
            {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<u64>> {
        let (state, last, membership) = {
            let a = self.applied.lock().expect("applied lock");
            let st = self.state.read().expect("state lock").clone();
            (st, a.last_applied, a.membership.clone())
        };
        let id = format!(
            "{}-{}",
            last.map_or(0, |l| l.leader_id.term),
            last.map_or(0, |l| l.index)
        );
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: id,
        };
        let t = self.t.clone();
        let m2 = meta.clone();
        let (path, size) =
            tokio::task::spawn_blocking(move || -> Result<(PathBuf, u64), StoreError> {
                t.db.flush().map_err(sled_err("db"))?;
                write_snapshot(&t, &m2, &state)
            })
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.applied.lock().expect("applied lock").snapshot =
            Some((meta.clone(), path.clone(), size));
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let a = self.applied.lock().expect("applied lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut replies = Vec::with_capacity(entries.len());
        let effects;
        {
            let mut a = self.applied.lock().expect("applied lock");
            let mut st = self.state.write().expect("state lock");
            for e in &entries {
                a.last_applied = Some(e.log_id);
                let r = match &e.payload {
                    EntryPayload::Normal(cmd) => st.apply(cmd),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        Response::Ok
                    }
                    EntryPayload::Blank => Response::Ok,
                };
                replies.push(r);
            }
            effects = st.take_effects();
        }
        self.write_effects(effects)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let obs = self.observer.lock().expect("observer lock").clone();
        if let Some(obs) = obs {
            let batch: Vec<(u64, &Command, &Response)> = entries
                .iter()
                .zip(&replies)
                .filter_map(|(e, r)| match &e.payload {
                    EntryPayload::Normal(c) => Some((e.log_id.index, c, r)),
                    _ => None,
                })
                .collect();
            if !batch.is_empty() {
                obs.applied(&batch);
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let p = self
            .t
            .snap_dir
            .join(format!("incoming-{}.tmp", std::process::id()));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        use tokio::io::AsyncSeekExt;
        let mut src = *snapshot;
        src.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let src = src.into_std().await;
        let t = self.t.clone();
        let meta2 = meta.clone();
        let (state, path, size) = tokio::task::spawn_blocking(
            move || -> Result<(ClusterState, PathBuf, u64), StoreError> {
                let final_path = t.snap_dir.join(snap_name(&meta2));
                let tmp = t.snap_dir.join(format!("{}.tmp", snap_name(&meta2)));
                // Keep a durable copy first, then rebuild the state and the outcomes tree from it.
                {
                    let mut out = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                    let mut r = BufReader::new(&src);
                    std::io::copy(&mut r, &mut out).map_err(io_err(&tmp))?;
                    out.sync_all().map_err(io_err(&tmp))?;
                }
                let f = std::fs::File::open(&tmp).map_err(io_err(&tmp))?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut r = BufReader::new(f);
                let (_, state) = read_snapshot_head(&mut r, &tmp)?;
                t.outcomes.clear().map_err(sled_err(T_OUT))?;
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for_each_outcome(&mut r, &tmp, |k, v| {
                    batch.insert(&k, v);
                    n += 1;
                    if n % 10_000 == 0 {
                        t.outcomes
                            .apply_batch(std::mem::take(&mut batch))
                            .map_err(sled_err(T_OUT))?;
                    }
                    Ok(())
                })?;
                t.outcomes.apply_batch(batch).map_err(sled_err(T_OUT))?;
                t.db.flush().map_err(sled_err("db"))?;
                std::fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
                remove_older(&t.snap_dir, &final_path);
                Ok((state, final_path, size))
            },
        )
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        {
            let mut a = self.applied.lock().expect("applied lock");
            *self.state.write().expect("state lock") = state;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.snapshot = Some((meta.clone(), path, size));
        }
        let incoming = self
            .t
            .snap_dir
            .join(format!("incoming-{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(incoming);
        let obs = self.observer.lock().expect("observer lock").clone();
        if let Some(obs) = obs {
            obs.snapshot_installed();
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<u64>> {
        let snap = self.applied.lock().expect("applied lock").snapshot.clone();
        match snap {
            None => Ok(None),
            Some((meta, path, _)) => {
                let f = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| snap_err(ErrorVerb::Read, e))?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(f),
                }))
            }
        }
    }
}
