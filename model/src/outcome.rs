//! What running a request produced: a result, or a structured error with its call chain.

use crate::{NodeId, RequestKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable error codes shown to operators and clients.
pub mod codes {
    pub const FUNCTION_FAILED: &str = "MZ-FUNCTION-FAILED";
    pub const UNKNOWN_FUNCTION: &str = "MZ-UNKNOWN-FUNCTION";
    pub const BAD_ARGUMENTS: &str = "MZ-BAD-ARGUMENTS";
    pub const CHILD_FAILED: &str = "MZ-CHILD-FAILED";
    pub const ATTEMPTS_EXHAUSTED: &str = "MZ-ATTEMPTS-EXHAUSTED";
    pub const CANCELLED: &str = "MZ-CANCELLED";
    pub const EXEC_REFUSED: &str = "MZ-EXEC-REFUSED";
    pub const TIMEOUT: &str = "MZ-TIMEOUT";
    /// A child call refused: its calling request is not running (cancelled, or re-queued).
    pub const PARENT_GONE: &str = "MZ-PARENT-GONE";
}

/// One hop of an error chain: the request that saw the failure and where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    pub key: RequestKey,
    pub function: String,
    /// Canonical JSON arguments, for display.
    pub args: String,
    pub node: Option<NodeId>,
}

/// A failure that crosses the cluster keeping its origin: `code` and `message` describe the
/// original failure on `node`; `chain` lists the requests it passed through, origin first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub node: Option<NodeId>,
    pub chain: Vec<ChainLink>,
}

impl TaskError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        TaskError {
            code: code.to_string(),
            message: message.into(),
            node: None,
            chain: Vec::new(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(n) = self.node {
            write!(f, " (on node {n})")?;
        }
        for (i, link) in self.chain.iter().enumerate() {
            let verb = if i == 0 { "in" } else { "called from" };
            write!(f, "\n  {verb} {}({})", link.function, link.args)?;
            if let Some(n) = link.node {
                write!(f, " on node {n}")?;
            }
            write!(f, " [{}]", link.key.short())?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

/// The outcome of a request: the result bytes (canonical JSON) or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(TaskError),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Value(_))
    }

    /// Approximate payload size, for limits and the memo-table bound.
    pub fn size(&self) -> usize {
        match self {
            Outcome::Value(v) => v.len(),
            Outcome::Error(e) => e.message.len() + e.chain.len() * 64,
        }
    }
}
