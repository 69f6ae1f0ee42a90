//! State checkpoints: digests of the replicated state at agreed log indexes, and the rule that
//! compares the checkpoints of several voters.
//!
//! Every state machine takes a checkpoint right after applying each log entry whose index is a
//! multiple of its interval ("every", the agent's `--checkpoint-every`): the index and the
//! digest of the whole state as of that entry ([`ClusterState::digest`]). Voters that applied
//! the same log hold the same state at every index, so their checkpoints at a common index are
//! equal; one that differs holds a damaged or diverged state. Nothing is written to the log or
//! to disk: the newest [`KEPT`] checkpoints stay in memory, and a restart records them again
//! as it re-applies the log. The agent asks the other voters for theirs and calls [`compare`];
//! see docs/architecture.md, "Corruption checks".
//!
//! A checkpoint costs one encoding of the state under the state's write lock (apply waits for
//! it), which is why it is taken every few thousand entries rather than on every apply.

use crate::state::ClusterState;
use mozen_model::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Default interval between checkpoints, in log entries.
pub const DEFAULT_EVERY: u64 = 4096;
/// Smallest interval accepted: below it the digests would cost more than the entries.
pub const MIN_EVERY: u64 = 8;
/// Checkpoints kept in memory: the last `KEPT * every` entries are covered, which leaves room
/// for voters that lag each other by a few thousand entries to share an index.
pub const KEPT: usize = 16;

/// The state digest taken right after applying the log entry at `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub index: u64,
    pub digest: [u8; 32],
}

/// The checkpoints of one state machine. `after_apply` is called by the apply loop; readers
/// take a copy with `list`.
#[derive(Debug)]
pub struct Checkpoints {
    /// Interval in log entries; read on every apply, so an atomic rather than under the lock.
    every: AtomicU64,
    /// Oldest first, at most [`KEPT`]. Locked only to push or copy, never while a digest is
    /// computed, so a reader never waits for an encoding of the state.
    kept: Mutex<VecDeque<Checkpoint>>,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints::new(DEFAULT_EVERY)
    }
}

impl Checkpoints {
    pub fn new(every: u64) -> Self {
        Checkpoints {
            every: AtomicU64::new(every.max(MIN_EVERY)),
            kept: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// Sets the interval (at least [`MIN_EVERY`]) and forgets the checkpoints taken so far,
    /// which may sit at indexes the new interval does not use. Call before Raft starts
    /// applying, so that every index the log replays is covered.
    pub fn set_every(&self, every: u64) {
        self.every.store(every.max(MIN_EVERY), Ordering::Relaxed);
        self.lock().clear();
    }

    pub fn every(&self) -> u64 {
        self.every.load(Ordering::Relaxed)
    }

    /// Called with the state as it is right after applying the entry at `index`: takes a
    /// checkpoint when `index` is a multiple of the interval.
    pub fn after_apply(&self, index: u64, state: &ClusterState) {
        if index == 0 || !index.is_multiple_of(self.every()) {
            return;
        }
        let digest = state.digest();
        let mut kept = self.lock();
        // A state machine applies each index once; a snapshot install only moves forward.
        kept.retain(|c| c.index < index);
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Checkpoint { index, digest });
    }

    /// The checkpoints kept, oldest first.
    pub fn list(&self) -> Vec<Checkpoint> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Checkpoint>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A voter whose checkpoint differs from other voters' at the same index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub node: NodeId,
    /// The lowest index compared at which it differs.
    pub index: u64,
    /// The voters holding another digest at `index`.
    pub others: Vec<NodeId>,
    /// True when a majority of all voters holds one digest there and `node` is not among
    /// them: its state is the damaged one. False when no digest has a majority: the voters
    /// differ and nothing says which of them is right.
    pub outvoted: bool,
}

/// What comparing the voters' checkpoints found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// At most one per voter: its lowest index where a majority outvotes it, else its lowest
    /// index of a disagreement without a majority. By node id.
    pub mismatches: Vec<Mismatch>,
    /// For each voter, the highest index at which it held the digest of a majority.
    pub agreed: BTreeMap<NodeId, u64>,
    /// Indexes held by at least two of the voters compared.
    pub compared: usize,
}

/// Compares the checkpoints of the voters in `seen` (each voter's list, in any order) at every
/// index that at least two of them hold. `voters` is the size of the whole voter set, answering
/// or not: a majority is more than half of it, so that two voters out of five never outvote a
/// third.
pub fn compare(voters: usize, seen: &BTreeMap<NodeId, Vec<Checkpoint>>) -> Comparison {
    let mut at: BTreeMap<u64, BTreeMap<NodeId, [u8; 32]>> = BTreeMap::new();
    for (node, list) in seen {
        for c in list {
            at.entry(c.index)
                .or_default()
                .entry(*node)
                .or_insert(c.digest);
        }
    }
    let mut outvoted: BTreeMap<NodeId, Mismatch> = BTreeMap::new();
    let mut split: BTreeMap<NodeId, Mismatch> = BTreeMap::new();
    let mut out = Comparison::default();
    for (index, held) in at.iter().filter(|(_, h)| h.len() >= 2) {
        out.compared += 1;
        let mut groups: BTreeMap<[u8; 32], BTreeSet<NodeId>> = BTreeMap::new();
        for (node, digest) in held {
            groups.entry(*digest).or_default().insert(*node);
        }
        let majority = groups.values().find(|g| g.len() > voters / 2);
        if let Some(m) = majority {
            for node in m {
                out.agreed.insert(*node, *index);
            }
        }
        if groups.len() == 1 {
            continue;
        }
        for (node, digest) in held {
            let others: Vec<NodeId> = held
                .iter()
                .filter(|(_, d)| *d != digest)
                .map(|(n, _)| *n)
                .collect();
            let found = Mismatch {
                node: *node,
                index: *index,
                others,
                outvoted: majority.is_some(),
            };
            match majority {
                Some(m) if m.contains(node) => {}
                Some(_) => {
                    outvoted.entry(*node).or_insert(found);
                }
                None => {
                    split.entry(*node).or_insert(found);
                }
            }
        }
    }
    for (node, m) in split {
        outvoted.entry(node).or_insert(m);
    }
    out.mismatches = outvoted.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Memo};
    use mozen_model::{NodeInfo, NodeRole, NodeState, RequestKey};

    fn cp(index: u64, d: u8) -> Checkpoint {
        Checkpoint {
            index,
            digest: [d; 32],
        }
    }

    fn seen(rows: &[(NodeId, &[(u64, u8)])]) -> BTreeMap<NodeId, Vec<Checkpoint>> {
        rows.iter()
            .map(|(n, l)| (*n, l.iter().map(|(i, d)| cp(*i, *d)).collect()))
            .collect()
    }

    #[test]
    fn voters_that_agree_find_nothing() {
        let s = seen(&[
            (1, &[(8, 1), (16, 2)]),
            (2, &[(8, 1), (16, 2)]),
            (3, &[(16, 2)]),
        ]);
        let c = compare(3, &s);
        assert!(c.mismatches.is_empty());
        assert_eq!(c.compared, 2);
        assert_eq!(c.agreed, BTreeMap::from([(1, 16), (2, 16), (3, 16)]));
    }

    #[test]
    fn the_voter_outside_the_majority_is_outvoted_at_its_first_differing_index() {
        let s = seen(&[
            (1, &[(8, 1), (16, 2), (24, 3)]),
            (2, &[(8, 1), (16, 2), (24, 3)]),
            (3, &[(8, 1), (16, 9), (24, 9)]),
        ]);
        let c = compare(3, &s);
        assert_eq!(
            c.mismatches,
            vec![Mismatch {
                node: 3,
                index: 16,
                others: vec![1, 2],
                outvoted: true
            }]
        );
        assert_eq!(c.agreed[&3], 8, "it last agreed before it diverged");
        assert_eq!(c.agreed[&1], 24);
    }

    #[test]
    fn two_voters_differing_without_a_majority_are_both_named_and_nobody_is_outvoted() {
        // Voter 3 has not reached index 16 (or did not answer).
        let s = seen(&[(1, &[(16, 1)]), (2, &[(16, 2)]), (3, &[(8, 5)])]);
        let c = compare(3, &s);
        assert_eq!(c.mismatches.len(), 2);
        assert!(c.mismatches.iter().all(|m| !m.outvoted && m.index == 16));
        assert_eq!(c.mismatches[0].node, 1);
        assert_eq!(c.mismatches[0].others, vec![2]);
        assert_eq!(c.mismatches[1].others, vec![1]);
        assert_eq!(c.compared, 1, "index 8 is held by one voter only");
        assert!(c.agreed.is_empty());
    }

    #[test]
    fn a_majority_counts_the_whole_voter_set_not_only_the_voters_that_answered() {
        // Five voters, two answered with one digest, one with another: 2 is no majority of 5.
        let s = seen(&[(1, &[(8, 1)]), (2, &[(8, 1)]), (3, &[(8, 2)])]);
        let c = compare(5, &s);
        assert!(c.mismatches.iter().all(|m| !m.outvoted));
        assert_eq!(c.mismatches.len(), 3);
        // With three of five in one group, the fourth is outvoted.
        let s = seen(&[
            (1, &[(8, 1)]),
            (2, &[(8, 1)]),
            (3, &[(8, 1)]),
            (4, &[(8, 2)]),
        ]);
        let c = compare(5, &s);
        assert_eq!(c.mismatches.len(), 1);
        assert!(c.mismatches[0].outvoted && c.mismatches[0].node == 4);
    }

    #[test]
    fn a_tie_between_two_halves_outvotes_nobody() {
        let s = seen(&[
            (1, &[(8, 1)]),
            (2, &[(8, 1)]),
            (3, &[(8, 2)]),
            (4, &[(8, 2)]),
        ]);
        let c = compare(4, &s);
        assert_eq!(c.mismatches.len(), 4);
        assert!(c.mismatches.iter().all(|m| !m.outvoted));
    }

    #[test]
    fn being_outvoted_later_wins_over_an_earlier_split() {
        let s = seen(&[
            (1, &[(8, 1), (16, 3)]),
            (2, &[(8, 2), (16, 3)]),
            (3, &[(16, 4)]),
        ]);
        let c = compare(3, &s);
        let three = c.mismatches.iter().find(|m| m.node == 3).expect("3");
        assert!(three.outvoted && three.index == 16);
        let one = c.mismatches.iter().find(|m| m.node == 1).expect("1");
        assert!(!one.outvoted && one.index == 8);
    }

    #[test]
    fn missing_indexes_are_not_compared() {
        let s = seen(&[(1, &[(8, 1)]), (2, &[(16, 2)]), (3, &[])]);
        let c = compare(3, &s);
        assert_eq!(c, Comparison::default());
    }

    fn memo(n: u64) -> Command {
        Command::Memoize {
            memos: vec![Memo {
                key: RequestKey::of("f", &n.to_le_bytes()),
                function: "f".into(),
                args: n.to_le_bytes().to_vec(),
                value: b"1".to_vec(),
            }],
            at: n,
        }
    }

    fn feed(cps: &Checkpoints, st: &mut ClusterState, from: u64, to: u64) {
        for i in from..to {
            st.apply(&memo(i));
            cps.after_apply(i, st);
        }
    }

    #[test]
    fn state_machines_fed_the_same_entries_record_equal_checkpoints() {
        let (a, b) = (Checkpoints::new(8), Checkpoints::new(8));
        let (mut sa, mut sb) = (ClusterState::new(), ClusterState::new());
        feed(&a, &mut sa, 1, 30);
        // b applies the same entries in other batches.
        feed(&b, &mut sb, 1, 13);
        feed(&b, &mut sb, 13, 30);
        let indexes: Vec<u64> = a.list().iter().map(|c| c.index).collect();
        assert_eq!(indexes, [8, 16, 24]);
        assert_eq!(a.list(), b.list());
        // Digests of different states differ.
        assert_ne!(a.list()[0].digest, a.list()[1].digest);
        assert_eq!(a.list()[2].digest, {
            let mut st = ClusterState::new();
            for i in 1..=24 {
                st.apply(&memo(i));
            }
            st.digest()
        });
        // A state that took one entry more differs from then on.
        let c = Checkpoints::new(8);
        let mut sc = ClusterState::new();
        feed(&c, &mut sc, 1, 10);
        sc.apply(&Command::RegisterNode {
            node: NodeInfo {
                id: 9,
                name: "x".into(),
                addr: "h:1".into(),
                cpus: 1,
                memory_bytes: 1,
                slots: 1,
                state: NodeState::Active,
                role: NodeRole::Worker,
                labels: Default::default(),
            },
            at: 0,
        });
        feed(&c, &mut sc, 10, 30);
        assert_eq!(c.list()[0], a.list()[0]);
        assert_ne!(c.list()[1], a.list()[1]);
    }

    #[test]
    fn only_the_newest_are_kept_and_a_new_interval_starts_afresh() {
        let cps = Checkpoints::new(MIN_EVERY);
        let mut st = ClusterState::new();
        feed(&cps, &mut st, 1, MIN_EVERY * (KEPT as u64 + 3) + 1);
        let list = cps.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].index, MIN_EVERY * 4);
        assert_eq!(list[KEPT - 1].index, MIN_EVERY * (KEPT as u64 + 3));
        cps.set_every(1);
        assert_eq!(cps.every(), MIN_EVERY, "the minimum holds");
        assert!(cps.list().is_empty());
    }
}
