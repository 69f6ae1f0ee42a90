//! Who submitted each live request, and what each client identity has queued: the index
//! behind per-client admission, fair share and bulk cancel by client.
//!
//! Derived, never encoded: a member fills it by applying `Command::SubmitFrom`, which names
//! the caller. A child call belongs to the owner of its parent (its root caller). A request
//! whose submission this member did not apply itself (it came in a snapshot) or that was
//! submitted by a plain `Command::Submit` has the unknown owner [`UNKNOWN`], a bucket of its
//! own. Adding the owner to the encoded state would change the snapshot format and the
//! voters' digest; losing it for requests restored from a snapshot only merges them into one
//! bucket for fair share and per-client counts (see docs/operations.md#limits).

use mozen_model::RequestKey;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, btree_set};
use std::sync::Arc;

/// Queue order: higher priority first, then submission order.
pub(crate) type QueueKey = (Reverse<i32>, u64, RequestKey);

/// The owner of requests whose submitter this member does not know.
pub const UNKNOWN: &str = "";

/// What one client identity has queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// Its queued requests, in queue order.
    pub(crate) keys: BTreeSet<QueueKey>,
    /// Argument bytes of those requests.
    pub bytes: u64,
}

impl Queued {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The owner index; see the module docs. Invariant: every key of the state's queue is in
/// exactly one owner's `keys` (the owner `of` names, else [`UNKNOWN`]), and no owner is
/// listed with an empty queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Owner of each queued or running request with a known owner.
    pub(crate) of: HashMap<RequestKey, Arc<str>>,
    /// Queued requests per owner.
    pub(crate) queued: BTreeMap<Arc<str>, Queued>,
    /// Argument bytes of every queued request.
    pub(crate) bytes: u64,
}

impl Owners {
    /// The owner of `key` ([`UNKNOWN`] when not known).
    pub fn owner(&self, key: &RequestKey) -> &str {
        self.of.get(key).map_or(UNKNOWN, |o| o)
    }

    fn owner_arc(&self, key: &RequestKey) -> Arc<str> {
        self.of
            .get(key)
            .cloned()
            .unwrap_or_else(|| Arc::from(UNKNOWN))
    }

    pub(crate) fn set(&mut self, key: RequestKey, owner: Arc<str>) {
        if owner.is_empty() {
            self.of.remove(&key);
        } else {
            self.of.insert(key, owner);
        }
    }

    /// The request left the live set (finished, forgotten).
    pub(crate) fn drop_key(&mut self, key: &RequestKey) {
        self.of.remove(key);
    }

    pub(crate) fn enqueue(&mut self, qk: QueueKey, bytes: usize) {
        let owner = self.owner_arc(&qk.2);
        let q = self.queued.entry(owner).or_default();
        if q.keys.insert(qk) {
            q.bytes += bytes as u64;
            self.bytes += bytes as u64;
        }
    }

    pub(crate) fn dequeue(&mut self, qk: &QueueKey, bytes: usize) {
        let owner = self.owner_arc(&qk.2);
        if let Some(q) = self.queued.get_mut(&owner)
            && q.keys.remove(qk)
        {
            q.bytes -= bytes as u64;
            self.bytes -= bytes as u64;
            if q.keys.is_empty() {
                self.queued.remove(&owner);
            }
        }
    }

    /// What `owner` has queued.
    pub fn queued_by(&self, owner: &str) -> (usize, u64) {
        self.queued
            .get(owner)
            .map_or((0, 0), |q| (q.keys.len(), q.bytes))
    }

    /// Every owner with queued requests, and what it has queued.
    pub fn queues(&self) -> impl Iterator<Item = (&str, &Queued)> {
        self.queued.iter().map(|(o, q)| (&**o, q))
    }

    /// Queued keys in fair order: by priority, and within a priority round-robin between the
    /// owners (each owner's `n`-th queued request comes before any owner's `n+1`-th), each
    /// owner's own requests in its submission order. Each step costs O(log owners).
    pub fn fair(&self) -> Fair<'_> {
        let mut heads = BinaryHeap::with_capacity(self.queued.len());
        let mut iters = Vec::with_capacity(self.queued.len());
        for (i, q) in self.queued.values().enumerate() {
            let mut it = q.keys.iter();
            if let Some(&(prio, seq, key)) = it.next() {
                heads.push(Reverse((prio, 0u64, seq, i, key)));
            }
            iters.push(it);
        }
        Fair { heads, iters }
    }
}

/// Heap entry of [`Fair`]: (priority, round, seq, owner index, key), least first.
type Head = Reverse<(Reverse<i32>, u64, u64, usize, RequestKey)>;

/// The iterator of [`Owners::fair`].
pub struct Fair<'a> {
    heads: BinaryHeap<Head>,
    iters: Vec<btree_set::Iter<'a, QueueKey>>,
}

impl Iterator for Fair<'_> {
    type Item = RequestKey;

    fn next(&mut self) -> Option<RequestKey> {
        let Reverse((_, round, _, i, key)) = self.heads.pop()?;
        if let Some(&(prio, seq, next)) = self.iters[i].next() {
            self.heads.push(Reverse((prio, round + 1, seq, i, next)));
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> RequestKey {
        RequestKey::of("f", &[n])
    }

    #[test]
    fn fair_order_alternates_owners_within_a_priority() {
        let mut o = Owners::default();
        for n in 0..5u8 {
            o.set(k(n), Arc::from("flood"));
            o.enqueue((Reverse(0), n as u64, k(n)), 10);
        }
        o.set(k(10), Arc::from("other"));
        o.enqueue((Reverse(0), 10, k(10)), 3);
        // Unknown owner, higher priority: first whatever the rounds.
        o.enqueue((Reverse(5), 11, k(11)), 1);
        let order: Vec<_> = o.fair().collect();
        assert_eq!(order, vec![k(11), k(0), k(10), k(1), k(2), k(3), k(4)]);
        assert_eq!(o.queued_by("flood"), (5, 50));
        assert_eq!(o.queued_by("other"), (1, 3));
        assert_eq!(o.queued_by(UNKNOWN), (1, 1));
        assert_eq!(o.bytes, 54);
        o.dequeue(&(Reverse(0), 10, k(10)), 3);
        assert_eq!(o.queued_by("other"), (0, 0));
        assert!(o.queues().all(|(name, _)| name != "other"));
        assert_eq!(o.bytes, 51);
    }
}
