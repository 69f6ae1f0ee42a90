//! Errors of the store: what is damaged, where, and what to do about it.

use mozen_model::Code;
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
        "{}: corrupt record in tree '{tree}' at key {key}: {reason}; this member must not vote or lead on this data dir: repair it with `mozen-agent repair` and the same flags (it moves the dir aside and rejoins from the peers, see docs/operations.md)",
        Code::Damaged
    )]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    /// The data dir lost data it had acknowledged, or a file of it fails its checks: see
    /// [`crate::mark`]. The member must not vote or lead on it.
    #[error(
        "{}: data dir {dir} is damaged: {detail}; this member must not vote or lead on it: repair it with `mozen-agent repair` and the same flags (it moves the dir aside and rejoins from the peers, see docs/operations.md)",
        Code::Damaged
    )]
    Damaged { dir: String, detail: String },
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

impl StoreError {
    /// Whether the error says stored data is damaged (the member must be repaired), as opposed
    /// to a passing I/O failure or a version mismatch.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Damaged { .. }
                | StoreError::Sled {
                    source: sled::Error::Corruption { .. },
                    ..
                }
        )
    }
}
