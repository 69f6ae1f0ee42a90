//! Request records and their life cycle.

use crate::{Millis, NodeId, RequestKey};
use serde::{Deserialize, Serialize};

/// Where a request is in its life. Terminal states are Done, Failed and Cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestState {
    Queued,
    Running {
        node: NodeId,
        attempt: u32,
        since: Millis,
    },
    Done,
    Failed,
    Cancelled,
}

impl RequestState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RequestState::Done | RequestState::Failed | RequestState::Cancelled
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Running { .. } => "running",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
            RequestState::Cancelled => "cancelled",
        }
    }

    pub fn node(&self) -> Option<NodeId> {
        match self {
            RequestState::Running { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// How a request reacts to failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Extra runs after the function itself fails (0: propagate at once).
    pub retries: u32,
    /// Backoff before a retry of a failed function, doubled on each retry.
    pub backoff_ms: u64,
    /// Maximum attempts counting re-queues after node loss (default 3).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            backoff_ms: 100,
            max_attempts: 3,
        }
    }
}

/// One request as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub key: RequestKey,
    pub function: String,
    /// Canonical JSON argument bytes.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Requests that called this one (several when a memoized child is shared).
    pub parents: Vec<RequestKey>,
    /// Higher runs first.
    pub priority: i32,
    pub state: RequestState,
    /// Attempts started so far (node losses and function retries both count).
    pub attempts: u32,
    /// Function failures seen so far (compared with `retry.retries`).
    pub failures: u32,
    pub created: Millis,
    pub updated: Millis,
    pub retry: RetryPolicy,
    /// The node that ran the last attempt (kept after completion, for trees and `--json`).
    pub last_node: Option<NodeId>,
    /// Milliseconds the finishing attempt ran.
    pub duration_ms: u64,
    /// Children this request is blocked on right now; while above zero its slot is free.
    pub waiting: u32,
    /// Not before this time (a retry's backoff).
    pub not_before: Millis,
    /// Submission order, the FIFO tie-breaker within a priority.
    pub seq: u64,
}
