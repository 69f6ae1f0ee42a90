//! mozen-store: the replicated state machine and its storage.
//!
//! - [`command`]: the append-only `Command` enum carried by the Raft log, and its replies.
//! - [`state`]: `ClusterState`, the pure and deterministic transition function with the read
//!   indexes the rest of the system uses (queue order, running-by-node, children, counters).
//!   Finished requests are kept as compact records (module `finished`).
//! - [`checkpoint`]: state digests taken at agreed log indexes, and the rule that compares
//!   the voters' checkpoints (corruption checks across members).
//! - [`raft_types`]: the openraft type configuration.
//! - [`storage`]: openraft `RaftLogStorage` + `RaftStateMachine` (storage-v2) on one sled `Db`:
//!   `open` and its checks, the log, the state machine, the snapshot file format.
//! - [`error`]: `StoreError`, naming the tree and key of anything damaged.
//! - [`seal`]: the checksum every stored value carries, checked on every read.
//! - [`mark`]: the watermark file that tells a log which lost acknowledged entries from a
//!   torn tail.
//!
//! Dependency rule: depends on mozen-model, openraft and sled; never on gRPC, the scheduler or
//! the agent (the node loads it keeps ranked for the scheduler are mozen-model types; only
//! its tests use the scheduler, to check it against the state). See docs/architecture.md for
//! the persistence design.

pub mod checkpoint;
pub mod command;
pub mod error;
mod finished;
pub mod mark;
pub mod owners;
pub mod raft_types;
pub mod seal;
pub mod state;
pub mod storage;

pub use checkpoint::{Checkpoint, Checkpoints};
pub use command::{
    AssignReply, Assignment, Command, CompleteReply, Completion, ForgetSelector, Memo, NewRequest,
    Response, Run, SubmitReply,
};
pub use error::StoreError;
pub use raft_types::{Entry, LogId, Raft, RaftNode, TypeConfig, Vote};
pub use state::{ClusterState, Effect, Event, FunctionCounters, Owners, UNKNOWN, Usage};
pub use storage::{
    ApplyObserver, FORMAT_VERSION, LogStore, SharedState, StateMachineStore, StoreOptions, open,
};
