//! mozen-model: the cluster's vocabulary.
//!
//! Plain data shared by every other crate: node records and their capacity score
//! ([`node`]), content-addressed request keys and canonical arguments ([`key`]), request
//! records with their life-cycle state ([`request`]), the outcome of running one
//! ([`outcome`]), and node loads ranked for placement ([`load`]), which the state machine
//! keeps up to date and the scheduler reads. [`flags`] reads the values several programs take
//! from flags and files (addresses, peer lists, sizes).
//!
//! Dependency rule: this crate depends on serde (and hashing/hex helpers) only. It knows
//! nothing of Raft, sled, gRPC or tokio, so the scheduler and the console can use it freely.

pub mod code;
pub mod flags;
pub mod key;
pub mod load;
pub mod node;
pub mod outcome;
pub mod quote;
pub mod request;

pub use code::{Code, UnknownCode, code_of};
pub use key::{KeyParseError, RequestKey, canonical_args};
pub use load::{LoadIndex, NodeLoad, Rank};
pub use node::{
    NodeId, NodeInfo, NodeOp, NodeRole, NodeState, QUEUED_PER_SLOT, UnknownNodeOp, default_slots,
    max_assigned, score,
};
pub use outcome::{ChainLink, Outcome, TaskError, codes};
pub use quote::{ERROR_MESSAGE_BYTES, QUOTED_ARGS_BYTES, SHOWN_ARGS_BYTES, quote, quote_bytes};
pub use request::{Request, RequestState, RetryPolicy};

/// Milliseconds since the Unix epoch. Timestamps are stamped into commands by the proposer;
/// the state machine never reads a clock.
pub type Millis = u64;
