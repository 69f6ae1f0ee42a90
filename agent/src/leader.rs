//! What the leader does besides replicating: schedule, watch liveness, bound the memo table.
//!
//! [`watch_leadership`] follows Raft metrics; when this agent becomes leader it starts a
//! session (scheduler loop + liveness loop) under a child token, and cancels it when
//! leadership is lost. A new leader starts every node's lease afresh.

use crate::hub::Reservation;
use crate::node::{Agent, now_ms};
use crate::proposer::ProposeError;
use mozen_model::{Millis, NodeId, NodeState, RequestKey, RequestState};
use mozen_scheduler::{Candidate, LoadIndex, NodeLoad, NodeView, Rank, plan_on};
use mozen_store::{Assignment, ClusterState, Command, ForgetSelector};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Most assignments in one plan (one log entry).
pub const PLAN_LIMIT: usize = 4096;

pub async fn watch_leadership(agent: Arc<Agent>) {
    let mut metrics = agent.raft.metrics();
    let mut session: Option<CancellationToken> = None;
    let mut known: Option<(u64, Option<u64>, bool)> = None;
    // The last other agent seen leading: when this one takes over, that one is likely gone.
    let mut previous: Option<NodeId> = None;
    loop {
        let (leading, term, leader, applied_term) = {
            let m = metrics.borrow_and_update();
            (
                crate::node::leads(&m, agent.me()),
                m.current_term,
                m.current_leader,
                m.last_applied.map(|l| l.leader_id.term),
            )
        };
        if known.is_none_or(|(t, l, _)| (t, l) != (term, leader)) {
            info!(term, leader = ?leader, "raft leader view changed");
            known = Some((term, leader, false));
            if let Some(l) = leader.filter(|l| *l != agent.me()) {
                previous = Some(l);
            }
        }
        if let Some((t, l, false)) = known
            && applied_term == Some(t)
        {
            info!(term, "first entry of this term applied");
            known = Some((t, l, true));
        }
        // A session starts once the first entry of this term is applied: before that the
        // state may lack entries the previous leader committed (a node it marked down would
        // look active and be revived by the liveness pass).
        let ready = leading && known.is_some_and(|(t, _, applied)| t == term && applied);
        match (ready, session.is_some()) {
            (true, false) => {
                info!(
                    term = agent.raft.metrics().borrow().current_term,
                    "became leader: scheduling"
                );
                let token = agent.shutdown.child_token();
                start_session(agent.clone(), token.clone(), previous.take());
                session = Some(token);
            }
            (false, true) => {
                info!("no longer leader");
                if let Some(t) = session.take() {
                    t.cancel();
                }
                // Workers reconnect to the new leader.
                agent.hub.streams.lock().expect("streams").clear();
                // Express calls not written down are their callers' to send again.
                crate::express::drop_all(&agent.hub);
                agent.hub.wake_all();
            }
            _ => {}
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { break },
            _ = agent.shutdown.cancelled() => break,
        }
    }
    if let Some(t) = session {
        t.cancel();
    }
}

/// How long a new leader waits for the previous leader's agent to reconnect before marking it
/// Down (which re-queues what ran there). Every other node gets the whole lease.
pub const PREVIOUS_LEADER_GRACE: Duration = Duration::from_secs(1);

fn start_session(agent: Arc<Agent>, token: CancellationToken, previous: Option<NodeId>) {
    {
        let now = Instant::now();
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        let mut l = agent.hub.liveness.lock().expect("liveness");
        l.last_seen.clear();
        // Nodes the previous leader had marked down stay unknown until they are heard from in
        // this term (a heartbeat or a join): seeding them as just seen would turn them active
        // at the next liveness pass. The others get a whole lease to reconnect.
        for n in state.nodes().filter(|n| n.state != NodeState::Down) {
            l.last_seen.insert(n.id, now);
        }
        // The previous leader has been silent for at least its lease already (or it gave up
        // leading): if it does not reconnect within the grace, what it ran is re-queued then
        // rather than after a whole lease. Re-running is safe: functions are pure and a
        // completion of an older attempt changes nothing.
        if let Some(p) = previous.filter(|p| *p != agent.me())
            && let Some(seen) = agent
                .cfg
                .lease
                .checked_sub(PREVIOUS_LEADER_GRACE)
                .and_then(|back| now.checked_sub(back))
        {
            l.last_seen.insert(p, seen);
        }
    }
    // A leader that goes on leading without one of these loops would stall the cluster; a
    // panic in one stops the agent instead (see `supervise`), and a new leader takes over.
    let sup = agent.supervisor.clone();
    let may_end = crate::supervise::Lives::MayEnd;
    let loops = [
        (
            "scheduler",
            tokio::spawn(scheduler_loop(agent.clone(), token.clone())),
        ),
        (
            "autoscaler",
            tokio::spawn(crate::autoscale::run(agent.clone(), token.clone())),
        ),
        (
            "express loop",
            tokio::spawn(crate::express::run(agent.clone(), token.clone())),
        ),
        ("liveness loop", tokio::spawn(liveness_loop(agent, token))),
    ];
    for (name, task) in loops {
        sup.watch(name, may_end, task);
    }
}

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

/// Builds one plan from the replicated state and the leader's liveness view.
fn make_plan(agent: &Agent) -> Vec<Assignment> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let reserved = agent.hub.reservations().clone();
    let short = agent.hub.short_functions();
    // Held for the pass (same order as everywhere: state, streams, liveness), so that only
    // the nodes the pass looks at are checked.
    let streams = agent.hub.streams.lock().expect("streams");
    let liveness = agent.hub.liveness.lock().expect("liveness");
    let eligible = |id: NodeId| streams.contains_key(&id) && !liveness.leaving.contains(&id);
    plan_pass(&state, eligible, &reserved, &short, now_ms())
}

/// One scheduling pass: the queue in order, each request with its parent's node as locality
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
    let queue = state.queue().map(|r| Candidate {
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

/// Where a request about to be submitted can start at once, so that its submission and its
/// assignment ride in one log entry: only when nothing else is queued (first come, first
/// served: no call held in leader memory either) and a slot is free. The state machine rejects the assignment harmlessly if the
/// submission turns out to join or hit an existing request, or the slot was taken meanwhile.
pub fn place_now<'a>(
    agent: &'a Agent,
    key: RequestKey,
    function: &str,
    parent: Option<RequestKey>,
) -> Option<(Assignment, Reservation<'a>)> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    if state.queue().next().is_some()
        || state.request_state(&key).is_some()
        || !agent.hub.held.lock().expect("held").is_empty()
    {
        return None;
    }
    let short = agent.hub.is_short(function);
    let mut reserved = agent.hub.reservations();
    let candidate = Candidate {
        key,
        preferred: preferred_node(&state, parent.as_slice()),
        ready: true,
        short,
    };
    let node = {
        let streams = agent.hub.streams.lock().expect("streams");
        let liveness = agent.hub.liveness.lock().expect("liveness");
        let eligible = |id: NodeId| streams.contains_key(&id) && !liveness.leaving.contains(&id);
        let nodes = Nodes::new(&state, eligible, &reserved, true);
        plan_on(&nodes, [candidate], 1).first()?.node
    };
    let held = agent.hub.reserve(&mut reserved, node);
    Some((
        Assignment {
            key,
            node,
            attempt: 1,
        },
        held,
    ))
}

async fn scheduler_loop(agent: Arc<Agent>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = agent.hub.schedule.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = token.cancelled() => return,
        }
        if agent.stopping.is_cancelled() {
            return;
        }
        // Calls held in leader memory came before anything queued in the log meanwhile.
        crate::express::fly_held(&agent);
        let assignments = make_plan(&agent);
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
        agent.hub.schedule.notify_one();
    }
}

async fn liveness_loop(agent: Arc<Agent>, token: CancellationToken) {
    let lease = agent.cfg.lease;
    let tick = (lease / 6).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = token.cancelled() => return,
        }
        let now = Instant::now();
        let at = now_ms();
        let mut cmds = Vec::new();
        let excess;
        {
            let state = agent.sm.shared();
            let state = state.read().expect("state");
            let mut l = agent.hub.liveness.lock().expect("liveness");
            l.refresh_rates();
            for n in state.nodes() {
                let seen = match l.last_seen.get(&n.id) {
                    Some(seen) => *seen,
                    // Down and not heard from in this term: still down.
                    None if n.state == NodeState::Down => continue,
                    // New in the table since this term began: a whole lease from now.
                    None => *l.last_seen.entry(n.id).or_insert(now),
                };
                let fresh = now.duration_since(seen) < lease;
                match (n.state, fresh) {
                    (NodeState::Down, true) => {
                        // A node given up for dead is back: what it ran was re-queued and may
                        // have run twice (safe: functions are pure). Counted for operators.
                        let requeued = l.requeued_at_down.remove(&n.id).unwrap_or(0);
                        l.false_suspicions += 1;
                        l.reexecuted_after_false_suspicion += requeued;
                        info!(
                            node = n.id,
                            requeued, "a node marked down is heard from again: marking active"
                        );
                        cmds.push(Command::SetNodeState {
                            id: n.id,
                            state: NodeState::Active,
                            at,
                        });
                        cmds.push(Command::Event {
                            kind: "node-back".into(),
                            node: Some(n.id),
                            message: format!(
                                "node {} was marked down and is heard from again: the {requeued} requests it was running had been re-queued and may run twice",
                                n.id
                            ),
                            at,
                        });
                    }
                    (NodeState::Down, false) => {}
                    (_, false) => {
                        info!(node = n.id, "no heartbeat within the lease: marking down");
                        let running = state.running_on(n.id).count() as u64;
                        l.requeued_at_down.insert(n.id, running);
                        cmds.push(Command::SetNodeState {
                            id: n.id,
                            state: NodeState::Down,
                            at,
                        });
                    }
                    _ => {}
                }
            }
            excess = (state.finished_len() as u64).saturating_sub(agent.cfg.memo_limit);
        }
        if excess > 0 {
            cmds.push(Command::Forget {
                selector: ForgetSelector::Oldest(excess),
                at,
            });
        }
        if cmds.is_empty() {
            continue;
        }
        let cmd = if cmds.len() == 1 {
            cmds.pop().expect("one")
        } else {
            Command::Batch(cmds)
        };
        if let Err(e) = agent.propose(cmd).await {
            warn!("liveness: {e}");
        }
    }
}

/// Requests the state shows running on `node` for a while that the worker does not report:
/// their assignment was lost (e.g. a stream broke as it was sent).
pub fn lost_assignments(
    agent: &Agent,
    node: u64,
    reported: &[RequestKey],
    grace_ms: u64,
) -> Vec<RequestKey> {
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
