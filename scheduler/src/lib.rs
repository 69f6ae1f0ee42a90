//! mozen-scheduler: placement decisions, as pure functions.
//!
//! The Raft leader feeds [`plan_on`] its view of the nodes (state, slots, busy slots, capacity
//! score; see [`NodeView`]) and the queue in scheduling order (priority, then submission
//! order); it returns assignments that the leader commits in one batched log entry. The rules:
//!
//! - never place on a node that is not Active (Draining, Drained and Down take no new work);
//! - never exceed a node's free slots, except that requests of functions known to be short may
//!   also wait in a node's local queue (`NodeLoad::queue` places beyond its slots), so that
//!   fast functions are not paced by the round trip between a slot freeing and the next
//!   assignment arriving; a short request still takes a free slot before a queue place;
//! - a child request goes to its parent's node when that node has a free slot (locality), and
//!   otherwise any node helps out (hoisting, after Girder's distributor);
//! - other requests go to the node with the greatest free capacity weighted by its score
//!   (`free / slots x score`), ties to the lowest id, so big machines fill first but an idle
//!   small machine still beats a busy big one;
//! - requests still in retry backoff are skipped, not reordered.
//!
//! The cost of a pass does not grow with the number of nodes: the nodes with room are kept
//! ranked in that order ([`LoadIndex`], maintained by the state machine as loads change), and a
//! pass reads the ranking from its head and re-ranks only the nodes it places on. `NodeLoad`,
//! `Rank` and `LoadIndex` are defined in mozen-model (the store keeps the index without
//! depending on this crate) and re-exported here.
//!
//! Dependency rule: depends on mozen-model only; no tokio, sled, openraft or tonic.

pub use mozen_model::load::{LoadIndex, NodeLoad, Rank};
use mozen_model::{NodeId, RequestKey};
use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;

/// The nodes a plan may use, as the planner reads them.
pub trait NodeView {
    /// The load of node `id`, or None if the plan may not use it.
    fn load(&self, id: NodeId) -> Option<NodeLoad>;

    /// The usable nodes that have room for a request of this kind (short or not), in order of
    /// their [`Rank`], each with that rank and its [`load`](Self::load). Every usable node
    /// with such room must be listed. A node may be listed at a better rank than its load now
    /// gives it (places taken since it was ranked, e.g. reservations), never a worse one: the
    /// plan re-ranks it.
    fn ranked(&self, short: bool) -> impl Iterator<Item = (Rank, NodeLoad)> + '_;
}

impl NodeView for LoadIndex {
    fn load(&self, id: NodeId) -> Option<NodeLoad> {
        self.get(id).cloned()
    }

    fn ranked(&self, short: bool) -> impl Iterator<Item = (Rank, NodeLoad)> + '_ {
        LoadIndex::ranked(self, short).map(|(r, l)| (*r, l.clone()))
    }
}

/// One queued request, in scheduling order.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: RequestKey,
    /// The node running a parent of this request, if any (locality hint).
    pub preferred: Option<NodeId>,
    /// False while the request waits out a retry backoff.
    pub ready: bool,
    /// The function is known to finish quickly: the request may wait in a node's local queue.
    pub short: bool,
}

/// Run `key` on `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub key: RequestKey,
    pub node: NodeId,
}

/// Requests examined for short ones after the last free slot was taken.
pub const SHORT_LOOKAHEAD: usize = 1024;

/// [`plan_on`] the given node loads (one per node id).
pub fn plan<I>(nodes: &[NodeLoad], queue: I, limit: usize) -> Vec<Placement>
where
    I: IntoIterator<Item = Candidate>,
{
    let index: LoadIndex = nodes.iter().cloned().collect();
    plan_on(&index, queue, limit)
}

/// Places queued requests on free slots (and short ones in local queues). At most `limit`
/// placements; stops early when the cluster has no room left. Reads the nodes' ranking from
/// its head and looks up only the nodes it considers, so its cost follows the placements
/// made, not the number of nodes.
pub fn plan_on<V, I>(nodes: &V, queue: I, limit: usize) -> Vec<Placement>
where
    V: NodeView,
    I: IntoIterator<Item = Candidate>,
{
    let mut pass = Pass {
        view: nodes,
        placed: BTreeMap::new(),
    };
    let mut long = Ranking::new(nodes.ranked(false), false);
    let mut short = Ranking::new(nodes.ranked(true), true);
    let mut queue = queue.into_iter();
    let mut out = Vec::new();
    // Once every slot is taken only short requests can still be placed: look for them among
    // the next SHORT_LOOKAHEAD requests at most, so a long queue of long requests costs a
    // bounded pass.
    let mut looked = 0usize;
    loop {
        if out.len() >= limit || short.best(&pass).is_none() {
            break;
        }
        let Some(c) = queue.next() else { break };
        let slot_left = long.best(&pass).is_some();
        if !slot_left {
            looked += 1;
            if looked > SHORT_LOOKAHEAD {
                break;
            }
        }
        if !c.ready || (!c.short && !slot_left) {
            continue;
        }
        let local = c
            .preferred
            .and_then(|p| pass.load(p))
            .filter(|n| n.free(c.short) > 0)
            .map(|n| n.id);
        let chosen = local.or_else(|| {
            if c.short {
                short.best(&pass)
            } else {
                long.best(&pass)
            }
        });
        let Some(id) = chosen else { continue };
        let Some(before) = pass.load(id) else {
            continue;
        };
        let mut after = before.clone();
        after.busy += 1;
        long.moved(&before, &after);
        short.moved(&before, &after);
        pass.placed.insert(id, after);
        out.push(Placement {
            key: c.key,
            node: id,
        });
    }
    out
}

/// The nodes during a pass: the view, with the places this pass has taken.
struct Pass<'a, V> {
    view: &'a V,
    placed: BTreeMap<NodeId, NodeLoad>,
}

impl<V: NodeView> Pass<'_, V> {
    fn load(&self, id: NodeId) -> Option<NodeLoad> {
        match self.placed.get(&id) {
            Some(l) => Some(l.clone()),
            None => self.view.load(id),
        }
    }
}

/// The order of preference during a pass, for one kind of request: the view's ranking, read
/// from its head, and the nodes whose load changed since it was ranked, by their rank now. A
/// node's load only grows, so its rank only gets worse: a node met at the head of the ranking
/// with an outdated rank moves to `moved`, and the best node is the better of the two heads.
struct Ranking<I: Iterator<Item = (Rank, NodeLoad)>> {
    short: bool,
    base: Peekable<I>,
    /// The rank of the ranking's head, once checked against the node's load now.
    checked: Option<Rank>,
    moved: BTreeSet<Rank>,
}

impl<I: Iterator<Item = (Rank, NodeLoad)>> Ranking<I> {
    fn new(base: I, short: bool) -> Self {
        Ranking {
            short,
            base: base.peekable(),
            checked: None,
            moved: BTreeSet::new(),
        }
    }

    /// The best node with room for this kind of request, if any.
    fn best<V: NodeView>(&mut self, pass: &Pass<'_, V>) -> Option<NodeId> {
        let head = loop {
            if self.checked.is_some() {
                break self.checked;
            }
            let Some((ranked, load)) = self.base.peek() else {
                break None;
            };
            let now = pass.placed.get(&load.id).unwrap_or(load).rank(self.short);
            if now == Some(*ranked) {
                self.checked = now;
            } else {
                if let Some(r) = now {
                    self.moved.insert(r);
                }
                self.base.next();
            }
        };
        match (head, self.moved.first()) {
            (Some(h), Some(m)) => Some(h.min(*m).id()),
            (h, m) => h.or(m.copied()).map(|r| r.id()),
        }
    }

    /// A placement changed a node's load from `before` to `after`.
    fn moved(&mut self, before: &NodeLoad, after: &NodeLoad) {
        if self.checked.is_some_and(|r| r.id() == after.id) {
            self.checked = None;
        }
        if let Some(r) = before.rank(self.short) {
            self.moved.remove(&r);
        }
        if let Some(r) = after.rank(self.short) {
            self.moved.insert(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mozen_model::NodeState;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn key(i: u64) -> RequestKey {
        RequestKey::of("t", &i.to_be_bytes())
    }

    fn node(id: NodeId, state: NodeState, slots: u32, busy: u32, score: f64) -> NodeLoad {
        NodeLoad {
            id,
            state,
            slots,
            busy,
            queue: 0,
            score,
        }
    }

    fn cand(i: u64, preferred: Option<NodeId>) -> Candidate {
        Candidate {
            key: key(i),
            preferred,
            ready: true,
            short: false,
        }
    }

    #[test]
    fn never_places_on_draining_drained_or_down_nodes() {
        let nodes = [
            node(1, NodeState::Draining, 4, 0, 10.0),
            node(2, NodeState::Drained, 4, 0, 10.0),
            node(3, NodeState::Down, 4, 0, 10.0),
            node(4, NodeState::Active, 2, 0, 1.0),
        ];
        let p = plan(&nodes, (0..10).map(|i| cand(i, Some(1))), 100);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.node == 4));
    }

    #[test]
    fn child_prefers_parent_node_with_free_slot() {
        let nodes = [
            node(1, NodeState::Active, 4, 0, 100.0),
            node(2, NodeState::Active, 4, 3, 1.0),
        ];
        let p = plan(&nodes, [cand(0, Some(2))], 10);
        assert_eq!(
            p,
            vec![Placement {
                key: key(0),
                node: 2
            }]
        );
    }

    #[test]
    fn child_is_hoisted_when_parent_node_is_full() {
        let nodes = [
            node(1, NodeState::Active, 4, 0, 1.0),
            node(2, NodeState::Active, 4, 4, 100.0),
        ];
        let p = plan(&nodes, [cand(0, Some(2))], 10);
        assert_eq!(
            p,
            vec![Placement {
                key: key(0),
                node: 1
            }]
        );
    }

    #[test]
    fn bigger_score_fills_first_but_idle_small_node_beats_busy_big_one() {
        let nodes = [
            node(1, NodeState::Active, 10, 0, 1.0),
            node(2, NodeState::Active, 10, 0, 8.0),
        ];
        let p = plan(&nodes, [cand(0, None)], 10);
        assert_eq!(p[0].node, 2);
        let nodes = [
            node(1, NodeState::Active, 10, 0, 1.0),
            node(2, NodeState::Active, 10, 9, 8.0),
        ];
        let p = plan(&nodes, [cand(0, None)], 10);
        assert_eq!(p[0].node, 1);
    }

    #[test]
    fn queue_order_is_kept_and_backoff_skipped() {
        let nodes = [node(1, NodeState::Active, 2, 0, 1.0)];
        let q = vec![
            cand(0, None),
            Candidate {
                key: key(1),
                preferred: None,
                ready: false,
                short: false,
            },
            cand(2, None),
            cand(3, None),
        ];
        let p = plan(&nodes, q, 10);
        assert_eq!(
            p.iter().map(|p| p.key).collect::<Vec<_>>(),
            vec![key(0), key(2)]
        );
    }

    #[test]
    fn limit_bounds_the_plan() {
        let nodes = [node(1, NodeState::Active, 100, 0, 1.0)];
        assert_eq!(plan(&nodes, (0..50).map(|i| cand(i, None)), 7).len(), 7);
    }

    #[test]
    fn short_requests_wait_in_local_queues_long_ones_only_take_slots() {
        let mut n = node(1, NodeState::Active, 2, 0, 1.0);
        n.queue = 3;
        let short = |i: u64| Candidate {
            short: true,
            ..cand(i, None)
        };
        // Two long requests fill the slots; the third waits in the cluster queue, while the
        // short ones behind it take the local queue.
        let q = vec![
            cand(0, None),
            cand(1, None),
            cand(2, None),
            short(3),
            short(4),
        ];
        let p = plan(std::slice::from_ref(&n), q, 10);
        assert_eq!(
            p.iter().map(|p| p.key).collect::<Vec<_>>(),
            vec![key(0), key(1), key(3), key(4)]
        );
        // Short requests alone: slots plus queue, no more.
        let p = plan(std::slice::from_ref(&n), (0..10).map(short), 10);
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn a_full_cluster_looks_only_a_bounded_way_ahead_for_short_requests() {
        let mut n = node(1, NodeState::Active, 1, 1, 1.0);
        n.queue = 4;
        let far = SHORT_LOOKAHEAD as u64 + 10;
        let q = (0..far).map(|i| Candidate {
            short: i == far - 1,
            ..cand(i, None)
        });
        assert!(plan(std::slice::from_ref(&n), q, 10).is_empty());
        let near = (0..10).map(|i| Candidate {
            short: i == 9,
            ..cand(i, None)
        });
        assert_eq!(plan(&[n], near, 10).len(), 1);
    }

    #[test]
    fn short_requests_go_to_free_slots_before_queues() {
        let mut busy = node(1, NodeState::Active, 2, 2, 1.0);
        busy.queue = 8;
        let mut idle = node(2, NodeState::Active, 2, 0, 1.0);
        idle.queue = 8;
        let c = Candidate {
            short: true,
            ..cand(0, None)
        };
        assert_eq!(plan(&[busy, idle], [c], 10)[0].node, 2);
    }

    /// The planner as it was before the ranking: every node scanned for every request.
    fn full_scan(nodes: &[NodeLoad], queue: Vec<Candidate>, limit: usize) -> Vec<Placement> {
        let mut loads: Vec<NodeLoad> = nodes.to_vec();
        loads.sort_by_key(|n| n.id);
        let total = |loads: &[NodeLoad], short: bool| -> u64 {
            loads.iter().map(|n| u64::from(n.free(short))).sum()
        };
        let mut room_long = total(&loads, false);
        let mut room_short = total(&loads, true);
        let mut out = Vec::new();
        let mut looked = 0usize;
        for c in queue {
            if out.len() >= limit || room_short == 0 {
                break;
            }
            if room_long == 0 {
                looked += 1;
                if looked > SHORT_LOOKAHEAD {
                    break;
                }
            }
            if !c.ready || (!c.short && room_long == 0) {
                continue;
            }
            let local = c
                .preferred
                .and_then(|p| loads.iter().position(|n| n.id == p && n.free(c.short) > 0));
            let best = || {
                let mut best: Option<(usize, f64)> = None;
                for (i, n) in loads.iter().enumerate() {
                    if n.free(c.short) == 0 {
                        continue;
                    }
                    let w = n.weight(c.short);
                    if best.is_none_or(|(_, bw)| w > bw) {
                        best = Some((i, w));
                    }
                }
                best.map(|(i, _)| i)
            };
            let Some(i) = local.or_else(best) else {
                continue;
            };
            if loads[i].free(false) > 0 {
                room_long -= 1;
            }
            room_short -= 1;
            loads[i].busy += 1;
            out.push(Placement {
                key: c.key,
                node: loads[i].id,
            });
        }
        out
    }

    /// A view ranked by older loads than it reports.
    struct Stale {
        ranked: LoadIndex,
        now: LoadIndex,
    }

    impl NodeView for Stale {
        fn load(&self, id: NodeId) -> Option<NodeLoad> {
            self.now.load(id)
        }

        fn ranked(&self, short: bool) -> impl Iterator<Item = (Rank, NodeLoad)> + '_ {
            self.ranked
                .ranked(short)
                .filter_map(|(r, l)| Some((*r, self.now.load(l.id)?)))
        }
    }

    fn state() -> impl Strategy<Value = NodeState> {
        prop_oneof![
            Just(NodeState::Active),
            Just(NodeState::Draining),
            Just(NodeState::Drained),
            Just(NodeState::Down)
        ]
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity_or_uses_inactive_nodes(
            nodes in proptest::collection::vec((state(), 0u32..8, 0u32..10, 0u32..6, 0.1f64..100.0), 0..12),
            queue in proptest::collection::vec((proptest::option::of(0u64..14), any::<bool>(), any::<bool>()), 0..80),
        ) {
            let loads: Vec<NodeLoad> = nodes.iter().enumerate()
                .map(|(i, (s, slots, busy, extra, score))| NodeLoad { queue: *extra, ..node(i as u64, *s, *slots, *busy, *score) }).collect();
            let q: Vec<Candidate> = queue.iter().enumerate()
                .map(|(i, (pref, ready, short))| Candidate { key: key(i as u64), preferred: *pref, ready: *ready, short: *short }).collect();
            let p = plan(&loads, q.clone(), usize::MAX);
            let mut added: BTreeMap<NodeId, u32> = BTreeMap::new();
            let mut long: BTreeMap<NodeId, u32> = BTreeMap::new();
            for pl in &p {
                *added.entry(pl.node).or_default() += 1;
                if !q.iter().any(|c| c.key == pl.key && c.short) {
                    *long.entry(pl.node).or_default() += 1;
                }
            }
            for (id, n) in &added {
                let l = &loads[*id as usize];
                prop_assert_eq!(l.state, NodeState::Active);
                prop_assert!(l.busy + n <= l.slots + l.queue);
            }
            // Long requests only take free slots.
            for (id, n) in &long {
                let l = &loads[*id as usize];
                prop_assert!(l.busy + n <= l.slots);
            }
            // A ready request is left only when there is no room of its kind anywhere.
            let mut after = loads.clone();
            for pl in &p {
                after[pl.node as usize].busy += 1;
            }
            let placed = |k: &RequestKey| p.iter().any(|pl| pl.key == *k);
            for c in q.iter().filter(|c| c.ready && !placed(&c.key)) {
                prop_assert_eq!(after.iter().map(|n| n.free(c.short)).sum::<u32>(), 0);
            }
            // Each key at most once, in queue order.
            let order: Vec<usize> = p.iter().map(|pl| q.iter().position(|c| c.key == pl.key).unwrap()).collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
        }

        #[test]
        fn plan_matches_the_full_scan(
            nodes in proptest::collection::vec((state(), 0u32..8, 0u32..10, 0u32..6, 0.1f64..100.0, 0u32..3), 0..12),
            queue in proptest::collection::vec((proptest::option::of(0u64..14), any::<bool>(), any::<bool>()), 0..80),
            limit in 0usize..100,
        ) {
            let loads: Vec<NodeLoad> = nodes.iter().enumerate()
                .map(|(i, (s, slots, busy, extra, score, _))| NodeLoad { queue: *extra, ..node(i as u64, *s, *slots, *busy, *score) }).collect();
            let q: Vec<Candidate> = queue.iter().enumerate()
                .map(|(i, (pref, ready, short))| Candidate { key: key(i as u64), preferred: *pref, ready: *ready, short: *short }).collect();
            let expected = full_scan(&loads, q.clone(), limit);
            prop_assert_eq!(&plan(&loads, q.clone(), limit), &expected);
            // Ranked by loads older than the ones it reads (places reserved since): the same plan.
            let stale = Stale {
                ranked: loads.iter().zip(&nodes).map(|(l, n)| NodeLoad { busy: l.busy.saturating_sub(n.5), ..l.clone() }).collect(),
                now: loads.iter().cloned().collect(),
            };
            prop_assert_eq!(&plan_on(&stale, q, limit), &expected);
        }

        #[test]
        fn index_updated_in_place_equals_one_built_at_once(
            ops in proptest::collection::vec((0u64..10, proptest::option::of((state(), 0u32..6, 0u32..9, 0u32..4, 0.1f64..8.0))), 0..60),
        ) {
            let mut index = LoadIndex::new();
            let mut plain: BTreeMap<NodeId, NodeLoad> = BTreeMap::new();
            for (id, op) in ops {
                match op {
                    Some((s, slots, busy, extra, score)) => {
                        let l = NodeLoad { queue: extra, ..node(id, s, slots, busy, score) };
                        plain.insert(id, l.clone());
                        index.set(l);
                    }
                    None => {
                        plain.remove(&id);
                        index.remove(id);
                    }
                }
            }
            let rebuilt: LoadIndex = plain.values().cloned().collect();
            prop_assert_eq!(&index, &rebuilt);
            for short in [false, true] {
                let mut by_scan: Vec<&NodeLoad> = plain.values().filter(|n| n.free(short) > 0).collect();
                by_scan.sort_by(|a, b| b.weight(short).total_cmp(&a.weight(short)).then(a.id.cmp(&b.id)));
                prop_assert_eq!(index.ranked(short).map(|(_, l)| l).collect::<Vec<_>>(), by_scan);
            }
        }
    }
}
