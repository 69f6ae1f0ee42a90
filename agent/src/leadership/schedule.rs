//! Scheduling: placing queued requests on the nodes with free places, one plan (one log
//! entry) per pass, and placing a single call at once when nothing is queued.
//!
//! The scheduler loop wakes when the queue or the capacity changed (see
//! [`Leadership::on_applied`]) or every 100 ms, flies held express calls first (they came
//! before anything queued meanwhile), then proposes one `Assign` with the pass's plan.

use super::{Leadership, Reservation};
use crate::context::{Context, now_ms};
use crate::proposer::ProposeError;
use mozen_model::{Millis, NodeId, RequestKey, RequestState};
use mozen_scheduler::{Candidate, LoadIndex, NodeLoad, NodeView, Rank, plan_on};
use mozen_store::{Assignment, ClusterState, Command};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Most assignments in one plan (one log entry).
pub const PLAN_LIMIT: usize = 4096;

/// The nodes as this leader's scheduler sees them: the state's node loads, ranked as the
/// planner prefers them, less the nodes `eligible` refuses (no Work stream to this leader, or
/// shutting down), with the places `reserved` for assignments not applied yet. Without local
/// queues (no function known to be short) queue places count for none.
pub struct Nodes<'a, E> {
    loads: &'a LoadIndex,
    eligible: E,
    reserved: &'a HashMap<NodeId, u32>,
    queues: bool,
}

impl<'a, E: Fn(NodeId) -> bool> Nodes<'a, E> {
    pub fn new(
        state: &'a ClusterState,
        eligible: E,
        reserved: &'a HashMap<NodeId, u32>,
        queues: bool,
    ) -> Self {
        Nodes {
            loads: state.loads(),
            eligible,
            reserved,
            queues,
        }
    }

    /// The load of a node the state lists, as the plan sees it.
    fn now(&self, l: &NodeLoad) -> NodeLoad {
        let mut l = NodeLoad {
            queue: if self.queues { l.queue } else { 0 },
            ..l.clone()
        };
        if !self.reserved.is_empty() {
            l.busy = l
                .busy
                .saturating_add(self.reserved.get(&l.id).copied().unwrap_or(0));
        }
        l
    }
}

impl<E: Fn(NodeId) -> bool> NodeView for Nodes<'_, E> {
    fn load(&self, id: NodeId) -> Option<NodeLoad> {
        if !(self.eligible)(id) {
            return None;
        }
        self.loads.get(id).map(|l| self.now(l))
    }

    // Ranked by the state's busy counts: a node with places reserved is listed at a better
    // rank than its load now gives it, which the planner allows for. Without local queues the
    // ranking for short requests is the one for the others.
    fn ranked(&self, short: bool) -> impl Iterator<Item = (Rank, NodeLoad)> + '_ {
        self.loads
            .ranked(short && self.queues)
            .filter(|(_, l)| (self.eligible)(l.id))
            .map(|(r, l)| (*r, self.now(l)))
    }
}

/// One scheduling pass: the queue in fair order, each request with its parent's node as locality
/// hint and whether its function is `short`, placed on the nodes `eligible` accepts (counting
/// places `reserved` for assignments not applied yet). Also driven by the `scale` benchmark.
pub fn plan_pass(
    state: &ClusterState,
    eligible: impl Fn(NodeId) -> bool,
    reserved: &HashMap<NodeId, u32>,
    short: &HashSet<String>,
    now: Millis,
) -> Vec<Assignment> {
    // With no short function known, local queues cannot be used: the pass ends at the last
    // free slot instead of looking further for short requests.
    let nodes = Nodes::new(state, eligible, reserved, !short.is_empty());
    // Fair share: within a priority, client identities take turns (see `Owners::fair`), so a
    // flood of one client's requests does not stand in front of another's.
    let queue = state.queue_fair().map(|r| Candidate {
        key: r.key,
        preferred: preferred_node(state, &r.parents),
        ready: r.not_before <= now,
        short: short.contains(&r.function),
    });
    plan_on(&nodes, queue, PLAN_LIMIT)
        .into_iter()
        .map(|p| Assignment {
            key: p.key,
            node: p.node,
            attempt: state.request(&p.key).map_or(1, |r| r.attempts + 1),
        })
        .collect()
}

/// The node running one of `parents`, if any (locality hint).
pub(crate) fn preferred_node(state: &ClusterState, parents: &[RequestKey]) -> Option<u64> {
    parents
        .iter()
        .find_map(|p| state.request(p).and_then(|pr| pr.state.node()))
}

impl Leadership {
    /// Runs `f` with the test of the nodes this leader may place work on: those with a Work
    /// stream open to it and not shutting down. Lock order everywhere: state, streams,
    /// liveness.
    pub fn with_eligible<R>(&self, f: impl FnOnce(&dyn Fn(NodeId) -> bool) -> R) -> R {
        let streams = self.streams.lock().expect("streams");
        let liveness = self.liveness.lock().expect("liveness");
        let eligible = |id: NodeId| streams.contains_key(&id) && !liveness.leaving.contains(&id);
        f(&eligible)
    }

    /// Builds one plan from the replicated state and this leader's liveness view.
    fn make_plan(&self, agent: &Context) -> Vec<Assignment> {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        let reserved = self.reservations().clone();
        let short = self.short_functions();
        self.with_eligible(|eligible| plan_pass(&state, eligible, &reserved, &short, now_ms()))
    }

    /// Where a request about to be submitted can start at once, so that its submission and
    /// its assignment ride in one log entry: only when nothing else is queued (first come,
    /// first served: no call held in leader memory either) and a slot is free. The state
    /// machine rejects the assignment harmlessly if the submission turns out to join or hit an
    /// existing request, or the slot was taken meanwhile.
    pub fn place_now(
        &self,
        agent: &Context,
        key: RequestKey,
        function: &str,
        parent: Option<RequestKey>,
    ) -> Option<(Assignment, Reservation<'_>)> {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        if state.queue().next().is_some()
            || state.request_state(&key).is_some()
            || !self.held.lock().expect("held").is_empty()
        {
            return None;
        }
        let short = self.is_short(function);
        let mut reserved = self.reservations();
        let candidate = Candidate {
            key,
            preferred: preferred_node(&state, parent.as_slice()),
            ready: true,
            short,
        };
        let node = self.with_eligible(|eligible| {
            let nodes = Nodes::new(&state, eligible, &reserved, true);
            plan_on(&nodes, [candidate], 1).first().map(|p| p.node)
        })?;
        let held = self.reserve(&mut reserved, node);
        Some((
            Assignment {
                key,
                node,
                attempt: 1,
            },
            held,
        ))
    }

    /// Places queued requests whenever the queue or the capacity changed, or every 100 ms.
    pub(super) async fn scheduler_loop(self: Arc<Self>, agent: Arc<Context>) {
        loop {
            tokio::select! {
                _ = self.schedule.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.token.cancelled() => return,
            }
            if agent.stopping.is_cancelled() {
                return;
            }
            // Calls held in leader memory came before anything queued in the log meanwhile.
            self.fly_held(&agent);
            let assignments = self.make_plan(&agent);
            if assignments.is_empty() {
                continue;
            }
            match agent
                .propose(Command::Assign {
                    assignments,
                    at: now_ms(),
                })
                .await
            {
                Ok(_) => {}
                Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Closed) => return,
                Err(e) => {
                    warn!("assign: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // More may be placeable right away (e.g. the plan hit its limit).
            self.schedule.notify_one();
        }
    }
}

/// Requests the state shows running on `node` for a while that the worker does not report:
/// their assignment was lost (e.g. a stream broke as it was sent).
pub fn lost_assignments(
    agent: &Context,
    node: u64,
    reported: &[RequestKey],
    grace_ms: u64,
) -> Vec<RequestKey> {
    // A set: a node may report tens of thousands of running requests (sleeps hold no slot),
    // and a scan of the list per request made each heartbeat quadratic, under the state lock.
    let reported: HashSet<&RequestKey> = reported.iter().collect();
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let now = now_ms();
    state
        .running_on(node)
        .filter(|r| matches!(r.state, RequestState::Running { since, .. } if now.saturating_sub(since) > grace_ms))
        .filter(|r| !reported.contains(&r.key))
        .map(|r| r.key)
        .collect()
}
