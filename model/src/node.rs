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
