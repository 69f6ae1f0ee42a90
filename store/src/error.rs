//! Errors of the store: what is damaged, where, and what to do about it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sled error on tree '{tree}': {source}")]
    Sled {
        tree: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error(
        "corrupt record in tree '{tree}' at key {key}: {reason}; restore this data dir from a backup or remove it and let the node rejoin as a new member"
    )]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "data dir {dir} has format version {found}, this build reads version {expected}; run a matching mozen-agent or move the directory away"
    )]
    Version {
        dir: String,
        found: String,
        expected: u32,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A value could not be encoded. Only a bug can cause this (every stored type encodes).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A snapshot whose content disagrees with the metadata Raft sent along with it.
    #[error("snapshot {snapshot} does not match its metadata: {reason}")]
    SnapshotMismatch { snapshot: String, reason: String },
}
