//! Liveness: the leader hears from every node (heartbeats, Work streams, joins) and marks
//! those silent for a lease down, which re-queues what ran there; a node marked down that is
//! heard from again is marked active and counted as a false suspicion. Heartbeat times and
//! throughput rates are leader memory, never log entries: a new leader starts them afresh,
//! except that nodes the previous leader marked down stay down until heard from.

use super::Leadership;
use crate::context::{Context, now_ms};
use mozen_model::{NodeId, NodeState};
use mozen_store::{Command, ForgetSelector};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a new leader waits for the previous leader's agent to reconnect before marking it
/// Down (which re-queues what ran there). Every other node gets the whole lease.
pub const PREVIOUS_LEADER_GRACE: Duration = Duration::from_secs(1);

/// Per-node liveness and throughput, kept by the leader.
#[derive(Default)]
pub struct Liveness {
    pub last_seen: HashMap<NodeId, Instant>,
    /// Agents shutting down: no new work for them.
    pub leaving: HashSet<NodeId>,
    /// Completed attempts per node since this leadership began.
    pub completed: HashMap<NodeId, u64>,
    /// Completions per second per node, refreshed about every second.
    pub rates: HashMap<NodeId, f64>,
    last_totals: HashMap<NodeId, u64>,
    last_rate_at: Option<Instant>,
    /// Requests re-queued when each node was marked down, until it is heard from again.
    pub requeued_at_down: HashMap<NodeId, u64>,
    /// Nodes marked down that were heard from again (a false suspicion), since this agent
    /// last became leader.
    pub false_suspicions: u64,
    /// Requests re-queued by those false suspicions: each may have run twice.
    pub reexecuted_after_false_suspicion: u64,
}

impl Liveness {
    /// Recomputes the per-node rates when a second has passed.
    pub fn refresh_rates(&mut self) {
        let now = Instant::now();
        let Some(prev) = self.last_rate_at else {
            self.last_rate_at = Some(now);
            self.last_totals = self.completed.clone();
            return;
        };
        let dt = now.duration_since(prev).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        for (node, total) in &self.completed {
            let before = self.last_totals.get(node).copied().unwrap_or(0);
            self.rates.insert(*node, (total - before) as f64 / dt);
        }
        self.last_totals = self.completed.clone();
        self.last_rate_at = Some(now);
    }
}

impl Leadership {
    /// Node `node` was heard from now.
    pub fn heard_from(&self, node: NodeId) {
        self.liveness
            .lock()
            .expect("liveness")
            .last_seen
            .insert(node, Instant::now());
    }

    /// Every node gets a whole lease to reach this new leader, but for those the previous
    /// leader had marked down, which stay down until heard from, and the previous leader,
    /// which gets [`PREVIOUS_LEADER_GRACE`].
    pub(super) fn seed_liveness(&self, agent: &Context, previous: Option<NodeId>) {
        let now = Instant::now();
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        let mut l = self.liveness.lock().expect("liveness");
        l.last_seen.clear();
        // Seeding a down node as just seen would turn it active at the next liveness pass.
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

    /// Marks nodes not heard from within the lease down (re-queueing what ran there) and
    /// nodes marked down that are heard from again active; bounds the memo table.
    pub(super) async fn liveness_loop(self: Arc<Self>, agent: Arc<Context>) {
        let lease = agent.cfg.lease;
        let tick = (lease / 6).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.token.cancelled() => return,
            }
            let now = Instant::now();
            let at = now_ms();
            let mut cmds = Vec::new();
            let excess;
            {
                let state = agent.sm.shared();
                let state = state.read().expect("state");
                let mut l = self.liveness.lock().expect("liveness");
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
}
