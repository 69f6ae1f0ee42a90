//! The agent's shared context: handles only.
//!
//! [`Context`] holds what every part of the agent shares (the validated config, the Raft
//! member and its store, the batching proposer, the client to the cluster, the shutdown tree
//! and the supervisor), with the questions asked of Raft's metrics: who leads, who is a
//! member, which role a node has. The leadership, the worker and the services take it (or the
//! [`crate::agent::Agent`] that adds the hub, the functions and the corruption checks) and own
//! their state themselves.

use crate::client::Client;
use crate::config::AgentConfig;
use crate::faults::Faults;
use crate::proposer::{ProposeError, Proposer};
use crate::supervise::Supervisor;
use mozen_model::{NodeId, NodeInfo, NodeRole, NodeState};
use mozen_store::{Command, LogStore, Raft, RaftNode, StateMachineStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Milliseconds since the epoch, stamped into commands by the proposer.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The handles every part of the agent shares: config, Raft and the store, the proposer,
/// the client to the cluster, the shutdown tree, the supervisor.
pub struct Context {
    pub cfg: AgentConfig,
    pub raft: Raft,
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub proposer: Proposer,
    /// Talks to the cluster's leader (used by the worker and for child calls).
    pub client: Client,
    /// Fires when the agent must stop; children stop their loops.
    pub shutdown: CancellationToken,
    /// Fires first on shutdown: stop taking new work.
    pub stopping: CancellationToken,
    /// Set when the node table no longer has this node (it was removed).
    pub removed: CancellationToken,
    pub tasks: TaskTracker,
    /// The leader's address as last learnt (used by non-members to redirect clients).
    pub known_leader: Mutex<Option<String>>,
    /// The last `AppendEntries` received, and its leader (see [`crate::failover`]).
    pub leader_contact: crate::network::LeaderContact,
    pub started: Instant,
    /// The test-only fault table (`--fault-file`), shared with the transport and the guard.
    pub faults: Option<Arc<Faults>>,
    /// Watches the Raft core and the essential tasks; `run` stops when one dies.
    pub supervisor: Arc<Supervisor>,
    pub(crate) conn_seq: AtomicU64,
}

impl Context {
    pub fn me(&self) -> NodeId {
        self.cfg.id
    }

    pub fn next_conn(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this agent is the Raft leader right now (and still hears from a quorum).
    pub fn is_leader(&self) -> bool {
        leads(&self.raft.metrics().borrow(), self.me())
    }

    /// The leader as this agent sees it; not itself once it has stepped down (see [`leads`]).
    pub fn current_leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        current_leader(&m, self.me())
    }

    /// Whether this agent replicates the log (voter or learner).
    pub fn is_member(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.nodes().any(|(id, _)| *id == self.me())
    }

    /// The leader's id and address, as far as this agent knows.
    pub fn leader(&self) -> Option<(Option<NodeId>, String)> {
        let m = self.raft.metrics().borrow().clone();
        if let Some(l) = current_leader(&m, self.me())
            && let Some(n) = m
                .membership_config
                .nodes()
                .find(|(id, _)| **id == l)
                .map(|(_, n)| n.clone())
        {
            return Some((Some(l), n.addr));
        }
        self.known_leader
            .lock()
            .expect("leader lock")
            .clone()
            .map(|a| (None, a))
    }

    /// Commits a command through the batching proposer.
    pub async fn propose(&self, cmd: Command) -> Result<mozen_store::Response, ProposeError> {
        self.proposer.propose(cmd).await
    }

    /// Voter and learner ids of the current membership.
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = m.membership_config.membership().learner_ids().collect();
        (voters, learners)
    }

    /// The role the membership gives `id`.
    pub fn role_of(&self, id: NodeId) -> NodeRole {
        let (v, l) = self.membership();
        if v.contains(&id) {
            NodeRole::Voter
        } else if l.contains(&id) {
            NodeRole::Learner
        } else {
            NodeRole::Worker
        }
    }

    /// This agent's node record.
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.cfg.id,
            name: self.cfg.name.clone(),
            addr: self.cfg.advertise.clone(),
            cpus: self.cfg.cpus,
            memory_bytes: self.cfg.memory_bytes,
            slots: self.cfg.slots,
            state: NodeState::Active,
            role: NodeRole::Worker,
            labels: BTreeMap::new(),
        }
    }
}

/// A leader that has heard from no quorum of voters for this long stops acting as leader.
pub const STEP_DOWN_AFTER_MS: u64 = 2 * ELECTION_TIMEOUT_MAX_MS;

/// The longest election timeout, which is also the leader's lease in openraft 0.9: a voter
/// grants no vote within it of hearing from its leader.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 500;

/// Whether `me` leads according to `m`: Raft says so and a quorum of voters acknowledged it
/// within [`STEP_DOWN_AFTER_MS`].
///
/// openraft 0.9 keeps a leader that lost its quorum in the Leader state until it hears a
/// higher term. Such a leader can commit nothing, so the agent stops acting on it (like
/// Raft's check-quorum): it stops scheduling, refuses writes with `MZ-NOT-LEADER`, and its
/// status names no leader. Its entries stay uncommitted; when the partition heals, the new
/// leader's term turns it into a follower and its log is made consistent by Raft.
pub fn leads(m: &openraft::RaftMetrics<NodeId, RaftNode>, me: NodeId) -> bool {
    m.current_leader == Some(me)
        && m.state.is_leader()
        && m.millis_since_quorum_ack
            .is_none_or(|ms| ms <= STEP_DOWN_AFTER_MS)
}

/// Whether the state machine holds everything committed before the current term: it has
/// applied an entry of that term (a new leader's first entry is the blank one its election
/// appends). Until then a new leader's state can lack facts an earlier leader committed.
pub fn state_current(m: &openraft::RaftMetrics<NodeId, RaftNode>) -> bool {
    m.last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term)
}

/// Waits up to `limit` for [`state_current`]; whether it holds.
pub async fn await_state_current(raft: &Raft, limit: Duration) -> bool {
    let mut m = raft.metrics();
    let until = tokio::time::Instant::now() + limit;
    loop {
        if state_current(&m.borrow_and_update()) {
            return true;
        }
        match tokio::time::timeout_at(until, m.changed()).await {
            Ok(Ok(())) => {}
            _ => return state_current(&m.borrow()),
        }
    }
}

/// The leader per `m`, leaving out `me` when it has stepped down.
pub fn current_leader(m: &openraft::RaftMetrics<NodeId, RaftNode>, me: NodeId) -> Option<NodeId> {
    m.current_leader.filter(|l| *l != me || leads(m, me))
}

/// Raft timing. A follower waits out the leader's lease (the longest election timeout) and then
/// an election timeout before it stands, so a dead leader is replaced after 0.75-1 s, or about
/// 0.55 s with [`crate::failover::watch`]. A healthy leader heartbeats every 100 ms, so only a
/// leader silent for 750 ms (a stalled process, a lost link) is voted out.
pub fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "mozen".into(),
        heartbeat_interval: 100,
        election_timeout_min: 250,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 5_000,
        purge_batch_size: 256,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, RaftMetrics};

    fn applied_in(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn the_state_is_current_once_an_entry_of_the_term_is_applied() {
        let mut m: RaftMetrics<NodeId, RaftNode> = RaftMetrics::new_initial(1);
        m.current_term = 4;
        assert!(!state_current(&m), "nothing applied");
        m.last_applied = applied_in(3, 120);
        assert!(
            !state_current(&m),
            "a new leader that applied only earlier terms' entries may lack committed ones"
        );
        m.last_applied = applied_in(4, 121);
        assert!(state_current(&m));
    }
}
