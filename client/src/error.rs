//! The client's typed errors: each has a stable `MZ-` code for scripts.

use mozen_model::{Code, TaskError};
use std::time::Duration;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent could be reached (all addresses tried until the deadline).
    #[error("{}: no Mozen agent answered at {addrs}: {last}", Code::Unreachable)]
    Unreachable { addrs: String, last: String },
    /// The cluster refused the operation.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// The function (or one it called) failed.
    #[error("{0}")]
    Task(TaskError),
    /// The deadline passed before the request finished; it may still finish later.
    #[error(
        "{}: request {key} did not finish within {after:?}; `mozen get {key} --wait` re-attaches",
        Code::Timeout
    )]
    Timeout { key: String, after: Duration },
    /// The arguments or the result are not what the types say.
    #[error("{code}: {0}", code = Code::BadArguments)]
    Codec(String),
}

impl ClientError {
    /// Stable code for scripts.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Unreachable { .. } => Code::Unreachable.as_str(),
            ClientError::Rejected { code, .. } => code,
            ClientError::Task(e) => &e.code,
            ClientError::Timeout { .. } => Code::Timeout.as_str(),
            ClientError::Codec(_) => Code::BadArguments.as_str(),
        }
    }
}
