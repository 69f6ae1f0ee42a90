//! The client's typed errors: each has a stable `MZ-` code for scripts.

use mozen_model::{TaskError, codes};
use std::time::Duration;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent could be reached (all addresses tried until the deadline).
    #[error("MZ-UNREACHABLE: no Mozen agent answered at {addrs}: {last}")]
    Unreachable { addrs: String, last: String },
    /// The cluster refused the operation.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// The function (or one it called) failed.
    #[error("{0}")]
    Task(TaskError),
    /// The deadline passed before the request finished; it may still finish later.
    #[error(
        "MZ-TIMEOUT: request {key} did not finish within {after:?}; `mozen get {key} --wait` re-attaches"
    )]
    Timeout { key: String, after: Duration },
    /// The arguments or the result are not what the types say.
    #[error("MZ-BAD-ARGUMENTS: {0}")]
    Codec(String),
}

impl ClientError {
    /// Stable code for scripts.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Unreachable { .. } => "MZ-UNREACHABLE",
            ClientError::Rejected { code, .. } => code,
            ClientError::Task(e) => &e.code,
            ClientError::Timeout { .. } => codes::TIMEOUT,
            ClientError::Codec(_) => codes::BAD_ARGUMENTS,
        }
    }
}
