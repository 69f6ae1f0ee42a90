//! The agent as its services and worker see it: the shared [`Context`] (reached through
//! `Deref`), the hub that wakes waiters and holds the current leadership, the function
//! registry, and the corruption checks' findings.

use crate::context::Context;
use crate::functions::Functions;
use crate::hub::Hub;
use crate::leadership::{Leadership, NotLeader};
use std::ops::Deref;
use std::sync::Arc;

/// The agent: its shared context and what only its services and worker use.
pub struct Agent {
    pub ctx: Arc<Context>,
    pub hub: Arc<Hub>,
    pub functions: Functions,
    /// What the corruption checks found, and whether this agent quarantined itself.
    pub integrity: crate::integrity::Integrity,
    /// Outcomes refused because they came from a node not holding the attempt.
    pub refusals: crate::provenance::Refusals,
}

impl Deref for Agent {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl Agent {
    /// Whether a stop of the Raft member is expected: the agent is shutting down, or it
    /// quarantined itself (which marks itself before it stops Raft). Any other stop is
    /// Raft failing.
    pub fn raft_stop_expected(&self) -> bool {
        self.shutdown.is_cancelled() || self.integrity.is_quarantined()
    }

    /// The leadership this agent holds, while it leads; otherwise who does, as far as it
    /// knows. The one leader check of the daemon: what only a leader may do takes the
    /// [`Leadership`] this returns.
    pub fn leadership(&self) -> Result<Arc<Leadership>, NotLeader> {
        match self.hub.leadership() {
            Some(l) if self.is_leader() => Ok(l),
            _ => {
                let (leader, addr) = match self.leader() {
                    Some((id, addr)) => (id, addr),
                    None => (None, String::new()),
                };
                Err(NotLeader {
                    me: self.me(),
                    leader,
                    addr,
                })
            }
        }
    }
}
