//! The openraft type configuration shared by the store and the agent's network layer.

use crate::command::{Command, Response};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the Raft membership stores per member: where to reach its gRPC server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    pub addr: String,
}

impl fmt::Display for RaftNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// Mozen's Raft types: commands in, responses out, snapshots streamed from files.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = RaftNode,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, RaftNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, RaftNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
