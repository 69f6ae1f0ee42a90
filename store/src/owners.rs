//! Who submitted each live (queued or running) request, and what each client identity has
//! outstanding: the index behind per-client admission, fair share and bulk cancel by client.
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

/// Requests and argument bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: usize,
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
    }

    fn sub(&mut self, bytes: u64) {
        self.requests -= 1;
        self.bytes -= bytes;
    }
}

/// The owner index; see the module docs. Invariants: every live (queued or running) request
/// is in `of`; `usage` and `total` sum what `of` holds; every key of the state's queue is in
/// exactly one owner's `queued` set (its owner's), and no owner is listed with nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Owner and argument bytes of each live request.
    pub(crate) of: HashMap<RequestKey, (Arc<str>, u64)>,
    /// Live requests per owner.
    pub(crate) usage: BTreeMap<Arc<str>, Usage>,
    /// Every live request.
    pub(crate) total: Usage,
    /// Queued requests per owner, in queue order.
    pub(crate) queued: BTreeMap<Arc<str>, BTreeSet<QueueKey>>,
}

impl Owners {
    /// The owner of `key` ([`UNKNOWN`] when not known).
    pub fn owner(&self, key: &RequestKey) -> &str {
        self.of.get(key).map_or(UNKNOWN, |(o, _)| o)
    }

    fn owner_arc(&self, key: &RequestKey) -> Arc<str> {
        self.of
            .get(key)
            .map_or_else(|| Arc::from(UNKNOWN), |(o, _)| o.clone())
    }

    /// A request became live, owned by `owner`.
    pub(crate) fn add(&mut self, key: RequestKey, owner: Arc<str>, bytes: u64) {
        self.drop_key(&key);
        self.usage.entry(owner.clone()).or_default().add(bytes);
        self.total.add(bytes);
        self.of.insert(key, (owner, bytes));
    }

    /// The request left the live set (finished).
    pub(crate) fn drop_key(&mut self, key: &RequestKey) {
        // A hash map keeps its largest size: give the memory of a flood back once it is gone
        // (amortized: only when four times too large).
        if self.of.capacity() > 4 * self.of.len() + 1024 {
            self.of.shrink_to(2 * self.of.len());
        }
        if let Some((owner, bytes)) = self.of.remove(key) {
            self.total.sub(bytes);
            if let Some(u) = self.usage.get_mut(&owner) {
                u.sub(bytes);
                if u.requests == 0 {
                    self.usage.remove(&owner);
                }
            }
        }
    }

    pub(crate) fn enqueue(&mut self, qk: QueueKey) {
        let owner = self.owner_arc(&qk.2);
        self.queued.entry(owner).or_default().insert(qk);
    }

    pub(crate) fn dequeue(&mut self, qk: &QueueKey) {
        let owner = self.owner_arc(&qk.2);
        if let Some(q) = self.queued.get_mut(&owner) {
            q.remove(qk);
            if q.is_empty() {
                self.queued.remove(&owner);
            }
        }
    }

    /// Live (queued or running) requests of `owner` and their argument bytes.
    pub fn usage_of(&self, owner: &str) -> Usage {
        self.usage.get(owner).copied().unwrap_or_default()
    }

    /// Every live request and their argument bytes.
    pub fn total(&self) -> Usage {
        self.total
    }

    /// Every owner with live requests, and its usage.
    pub fn usage(&self) -> impl Iterator<Item = (&str, Usage)> {
        self.usage.iter().map(|(o, u)| (&**o, *u))
    }

    /// How many requests `owner` has queued.
    pub fn queued_by(&self, owner: &str) -> usize {
        self.queued.get(owner).map_or(0, BTreeSet::len)
    }

    /// Queued keys in fair order: by priority, and within a priority the owners take turns,
    /// the owner with the fewest requests started first: an owner's queued request that would
    /// be its `n`-th running one comes before any owner's `n+1`-th. Each owner's own requests
    /// keep their queue order. Each step costs O(log owners).
    pub fn fair(&self) -> Fair<'_> {
        let mut heads = BinaryHeap::with_capacity(self.queued.len());
        let mut iters = Vec::with_capacity(self.queued.len());
        for (i, (owner, q)) in self.queued.iter().enumerate() {
            let running = self.usage_of(owner).requests.saturating_sub(q.len());
            let mut it = q.iter();
            if let Some(&(prio, seq, key)) = it.next() {
                heads.push(Reverse((prio, running as u64, seq, i, key)));
            }
            iters.push(it);
        }
        Fair { heads, iters }
    }
}

/// Heap entry of [`Fair`]: (priority, turn, seq, owner index, key), least first.
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
            o.add(k(n), Arc::from("flood"), 10);
            o.enqueue((Reverse(0), n as u64, k(n)));
        }
        o.add(k(10), Arc::from("other"), 3);
        o.enqueue((Reverse(0), 10, k(10)));
        // Unknown owner, higher priority: first whatever the rounds.
        o.add(k(11), Arc::from(UNKNOWN), 1);
        o.enqueue((Reverse(5), 11, k(11)));
        let order: Vec<_> = o.fair().collect();
        assert_eq!(order, vec![k(11), k(0), k(10), k(1), k(2), k(3), k(4)]);
        assert_eq!(
            o.usage_of("flood"),
            Usage {
                requests: 5,
                bytes: 50
            }
        );
        assert_eq!(o.queued_by("other"), 1);
        assert_eq!(
            o.total(),
            Usage {
                requests: 7,
                bytes: 54
            }
        );
        // One of flood's starts: other's next request comes before flood's next two.
        o.dequeue(&(Reverse(0), 0, k(0)));
        o.add(k(12), Arc::from("other"), 0);
        o.enqueue((Reverse(0), 12, k(12)));
        let order: Vec<_> = o.fair().collect();
        assert_eq!(order, vec![k(11), k(10), k(1), k(12), k(2), k(3), k(4)]);
        o.dequeue(&(Reverse(0), 12, k(12)));
        o.drop_key(&k(12));
        o.dequeue(&(Reverse(0), 10, k(10)));
        assert_eq!(o.queued_by("other"), 0);
        assert_eq!(o.usage_of("other").requests, 1, "running still counts");
        o.drop_key(&k(10));
        assert_eq!(o.usage_of("other"), Usage::default());
        assert!(o.usage().all(|(name, _)| name != "other"));
        assert_eq!(
            o.total(),
            Usage {
                requests: 6,
                bytes: 51
            }
        );
    }
}
