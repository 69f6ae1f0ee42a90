//! The snapshot file format: [`SnapWriter`] and [`SnapReader`].
//!
//! A snapshot file is the state (postcard) followed by every result, short and long, in key
//! order; its own hashes cover it, so result records are not sealed (other members read them):
//!
//! ```text
//! "MOZSNAP\0" | format u32 LE | header_len u64 LE | blake3(header) | header
//!     (header = postcard { SnapshotMeta, ClusterState })
//! { 0x01 | request key [32] | len u32 LE | postcard(Outcome) }*
//! 0x00 | record count u64 LE | blake3(every byte before this hash)
//! ```

use super::codec::{decode_exact, encode, hex_of, io_err};
use crate::error::StoreError;
use crate::raft_types::SnapshotMeta;
use crate::state::ClusterState;
use mozen_model::Outcome;
use serde::Serialize;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Version of the snapshot file format: unchanged since format 2 of the directory (the file
/// has its own hashes), and what other members send and receive.
const SNAPSHOT_FORMAT: u32 = 2;

/// What damage in a snapshot file is reported under (as if it were a tree).
const TREE_SNAPSHOTS: &str = "snapshots";

const SNAP_MAGIC: &[u8; 8] = b"MOZSNAP\0";
const SNAP_RECORD: u8 = 1;
const SNAP_END: u8 = 0;

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

pub(super) fn encode_header(
    meta: &SnapshotMeta,
    state: &ClusterState,
) -> Result<Vec<u8>, StoreError> {
    encode("snapshot header", &HeaderRef { meta, state })
}

/// Writes a snapshot file, hashing everything it writes.
pub(super) struct SnapWriter {
    out: BufWriter<fs::File>,
    hasher: blake3::Hasher,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

impl SnapWriter {
    /// Creates the file and writes the preamble and `header` (from [`encode_header`]).
    pub(super) fn create(path: &Path, header: &[u8]) -> Result<Self, StoreError> {
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

    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
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
    pub(super) fn finish(mut self) -> Result<u64, StoreError> {
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
pub(super) type SnapRecord = ([u8; 32], Vec<u8>);

/// Reads a snapshot file: the header, then the records, checking the hashes.
pub(super) struct SnapReader {
    input: BufReader<fs::File>,
    hasher: blake3::Hasher,
    name: String,
    records: u64,
}

impl SnapReader {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
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
    pub(super) fn header(&mut self) -> Result<(SnapshotMeta, ClusterState), StoreError> {
        let bytes = self.header_bytes()?;
        let h: Header = decode_exact(&bytes).map_err(|e| self.corrupt(format!("header: {e}")))?;
        Ok((h.meta, h.state))
    }

    pub(super) fn skip_header(&mut self) -> Result<(), StoreError> {
        self.header_bytes().map(drop)
    }

    /// The next record, or None at the trailer (which is then checked).
    pub(super) fn next_record(&mut self) -> Result<Option<SnapRecord>, StoreError> {
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
    pub(super) fn finish(&mut self) -> Result<(), StoreError> {
        let mut probe = [0u8; 1];
        match self.input.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt("bytes after the trailer")),
            Err(e) => Err(self.corrupt(format!("reading past the trailer: {e}"))),
        }
    }

    /// Reads every record, checking that each result decodes and that the hashes match.
    pub(super) fn verify_records(&mut self) -> Result<(), StoreError> {
        while let Some((key, value)) = self.next_record()? {
            decode_exact::<Outcome>(&value)
                .map_err(|e| self.corrupt(format!("result of request {}: {e}", hex_of(&key))))?;
        }
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::StoredMembership;
    use tempfile::TempDir;

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
}
