//! The watermark: a small file beside sled, `<dir>/watermark`, recording what this store has
//! made durable and acknowledged: the last flushed log id, the vote, the purge point, and the
//! count of the other flushes the state machine relies on (snapshot results, install markers).
//!
//! sled 0.34 recovers its log by reading forward until a message fails its check and drops
//! everything after it, saying nothing: damage in the middle of its file looks like a crash in
//! the middle of a write. The watermark is what tells the two apart. It is written after each
//! flush it records (so it never claims more than is on disk) and lowered before a truncation
//! (so it never claims entries the log dropped on purpose). At open, a log or vote older than
//! the watermark means acknowledged data was lost: damage. Data beyond the watermark that sled
//! dropped was never acknowledged: a torn tail, trimmed and logged.
//!
//! # Format
//!
//! Two copies of one record, at offsets 0 and 512 (separate sectors), each:
//!
//! ```text
//! "MZMARK\0\x01" | writes u64 LE | len u16 LE | postcard(Mark) | crc32 u32 LE (of all before)
//! ```
//!
//! Every update writes copy 0, then copy 1, with the same content and `writes` one higher than
//! before. A process crash cannot tear a write this small (it is one copy into the page
//! cache), so at open both copies must be valid and either equal, or copy 0 exactly one write
//! ahead (a crash between the two writes). Anything else is damage, named with the file, the
//! offset and what was found. Like sled's flush (`sync_file_range`), the writes survive a
//! process crash, not a power loss.

use crate::error::StoreError;
use crate::raft_types::{LogId, Vote};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The watermark's file name inside the data dir.
pub const MARK_FILE: &str = "watermark";
const MAGIC: &[u8; 8] = b"MZMARK\0\x01";
/// Offset of the second copy.
const SECOND: u64 = 512;
/// Longest encoded record a copy may hold (a few dozen bytes in practice).
const MAX_BODY: usize = SECOND as usize - 8 - 8 - 2 - 4;

/// What the store has made durable, as last recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The last log entry flushed (and so acknowledged): the log must reach at least here.
    pub flushed: Option<LogId>,
    /// The last vote saved: the stored vote must be at least this one.
    pub vote: Option<Vote>,
    /// The last purge point saved.
    pub purged: Option<LogId>,
    /// Count of the state machine's flushes (snapshot results, install markers), also kept in
    /// sled: sled's count must be at least this one.
    pub flushes: u64,
}

/// One copy as read from the file.
fn decode_copy(buf: &[u8]) -> Result<(u64, Mark), String> {
    if buf.iter().all(|b| *b == 0) {
        return Err("zeroes where the record should be".into());
    }
    if &buf[..8] != MAGIC {
        return Err(format!(
            "not a watermark record (starts with {:02x?})",
            &buf[..8]
        ));
    }
    let writes = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let len = u16::from_le_bytes(buf[16..18].try_into().expect("2 bytes")) as usize;
    if len > MAX_BODY {
        return Err(format!(
            "a record length of {len} bytes (at most {MAX_BODY})"
        ));
    }
    let end = 18 + len;
    let stored = u32::from_le_bytes(buf[end..end + 4].try_into().expect("4 bytes"));
    let sum = crc32fast::hash(&buf[..end]);
    if stored != sum {
        return Err(format!(
            "checksum mismatch: the record carries crc32 {stored:08x}, its content sums to {sum:08x}"
        ));
    }
    match postcard::take_from_bytes::<Mark>(&buf[18..end]) {
        Ok((m, [])) => Ok((writes, m)),
        Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
        Err(e) => Err(format!("the record does not decode: {e}")),
    }
}

fn encode_copy(writes: u64, mark: &Mark) -> Result<Vec<u8>, StoreError> {
    let body = postcard::to_allocvec(mark).map_err(|e| StoreError::Encode {
        what: "watermark",
        reason: e.to_string(),
    })?;
    if body.len() > MAX_BODY {
        return Err(StoreError::Encode {
            what: "watermark",
            reason: format!("{} bytes, more than a copy holds", body.len()),
        });
    }
    let mut buf = Vec::with_capacity(SECOND as usize);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&writes.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u16).to_le_bytes());
    buf.extend_from_slice(&body);
    let sum = crc32fast::hash(&buf);
    buf.extend_from_slice(&sum.to_le_bytes());
    buf.resize(SECOND as usize, 0);
    Ok(buf)
}

/// Reads the watermark of data dir `dir`: `None` when the file does not exist.
pub fn read(dir: &Path) -> Result<Option<Mark>, StoreError> {
    let path = dir.join(MARK_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let damaged = |detail: String| StoreError::Damaged {
        dir: dir.display().to_string(),
        detail: format!("{}: {detail}", path.display()),
    };
    if bytes.len() < 2 * SECOND as usize {
        return Err(damaged(format!(
            "the file has {} bytes, a watermark has {} (two copies of {SECOND})",
            bytes.len(),
            2 * SECOND
        )));
    }
    let first = decode_copy(&bytes[..SECOND as usize]);
    let second = decode_copy(&bytes[SECOND as usize..2 * SECOND as usize]);
    match (first, second) {
        (Ok((w0, m0)), Ok((w1, m1))) => {
            if (w0 == w1 && m0 == m1) || w0 == w1 + 1 {
                Ok(Some(m0))
            } else {
                Err(damaged(format!(
                    "its two copies disagree: write {w0} at offset 0, write {w1} at offset {SECOND}"
                )))
            }
        }
        (Err(e), _) => Err(damaged(format!("copy at offset 0: {e}"))),
        (_, Err(e)) => Err(damaged(format!("copy at offset {SECOND}: {e}"))),
    }
}

/// The open watermark file with the record it holds, and the log progress it is kept in step
/// with.
pub struct Watermark {
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    path: PathBuf,
    writes: u64,
    mark: Mark,
    /// The last entry appended to the log (flushed or not).
    appended: Option<LogId>,
    /// Bumped by every truncation: a flush that began before one must not raise the mark to
    /// entries the truncation removed.
    generation: u64,
}

/// What a flush about to run will make durable: see [`Watermark::flushed`].
#[derive(Clone, Copy, Debug)]
pub struct FlushTicket {
    appended: Option<LogId>,
    generation: u64,
}

impl Watermark {
    /// Creates or rewrites the watermark of `dir` with `mark`, durable before it returns.
    pub fn create(dir: &Path, mark: Mark, appended: Option<LogId>) -> Result<Self, StoreError> {
        let path = dir.join(MARK_FILE);
        let io_err = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let mut inner = Inner {
            file,
            path: path.clone(),
            writes: 0,
            mark,
            appended,
            generation: 0,
        };
        inner.write()?;
        inner.file.sync_all().map_err(io_err)?;
        if let Some(parent) = path.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Ok(Watermark {
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record as last written.
    pub fn mark(&self) -> Mark {
        self.lock().mark.clone()
    }

    /// Notes entries appended to the log (not yet flushed), up to `last`.
    pub fn appended(&self, last: LogId) {
        self.lock().appended = Some(last);
    }

    /// Taken just before a flush: what that flush will make durable.
    pub fn ticket(&self) -> FlushTicket {
        let g = self.lock();
        FlushTicket {
            appended: g.appended,
            generation: g.generation,
        }
    }

    /// Records that the flush of `ticket` is done, unless a truncation came in between.
    pub fn flushed(&self, ticket: FlushTicket) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.generation != ticket.generation || ticket.appended <= g.mark.flushed {
            return Ok(());
        }
        g.mark.flushed = ticket.appended;
        g.write()
    }

    /// Lowers the mark to `keep` (the last entry a truncation leaves), before the truncation
    /// is written.
    pub fn truncating(&self, keep: Option<LogId>) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.generation += 1;
        g.appended = keep;
        if g.mark.flushed > keep {
            g.mark.flushed = keep;
            g.write()?;
        }
        Ok(())
    }

    /// Records a vote flushed to sled.
    pub fn voted(&self, vote: Vote) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.mark.vote = Some(vote);
        g.write()
    }

    /// Records a purge point flushed to sled.
    pub fn purged(&self, upto: LogId) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.mark.purged = Some(upto);
        g.write()
    }

    /// The number the next state-machine flush stores in sled before flushing.
    pub fn next_flush(&self) -> u64 {
        self.lock().mark.flushes + 1
    }

    /// Records that the state-machine flush numbered `n` is done.
    pub fn flush_done(&self, n: u64) -> Result<(), StoreError> {
        let mut g = self.lock();
        if n > g.mark.flushes {
            g.mark.flushes = n;
            g.write()?;
        }
        Ok(())
    }
}

impl Inner {
    fn write(&mut self) -> Result<(), StoreError> {
        self.writes += 1;
        let copy = encode_copy(self.writes, &self.mark)?;
        let io_err = |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.write_all_at(&copy, 0).map_err(io_err)?;
        self.file.write_all_at(&copy, SECOND).map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_mark_round_trips_and_follows_flushes_and_truncations() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Io {
            path: "tempdir".into(),
            source,
        })?;
        assert_eq!(read(dir.path())?, None);
        let w = Watermark::create(dir.path(), Mark::default(), None)?;
        w.appended(id(1, 5));
        let t = w.ticket();
        w.appended(id(1, 9));
        w.flushed(t)?;
        assert_eq!(read(dir.path())?.and_then(|m| m.flushed), Some(id(1, 5)));
        // A flush that began before a truncation does not raise the mark past it.
        let before = w.ticket();
        w.truncating(Some(id(1, 3)))?;
        w.flushed(before)?;
        assert_eq!(read(dir.path())?.and_then(|m| m.flushed), Some(id(1, 3)));
        w.voted(Vote::new(2, 3))?;
        w.purged(id(1, 2))?;
        let n = w.next_flush();
        w.flush_done(n)?;
        let m = read(dir.path())?.expect("written");
        assert_eq!(m.vote, Some(Vote::new(2, 3)));
        assert_eq!(m.purged, Some(id(1, 2)));
        assert_eq!(m.flushes, 1);
        Ok(())
    }

    #[test]
    fn a_damaged_copy_is_named_with_its_offset() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Io {
            path: "tempdir".into(),
            source,
        })?;
        let w = Watermark::create(dir.path(), Mark::default(), None)?;
        w.voted(Vote::new(4, 1))?;
        drop(w);
        let path = dir.path().join(MARK_FILE);
        let good = fs::read(&path).map_err(|source| StoreError::Io {
            path: "read".into(),
            source,
        })?;
        for (at, name) in [(0usize, "offset 0"), (SECOND as usize + 20, "offset 512")] {
            let mut bad = good.clone();
            bad[at..at + 30].fill(0);
            fs::write(&path, &bad).map_err(|source| StoreError::Io {
                path: "write".into(),
                source,
            })?;
            let err = read(dir.path())
                .expect_err("damage must be seen")
                .to_string();
            assert!(err.contains(name) && err.contains("watermark"), "{err}");
        }
        fs::write(&path, &good[..700]).map_err(|source| StoreError::Io {
            path: "write".into(),
            source,
        })?;
        let err = read(dir.path()).expect_err("a short file").to_string();
        assert!(err.contains("700 bytes"), "{err}");
        Ok(())
    }
}
