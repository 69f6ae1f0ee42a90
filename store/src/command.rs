//! The replicated commands and their replies.
//!
//! `Command` is append-only: variants are encoded by position (postcard), so never reorder or
//! remove one; add new variants at the end. Golden encodings are checked in `tests`.

use mozen_model::{
    Millis, NodeId, NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// A request to enqueue, as carried by [`Command::Submit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRequest {
    pub key: RequestKey,
    pub function: String,
    /// Canonical JSON argument bytes.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// The running request that calls this one, if any.
    pub parent: Option<RequestKey>,
    pub priority: i32,
    pub retry: RetryPolicy,
    /// Run again even when a memoized result exists.
    pub no_cache: bool,
}

/// Start `attempt` of request `key` on `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub key: RequestKey,
    pub node: NodeId,
    pub attempt: u32,
}

/// The outcome of `attempt` of request `key`, run on `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub key: RequestKey,
    pub node: NodeId,
    pub attempt: u32,
    pub outcome: Outcome,
    pub duration_ms: u64,
}

/// Which memoized results to drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgetSelector {
    Keys(Vec<RequestKey>),
    Function(String),
    /// Everything that finished before this time.
    OlderThan(Millis),
    /// The `n` results that finished first (the memo-table eviction rule).
    Oldest(u64),
}

/// One fact for the replicated log. Times (`at`) are stamped by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a node to the table, or refreshes its record (address, capacity) when it rejoins.
    RegisterNode { node: NodeInfo, at: Millis },
    /// Drain, undrain, mark down or bring back up a node.
    SetNodeState {
        id: NodeId,
        state: NodeState,
        at: Millis,
    },
    /// Removes a node; its running requests are re-queued.
    RemoveNode { id: NodeId, at: Millis },
    /// Submits a batch of requests.
    Submit {
        requests: Vec<NewRequest>,
        at: Millis,
    },
    /// Starts a batch of requests on nodes.
    Assign {
        assignments: Vec<Assignment>,
        at: Millis,
    },
    /// Records a batch of outcomes.
    Complete {
        completions: Vec<Completion>,
        at: Millis,
    },
    /// Hands running requests of `node` back to the queue: all of them when `keys` is None.
    Requeue {
        node: NodeId,
        keys: Option<Vec<RequestKey>>,
        reason: String,
        at: Millis,
    },
    /// Cancels a request and the descendants no other live request needs.
    Cancel { key: RequestKey, at: Millis },
    /// Drops memoized results.
    Forget {
        selector: ForgetSelector,
        at: Millis,
    },
    /// Many facts in one log entry.
    Batch(Vec<Command>),
    /// Records a node's part in the Raft group after a membership change.
    SetNodeRole {
        id: NodeId,
        role: NodeRole,
        at: Millis,
    },
    /// Records a cluster event that is not a state change (e.g. a failure worth telling).
    Event {
        kind: String,
        node: Option<NodeId>,
        message: String,
        at: Millis,
    },
    /// A running request (this attempt, on this node) waits on something other than a child
    /// call, such as a timer, and gives its slot back (`parked`), or takes one again.
    Park {
        key: RequestKey,
        node: NodeId,
        attempt: u32,
        parked: bool,
        at: Millis,
    },
    /// Records results known without running anything (content-addressed data such as the
    /// slices a batch job ships): each request becomes `Done` with its value.
    Memoize { memos: Vec<Memo>, at: Millis },
    /// Requests the leader ran before writing them down (short calls whose callers wait):
    /// each is recorded as submitted, run on `node` and done with its value, in one fact.
    Ran { runs: Vec<Run>, at: Millis },
    /// Submits a batch of requests on behalf of the client identity `client` (the caller's
    /// name at the edge), which owns those it enqueues; a child call is owned by its parent's
    /// owner whatever `client` says. Owners feed per-client admission and fair share.
    SubmitFrom {
        client: String,
        requests: Vec<NewRequest>,
        at: Millis,
    },
    /// Cancels each request as `Cancel` does; unknown keys are skipped. Bulk cancel writes a
    /// few of these instead of one entry per key.
    CancelMany { keys: Vec<RequestKey>, at: Millis },
}

/// A request that ran to a value, as carried by [`Command::Ran`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub request: NewRequest,
    pub node: NodeId,
    pub duration_ms: u64,
    /// JSON bytes of the result.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A request and its value, as carried by [`Command::Memoize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memo {
    pub key: RequestKey,
    pub function: String,
    /// Canonical JSON argument bytes.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// JSON bytes of the result.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Bytes of one encoded request key.
const KEY_BYTES: usize = 32;

impl Command {
    /// Number of elementary facts, for metrics (a batch counts its parts).
    pub fn fact_count(&self) -> usize {
        match self {
            Command::Submit { requests, .. } => requests.len(),
            Command::Assign { assignments, .. } => assignments.len(),
            Command::Complete { completions, .. } => completions.len(),
            Command::Memoize { memos, .. } => memos.len(),
            Command::Ran { runs, .. } => runs.len(),
            Command::SubmitFrom { requests, .. } => requests.len(),
            Command::CancelMany { keys, .. } => keys.len(),
            Command::Batch(cs) => cs.iter().map(Command::fact_count).sum(),
            _ => 1,
        }
    }

    /// About how many bytes the command takes in a log entry: its arguments and results
    /// counted exactly, everything else as a small constant. Keeps entries small enough to
    /// replicate within a heartbeat.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 64;
        match self {
            Command::Submit { requests, .. } => requests
                .iter()
                .map(|r| FIXED + r.function.len() + r.args.len())
                .sum(),
            Command::Complete { completions, .. } => completions
                .iter()
                .map(|c| {
                    FIXED
                        + match &c.outcome {
                            Outcome::Value(v) => v.len(),
                            Outcome::Error(e) => {
                                e.message.len()
                                    + e.chain
                                        .iter()
                                        .map(|l| FIXED + l.function.len() + l.args.len())
                                        .sum::<usize>()
                            }
                        }
                })
                .sum(),
            Command::Memoize { memos, .. } => memos
                .iter()
                .map(|m| FIXED + m.function.len() + m.args.len() + m.value.len())
                .sum(),
            Command::Ran { runs, .. } => runs
                .iter()
                .map(|r| FIXED + r.request.function.len() + r.request.args.len() + r.value.len())
                .sum(),
            Command::SubmitFrom {
                client, requests, ..
            } => {
                client.len()
                    + requests
                        .iter()
                        .map(|r| FIXED + r.function.len() + r.args.len())
                        .sum::<usize>()
            }
            Command::CancelMany { keys, .. } => FIXED + keys.len() * (KEY_BYTES + 1),
            Command::Batch(cs) => cs.iter().map(Command::approx_bytes).sum(),
            _ => FIXED,
        }
    }
}

/// A typed refusal: expected, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Rejection {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What happened to one submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitReply {
    /// A new request was enqueued.
    Queued,
    /// The same request was already queued or running; the caller joined it.
    Joined,
    /// The result was memoized; read it with the key.
    MemoHit,
    /// The parent named is not running any more; nothing was submitted.
    ParentGone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignReply {
    Started,
    Rejected(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompleteReply {
    /// The request is Done or Failed now.
    Finished,
    /// The function failed and the request was queued again for a retry.
    Retrying,
    /// A repeat, or an attempt that is no longer current: nothing changed.
    Stale,
}

/// The state machine's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Rejected(Rejection),
    Submitted(Vec<SubmitReply>),
    Assigned(Vec<AssignReply>),
    Completed(Vec<CompleteReply>),
    Requeued {
        requeued: u32,
        failed: u32,
    },
    Cancelled(Vec<RequestKey>),
    Forgotten(u64),
    Batch(Vec<Response>),
    /// Per memo: true when it was stored, false when the result was already there.
    Memoized(Vec<bool>),
    /// Per run: true when it was recorded, false when the request was already done.
    Ran(Vec<bool>),
}

/// Stable codes of state-machine rejections (the strings of their [`mozen_model::Code`]s).
pub mod reject {
    use mozen_model::Code;

    pub const UNKNOWN_NODE: &str = Code::UnknownNode.as_str();
    pub const UNKNOWN_REQUEST: &str = Code::UnknownRequest.as_str();
    pub const NOT_QUEUED: &str = Code::NotQueued.as_str();
    pub const NODE_NOT_ACTIVE: &str = Code::NodeNotActive.as_str();
    pub const NO_FREE_SLOT: &str = Code::NoFreeSlot.as_str();
    pub const STALE_ATTEMPT: &str = Code::StaleAttempt.as_str();
    pub const NOT_YET: &str = Code::Backoff.as_str();
    pub const BAD_TRANSITION: &str = Code::BadTransition.as_str();
}
