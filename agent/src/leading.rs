//! Leading: follows Raft's metrics and keeps the agent's [`Leadership`] in step with them.
//!
//! When this agent becomes leader a `Leadership` is made and installed in the hub (where the
//! services find it, through [`Agent::leadership`]); its loops begin once the first entry of
//! its term is applied. When the agent steps down, or the term changes, it is taken out of
//! the hub and ended, and every caller waiting on a request is woken to look again.

use crate::agent::Agent;
use crate::context::{leads, state_current};
use crate::leadership::Leadership;
use mozen_model::NodeId;
use std::sync::Arc;
use tracing::info;

/// Follows Raft's metrics: makes a [`Leadership`] when this agent becomes leader (installed in
/// the hub, where handlers find it), begins its loops once the first entry of its term is
/// applied, and ends it when the agent steps down or the term changes.
pub async fn watch(agent: Arc<Agent>) {
    let mut metrics = agent.raft.metrics();
    let mut known: Option<(u64, Option<u64>)> = None;
    let mut current: Option<(Arc<Leadership>, bool)> = None;
    // The last other agent seen leading: when this one takes over, that one is likely gone.
    let mut previous: Option<NodeId> = None;
    loop {
        let (leading, term, leader, current_state) = {
            let m = metrics.borrow_and_update();
            (
                leads(&m, agent.me()),
                m.current_term,
                m.current_leader,
                state_current(&m),
            )
        };
        if known != Some((term, leader)) {
            info!(term, leader = ?leader, "raft leader view changed");
            known = Some((term, leader));
            if let Some(l) = leader.filter(|l| *l != agent.me()) {
                previous = Some(l);
            }
        }
        if let Some((l, _)) = current.as_ref()
            && (!leading || l.term() != term)
        {
            info!(term = l.term(), "no longer leader");
            agent.hub.set_leadership(None);
            l.end();
            current = None;
            // Callers waiting on requests look again (and are told to follow the new leader).
            agent.hub.wake_all();
        }
        if leading && current.is_none() {
            let l = Arc::new(Leadership::new(term, agent.sm.shared(), &agent.shutdown));
            agent.hub.set_leadership(Some(l.clone()));
            current = Some((l, false));
        }
        if let Some((l, begun)) = current.as_mut()
            && !*begun
            && current_state
        {
            info!(term, "became leader: scheduling");
            l.begin(&agent.ctx, previous.take());
            *begun = true;
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { break },
            _ = agent.shutdown.cancelled() => break,
        }
    }
    if let Some((l, _)) = current {
        agent.hub.set_leadership(None);
        l.end();
    }
}
