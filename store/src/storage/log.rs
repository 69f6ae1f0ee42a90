//! The Raft log and the vote: [`LogStore`], its flusher thread and its openraft
//! `RaftLogStorage`/`RaftLogReader` implementations, and the log chunks it stores.
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

use super::codec::{
    KEY_COMMITTED, KEY_IDENTITY, KEY_LAST_PURGED, KEY_VOTE, TREE_LOG, TREE_META, decode_exact,
    get_decoded, hex_of, put_encoded, sled_err, to_storage,
};
use crate::error::StoreError;
use crate::mark::Watermark;
use crate::raft_types::{Entry, LogId, TypeConfig, Vote};
use crate::seal::{seal, unseal};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageError};
use sled::IVec;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Wraps the opened trees and starts the flusher thread; fails only if the thread cannot
    /// be spawned.
    pub(super) fn start(
        db: sled::Db,
        log: sled::Tree,
        meta: sled::Tree,
        snap_dir: PathBuf,
        mark: Arc<Watermark>,
        torn_tail: Option<String>,
    ) -> io::Result<Self> {
        let (flush_tx, flush_rx) = std::sync::mpsc::channel();
        let flusher = {
            let db = db.clone();
            let mark = mark.clone();
            std::thread::Builder::new()
                .name("mozen-log-flush".into())
                .spawn(move || flush_in_background(db, mark, flush_rx))?
        };
        Ok(LogStore {
            inner: Arc::new(LogInner {
                db,
                log,
                meta,
                snap_dir,
                mark,
                torn_tail,
                flush_tx: Some(flush_tx),
                flusher: Some(flusher),
            }),
        })
    }

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

pub(super) fn chunk_key(key: &[u8]) -> Result<u64, StoreError> {
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
pub(super) fn decode_chunk(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StoreOptions, open};
    use tempfile::TempDir;

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 8 << 20,
        }
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
}
