//! Node records: identity, capacity, state and role.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Cluster-wide node identifier, chosen by the operator (`--id`).
pub type NodeId = u64;

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Takes new work.
    Active,
    /// Takes no new work; its running requests finish.
    Draining,
    /// Draining finished: nothing runs there.
    Drained,
    /// Missed its heartbeat lease; its running work was re-queued.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
            NodeState::Down => "down",
        }
    }
}

/// A node's part in the Raft group. Workers are in the node table but do not replicate the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    Voter,
    Learner,
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Voter => "voter",
            NodeRole::Learner => "learner",
            NodeRole::Worker => "worker",
        }
    }
}

/// One agent as the replicated node table knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// The agent's gRPC address (`host:port`), used by peers, clients and the console.
    pub addr: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Worker slots: how many requests may run at once (default 3 x cpus).
    pub slots: u32,
    pub state: NodeState,
    pub role: NodeRole,
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// Capacity score used for placement: cpus x GiB of RAM.
    pub fn score(&self) -> f64 {
        score(self.cpus, self.memory_bytes)
    }
}

/// Capacity score from the original design: CPUs multiplied by GiB of RAM.
pub fn score(cpus: u32, memory_bytes: u64) -> f64 {
    f64::from(cpus) * (memory_bytes as f64 / (1u64 << 30) as f64)
}

/// Requests a node may hold waiting in its local queue per worker slot, on top of the ones
/// its slots run. Only requests of functions known to be short are queued this way (the
/// leader's scheduler decides), so that fast functions are not throttled by the round trip
/// between a slot freeing and the next assignment arriving.
pub const QUEUED_PER_SLOT: u32 = 4;

/// Most requests a node may hold at once: running in its slots or waiting in its queue.
pub fn max_assigned(slots: u32) -> u32 {
    slots.saturating_mul(1 + QUEUED_PER_SLOT)
}

/// Default worker slots: three per CPU, and at least one.
pub fn default_slots(cpus: u32) -> u32 {
    cpus.saturating_mul(3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_cpus_times_gib() {
        assert_eq!(score(4, 16 << 30), 64.0);
        assert_eq!(score(2, 1 << 29), 1.0);
    }

    #[test]
    fn default_slots_three_per_cpu() {
        assert_eq!(default_slots(2), 6);
        assert_eq!(default_slots(0), 1);
    }
}

/// An operation an operator (or the autoscaler) asks the leader to carry out on a node. On
/// the wire it is its name ([`NodeOp::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeOp {
    /// No new work for the node; what runs there finishes.
    Drain,
    /// Work again for a drained (or draining) node.
    Undrain,
    /// Makes the node a Raft voter (a learner first, until it caught up).
    Promote,
    /// Makes a voter a worker only (out of the Raft membership).
    Demote,
    /// Takes the node out of the membership and the node table.
    Remove,
    /// Pauses the autoscaler (`mozen down`); the node id is not used.
    AutoscalePause,
    /// Resumes the autoscaler (`mozen up`); the node id is not used.
    AutoscaleResume,
}

impl NodeOp {
    /// Every operation, in the order help texts list them.
    pub const ALL: [NodeOp; 7] = [
        NodeOp::Drain,
        NodeOp::Undrain,
        NodeOp::Promote,
        NodeOp::Demote,
        NodeOp::Remove,
        NodeOp::AutoscalePause,
        NodeOp::AutoscaleResume,
    ];

    /// Its name on the wire and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeOp::Drain => "drain",
            NodeOp::Undrain => "undrain",
            NodeOp::Promote => "promote",
            NodeOp::Demote => "demote",
            NodeOp::Remove => "remove",
            NodeOp::AutoscalePause => "autoscale-pause",
            NodeOp::AutoscaleResume => "autoscale-resume",
        }
    }

    /// Whether it switches the autoscaler rather than acting on a node.
    pub fn is_autoscale_switch(self) -> bool {
        matches!(self, NodeOp::AutoscalePause | NodeOp::AutoscaleResume)
    }
}

impl std::fmt::Display for NodeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node operation name that is none of [`NodeOp::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownNodeOp(pub String);

impl std::fmt::Display for UnknownNodeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known: Vec<&str> = NodeOp::ALL.iter().map(|o| o.as_str()).collect();
        write!(
            f,
            "unknown node operation '{}' ({})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownNodeOp {}

impl std::str::FromStr for NodeOp {
    type Err = UnknownNodeOp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeOp::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownNodeOp(s.to_string()))
    }
}

#[cfg(test)]
mod node_op_tests {
    use super::*;

    #[test]
    fn node_ops_read_back_from_their_names_and_unknown_ones_list_the_known() {
        for op in NodeOp::ALL {
            assert_eq!(op.as_str().parse::<NodeOp>(), Ok(op));
        }
        let e = "drian".parse::<NodeOp>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown node operation 'drian' (drain, undrain, promote, demote, remove, autoscale-pause, autoscale-resume)"
        );
    }
}
