//! Node loads as the scheduler ranks them: each node's slots, busy places and capacity score
//! ([`NodeLoad`]), its order of preference ([`Rank`]) and the index that keeps them ranked as
//! loads change ([`LoadIndex`]).
//!
//! Plain data with its ordering rules, here so that both the state machine (which keeps the
//! index up to date as it applies commands) and the scheduler (which reads it) can use it
//! without depending on each other.

use crate::{NodeId, NodeState};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// What the scheduler needs to know about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    pub id: NodeId,
    pub state: NodeState,
    pub slots: u32,
    /// Requests placed on the node: running in a slot or waiting in its local queue (a
    /// request waiting on children counts for none).
    pub busy: u32,
    /// Extra places for short requests, waiting in the node's local queue beyond its slots.
    pub queue: u32,
    /// Capacity score (cpus x GiB of RAM).
    pub score: f64,
}

impl NodeLoad {
    /// Places left for a request: free slots, plus the local queue when it is short.
    pub fn free(&self, short: bool) -> u32 {
        if self.state != NodeState::Active {
            return 0;
        }
        self.room(short).saturating_sub(self.busy)
    }

    fn room(&self, short: bool) -> u32 {
        if short {
            self.slots.saturating_add(self.queue)
        } else {
            self.slots
        }
    }

    /// Free places as a share of the node's room, times its capacity score: what [`Rank`]
    /// orders by, greatest first.
    pub fn weight(&self, short: bool) -> f64 {
        f64::from(self.free(short)) / f64::from(self.room(short).max(1))
            * self.score.max(f64::MIN_POSITIVE)
    }

    /// The node's place in the order of preference for a request of this kind, or None when
    /// it has no room for one.
    pub fn rank(&self, short: bool) -> Option<Rank> {
        if self.free(short) == 0 {
            return None;
        }
        // With room the weight is positive (and never NaN: `max` drops a NaN score), and the
        // bits of positive floats order as the floats do.
        Some(Rank {
            weight: Reverse(self.weight(short).to_bits()),
            id: self.id,
        })
    }
}

/// Order of preference among nodes with room: greatest weighted free capacity first, then the
/// lowest id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    weight: Reverse<u64>,
    id: NodeId,
}

impl Rank {
    pub fn id(&self) -> NodeId {
        self.id
    }
}

/// Node loads kept ranked for the planner, updated one node at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadIndex {
    loads: BTreeMap<NodeId, NodeLoad>,
    /// Nodes with a free slot, by rank for requests that are not short.
    long: BTreeMap<Rank, NodeLoad>,
    /// Nodes with a free slot or local queue place, by rank for short requests.
    short: BTreeMap<Rank, NodeLoad>,
}

impl LoadIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the load of `load.id`, replacing the one it had.
    pub fn set(&mut self, load: NodeLoad) {
        if let Some(old) = self.loads.get(&load.id) {
            if *old == load {
                return;
            }
            let old = old.clone();
            self.unrank(&old);
        }
        if let Some(r) = load.rank(false) {
            self.long.insert(r, load.clone());
        }
        if let Some(r) = load.rank(true) {
            self.short.insert(r, load.clone());
        }
        self.loads.insert(load.id, load);
    }

    /// Forgets node `id`.
    pub fn remove(&mut self, id: NodeId) {
        if let Some(old) = self.loads.remove(&id) {
            self.unrank(&old);
        }
    }

    fn unrank(&mut self, old: &NodeLoad) {
        if let Some(r) = old.rank(false) {
            self.long.remove(&r);
        }
        if let Some(r) = old.rank(true) {
            self.short.remove(&r);
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&NodeLoad> {
        self.loads.get(&id)
    }

    /// Every node's load, by id.
    pub fn iter(&self) -> impl Iterator<Item = &NodeLoad> {
        self.loads.values()
    }

    pub fn len(&self) -> usize {
        self.loads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// The nodes with room for a request of this kind, best first, with their rank.
    pub fn ranked(&self, short: bool) -> impl Iterator<Item = (&Rank, &NodeLoad)> + '_ {
        if short { &self.short } else { &self.long }.iter()
    }
}

impl FromIterator<NodeLoad> for LoadIndex {
    fn from_iter<T: IntoIterator<Item = NodeLoad>>(iter: T) -> Self {
        let mut index = LoadIndex::new();
        for l in iter {
            index.set(l);
        }
        index
    }
}
