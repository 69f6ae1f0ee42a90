//! What the storage modules share: the names of the sled trees and meta keys, encoding with
//! postcard, sealed reads and writes of meta records (`crate::seal`), and the mappers from
//! sled, I/O and task errors to [`StoreError`] and from it to openraft's `StorageError`.

use crate::error::StoreError;
use crate::seal::{seal, unseal};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs;
use std::io;
use std::path::Path;

pub(super) const TREE_LOG: &str = "raft_log";
pub(super) const TREE_META: &str = "raft_meta";
pub(super) const TREE_OUTCOMES: &str = "sm_outcomes";

pub(super) const KEY_VERSION: &str = "format_version";
pub(super) const KEY_VOTE: &str = "vote";
pub(super) const KEY_COMMITTED: &str = "committed";
pub(super) const KEY_LAST_PURGED: &str = "last_purged";
pub(super) const KEY_IDENTITY: &str = "identity";
pub(super) const KEY_OUTCOMES_PENDING: &str = "outcomes_pending";
/// Name of a snapshot file whose results are all in `sm_outcomes` (it holds no short result,
/// or it was installed): opening with it as the newest need not read its records.
pub(super) const KEY_NO_SMALL: &str = "no_small_results";
/// Count of the state machine's flushes, mirrored in the watermark ([`crate::mark::Mark::flushes`]).
pub(super) const KEY_FLUSHES: &str = "flushes";

/// Writes per sled batch when loading a snapshot's results.
pub(super) const LOAD_BATCH: usize = 4096;

pub(super) fn sled_err(tree: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Sled { tree, source }
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "<blocking storage task>".into(),
        source: io::Error::other(e.to_string()),
    }
}

/// Maps a store error to openraft's at the trait boundary, keeping the message (tree, key).
pub(super) fn to_storage(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl Fn(StoreError) -> StorageError<u64> {
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::new(&e)).into()
}

pub(super) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a whole value: trailing bytes mean damage too.
pub(super) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} unexpected trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn get_decoded<T: DeserializeOwned>(
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

pub(super) fn put_encoded<T: Serialize>(
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
pub(super) fn get_name(
    meta: &sled::Tree,
    key: &'static str,
) -> Result<Option<Vec<u8>>, StoreError> {
    match meta.get(key).map_err(sled_err(TREE_META))? {
        None => Ok(None),
        Some(v) => Ok(Some(unseal(TREE_META, key.as_bytes(), &v)?.to_vec())),
    }
}

pub(super) fn put_name(meta: &sled::Tree, key: &'static str, name: &str) -> Result<(), StoreError> {
    meta.insert(
        key,
        seal(TREE_META, key.as_bytes(), name.as_bytes().to_vec()),
    )
    .map(drop)
    .map_err(sled_err(TREE_META))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

pub(super) fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_exact_refuses_trailing_bytes() {
        let mut bytes = postcard::to_allocvec(&7u64).expect("encode");
        assert_eq!(decode_exact::<u64>(&bytes), Ok(7));
        bytes.push(0);
        assert!(decode_exact::<u64>(&bytes).is_err());
    }
}
