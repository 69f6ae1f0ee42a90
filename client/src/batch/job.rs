//! A job as the cluster sees it: one root request, [`ROOT`] (`mapreduce`), whose arguments
//! ([`JobArgs`]) name every slice and whose value ([`JobResult`]) is the reduced result with
//! the job's counts; and [`BLOB`], whose memoized values are the texts of the slices a job
//! ships, named by their hash. The runner builds and reads these here; the agent runs them
//! (`mozen_agent::batch::job`).

use super::slice::SliceArgs;
use super::spec::ErrorPolicy;
use mozen_model::{Code, RequestKey, canonical_args};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The root function of a job.
pub const ROOT: &str = "mapreduce";
/// The function whose memoized values are the shipped slices' texts.
pub use super::slice::BLOB;
/// A job stopped by its error policy or by a failed reduce.
pub const JOB_FAILED: &str = Code::JobFailed.as_str();
/// A slice's text is not stored in the cluster.
pub const BLOB_MISSING: &str = Code::BlobMissing.as_str();
/// Largest shipped slice: each is one value in the replicated log, which followers must take
/// within a heartbeat interval.
pub const MAX_BLOB_BYTES: usize = 2 << 20;

/// The arguments of [`ROOT`]: everything the job needs, nothing it does not (a shipped slice is
/// named by the hash of its text, not carried).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobArgs {
    pub name: String,
    pub map: String,
    pub reduce: String,
    pub fan_in: usize,
    pub policy: ErrorPolicy,
    pub slices: Vec<SliceArgs>,
}

impl JobArgs {
    /// The request key of this job's root.
    pub fn key(&self) -> RequestKey {
        RequestKey::of(ROOT, &canonical_args(&self.value()))
    }

    /// As the JSON arguments of [`ROOT`].
    pub fn value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The value of [`ROOT`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub result: Value,
    /// Maps that ran for this job (the others were memo hits).
    pub executed: u64,
    pub memo_hits: u64,
    pub reduces: u64,
    /// Slices left out under `policy = "skip"`, in slice order.
    pub skipped: Vec<Skipped>,
}

/// The hash naming `text` as a blob.
pub fn blob_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// The request key of the blob named `hash`.
pub fn blob_key(hash: &str) -> RequestKey {
    RequestKey::of(BLOB, &canonical_args(&json!([hash])))
}

/// Whether `s` can name a blob: 64 lowercase hex digits.
pub fn is_blob_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A slice left out under `policy = "skip"`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Skipped {
    /// `file:first-last`.
    pub slice: String,
    pub key: String,
    pub error: String,
}
