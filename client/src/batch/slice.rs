//! One slice of one input file, as every map function takes it, and where a shipped slice's
//! text is kept in the cluster (the memoized value of `blob([hash])`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The function whose memoized values are the texts of the slices a job ships.
pub const BLOB: &str = "blob";

/// One slice of one file: the argument of every map function.
///
/// The request key is the content hash of these fields, so it is determined by
/// (function, file content hash, line range): re-running a job redoes only changed files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceArgs {
    /// The file, as the job named it (absolute path).
    pub file: String,
    /// Lines `[start, end)`, 0-based.
    pub lines: [u64; 2],
    /// blake3 of the whole file when the job was planned.
    pub file_hash: String,
    /// The slice's text when it travels in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// blake3 (hex) of the slice's text, stored in the cluster as `blob([hash])`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Byte range `[start, end)` of the slice in the file, when the agent reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    /// blake3 of the slice's bytes, checked by the agent that reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_hash: Option<String>,
    /// Extra parameters of the map function (e.g. `pattern` for `grep`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl SliceArgs {
    /// `file:first-last` (1-based, inclusive) for reports.
    pub fn label(&self) -> String {
        format!(
            "{}:{}-{}",
            self.file,
            self.lines[0] + 1,
            self.lines[1].max(self.lines[0] + 1)
        )
    }
}
