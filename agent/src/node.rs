//! The agent: one Raft member (or a worker), its gRPC server, and its background tasks.
//!
//! [`run`] opens the store, starts Raft and the gRPC server on an already-bound listener,
//! forms or joins the cluster, and runs until `shutdown` fires. Every long-lived task is
//! spawned under one `CancellationToken` tree and a `TaskTracker`.
//!
//! Cluster formation (empty data dir): ask every peer for `ClusterInfo`. If any already belongs
//! to a cluster, join it. If none does and every peer answered, the lowest id initializes the
//! cluster with the lowest `--voters` ids as voters; the others join as workers. A restarted
//! member finds its membership in its own log and simply rejoins.

use crate::client::Client;
use crate::config::AgentConfig;
use crate::faults::Faults;
use crate::functions::Functions;
use crate::hub::Hub;
use crate::network::Network;
use crate::proposer::{ProposeError, Proposer};
use crate::supervise::{Death, Lives, Supervisor};
use mozen_model::{Code, NodeId, NodeInfo, NodeRole, NodeState};
use mozen_proto as pb;
use mozen_store::{Command, LogStore, Raft, RaftNode, StateMachineStore, StoreOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Milliseconds since the epoch, stamped into commands by the proposer.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] mozen_store::StoreError),
    #[error(
        "{}: data dir {dir} belongs to node {stored}, but --id is {given}; use --id {stored} or another --data-dir",
        Code::Identity
    )]
    Identity {
        dir: String,
        stored: NodeId,
        given: NodeId,
    },
    #[error("{code}: {0}", code = Code::Raft)]
    Raft(String),
    #[error("{code}: {0}", code = Code::Server)]
    Server(String),
    #[error("{code}: {0}", code = Code::Repair)]
    Repair(String),
    #[error(
        "{}: data dir {dir} is empty, but node {id} is a registered voter of the cluster (peer {peer} says so): its log and vote were lost, and it must not vote with an empty log; repair it with `mozen-agent repair` and the same flags (it leaves the voters, rejoins from the peers and is promoted back once caught up)",
        Code::Damaged
    )]
    LostLog {
        dir: String,
        id: NodeId,
        peer: String,
    },
    /// The data dir holds the marker a quarantined agent writes (see [`crate::integrity`]).
    #[error(
        "{}: data dir {dir} is quarantined ({reason}); this agent does not start on it: repair it with `mozen-agent repair`, then start the agent again",
        Code::Quarantined
    )]
    Quarantined { dir: String, reason: String },
    /// The Raft core or an essential task died while the agent ran (see [`crate::supervise`]).
    #[error("{death} [node {id}, data dir {dir}]")]
    Died {
        death: Death,
        id: NodeId,
        dir: String,
    },
}

impl AgentError {
    /// The process exit code for this error (the table is in [`crate::builder`]): 3 when the
    /// data dir is damaged (the member must be repaired, see [`crate::repair`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            // A read that failed its checksum stopped the core: the data dir is damaged.
            AgentError::Died {
                death: Death::RaftCore { cause },
                ..
            } if cause.contains(Code::Damaged.as_str()) => crate::builder::EXIT_DAMAGED,
            AgentError::Died {
                death: Death::Damaged { .. },
                ..
            } => crate::builder::EXIT_DAMAGED,
            AgentError::Died { .. } => crate::builder::EXIT_DIED,
            AgentError::Store(e) if e.is_damage() => crate::builder::EXIT_DAMAGED,
            AgentError::LostLog { .. } | AgentError::Quarantined { .. } => {
                crate::builder::EXIT_DAMAGED
            }
            _ => crate::builder::EXIT_ERROR,
        }
    }
}

/// Everything the agent's tasks and services share.
pub struct Agent {
    pub cfg: AgentConfig,
    pub raft: Raft,
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub hub: Arc<Hub>,
    pub proposer: Proposer,
    pub functions: Functions,
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
    /// What the corruption checks found, and whether this agent quarantined itself.
    pub integrity: crate::integrity::Integrity,
    conn_seq: AtomicU64,
}

impl Agent {
    pub fn me(&self) -> NodeId {
        self.cfg.id
    }

    /// Whether a stop of the Raft member is expected: the agent is shutting down, or it
    /// quarantined itself (which marks itself before it stops Raft). Any other stop is
    /// Raft failing.
    pub fn raft_stop_expected(&self) -> bool {
        self.shutdown.is_cancelled() || self.integrity.is_quarantined()
    }

    pub fn next_conn(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this agent is the Raft leader right now (and still hears from a quorum).
    pub fn is_leader(&self) -> bool {
        leads(&self.raft.metrics().borrow(), self.me())
    }

    /// The leadership this agent holds, while it leads; otherwise who does, as far as it
    /// knows. The one leader check of the daemon: what only a leader may do takes the
    /// [`Leadership`](crate::leadership::Leadership) this returns.
    pub fn leadership(
        &self,
    ) -> Result<Arc<crate::leadership::Leadership>, crate::leadership::NotLeader> {
        match self.hub.leadership() {
            Some(l) if self.is_leader() => Ok(l),
            _ => {
                let (leader, addr) = match self.leader() {
                    Some((id, addr)) => (id, addr),
                    None => (None, String::new()),
                };
                Err(crate::leadership::NotLeader {
                    me: self.me(),
                    leader,
                    addr,
                })
            }
        }
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

/// Runs an agent until `shutdown` fires. `listener` is already bound (tests bind port 0).
pub async fn run(
    mut cfg: AgentConfig,
    functions: Functions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    if cfg.advertise.ends_with(":0")
        && let Ok(bound) = listener.local_addr()
    {
        cfg.advertise = bound.to_string();
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        AgentError::Store(mozen_store::StoreError::Io {
            path: cfg.data_dir.display().to_string(),
            source: e,
        })
    })?;
    if let Some(reason) = crate::integrity::read_marker(&cfg.data_dir) {
        return Err(AgentError::Quarantined {
            dir: cfg.data_dir.display().to_string(),
            reason,
        });
    }
    let (log, sm) = mozen_store::open(&cfg.data_dir, &StoreOptions::default())?;
    if log.is_fresh()? {
        refuse_lost_voter(&cfg).await?;
    }
    // Before Raft starts re-applying the log, so that its checkpoints are taken too.
    sm.checkpoints().set_every(cfg.checkpoint_every);
    match log.read_identity()? {
        Some(stored) if stored != cfg.id => {
            return Err(AgentError::Identity {
                dir: cfg.data_dir.display().to_string(),
                stored,
                given: cfg.id,
            });
        }
        Some(_) => info!(id = cfg.id, "restarting with stored identity"),
        None => log.write_identity(cfg.id)?,
    }
    let config = Arc::new(
        openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            ..raft_config()
        }
        .validate()
        .map_err(|e| AgentError::Raft(e.to_string()))?,
    );
    let faults = cfg.fault_file.as_ref().map(|_| Arc::new(Faults::default()));
    let transport = cfg.security.client().from_node(cfg.id);
    let network = Network {
        max_message: cfg.max_message,
        transport: transport.clone(),
        faults: faults.clone(),
    };
    let raft = Raft::new(cfg.id, config, network, log.clone(), sm.clone())
        .await
        .map_err(|e| AgentError::Died {
            death: Death::RaftCore {
                cause: format!("it could not start from the stored log and state: {e}"),
            },
            id: cfg.id,
            dir: cfg.data_dir.display().to_string(),
        })?;
    let supervisor = Supervisor::new(&shutdown);
    tokio::spawn(crate::supervise::watch_raft_core(
        raft.clone(),
        supervisor.clone(),
    ));
    let hub = Arc::new(Hub::new(sm.shared()));
    sm.set_observer(hub.clone());
    let (proposer, proposing) = Proposer::start(raft.clone(), cfg.id);
    supervisor.watch("proposer", Lives::AsLongAsTheAgent, proposing);
    let mut addrs = vec![cfg.advertise.clone()];
    addrs.extend(cfg.peers.iter().map(|p| p.addr.clone()));
    let client =
        Client::with_transport(addrs, cfg.max_message, Duration::from_secs(3600), transport)
            .map_err(|e| AgentError::Server(e.to_string()))?;
    let agent = Arc::new(Agent {
        cfg,
        raft,
        log,
        sm,
        hub,
        proposer,
        functions,
        client,
        shutdown: shutdown.clone(),
        stopping: CancellationToken::new(),
        removed: CancellationToken::new(),
        tasks: TaskTracker::new(),
        known_leader: Mutex::new(None),
        leader_contact: Arc::default(),
        started: Instant::now(),
        faults,
        supervisor,
        integrity: Default::default(),
        conn_seq: AtomicU64::new(1),
    });
    let sup = agent.supervisor.clone();
    if let (Some(f), Some(path)) = (&agent.faults, &agent.cfg.fault_file) {
        warn!(path = %path.display(), "fault control enabled (testing only)");
        agent.tasks.spawn(crate::faults::watch_file(
            f.clone(),
            path.clone(),
            agent.shutdown.clone(),
        ));
        agent.tasks.spawn(crate::faults::panic_raft_core_on_request(
            f.clone(),
            agent.raft.clone(),
            agent.shutdown.clone(),
        ));
    }

    let server_stop = CancellationToken::new();
    let server = crate::service::serve(agent.clone(), listener, server_stop.clone());
    // The watcher ends when the server does.
    let server = sup.watch("gRPC server", Lives::AsLongAsTheAgent, tokio::spawn(server));

    sup.spawn(
        &agent.tasks,
        "leadership watch",
        Lives::MayEnd,
        crate::leadership::watch(agent.clone()),
    );
    sup.spawn(
        &agent.tasks,
        "failover watch",
        Lives::AsLongAsTheAgent,
        crate::failover::watch(agent.clone()),
    );
    sup.spawn(
        &agent.tasks,
        "corruption check",
        Lives::MayEnd,
        crate::integrity::watch(agent.clone()),
    );
    {
        let a = agent.clone();
        sup.spawn(&agent.tasks, "worker loop", Lives::MayEnd, async move {
            if form_cluster(&a).await {
                if a.cfg.rejoin_as_voter {
                    a.tasks
                        .spawn(crate::repair::promote_when_caught_up(a.clone()));
                }
                crate::worker::run(a).await;
            }
        });
    }
    if let Some(addr) = agent.cfg.metrics {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                agent.tasks.spawn(crate::metrics::serve(agent.clone(), l));
            }
            Err(e) => warn!(%addr, "cannot serve metrics: {e}"),
        }
    }

    let death = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        d = sup.died() => Some(d),
    };
    sup.stopping();
    if let Some(death) = death {
        return Err(stop_after_death(&agent, death, server_stop, server).await);
    }
    info!(
        "stopping: no new work; running requests get {:?} to finish",
        agent.cfg.shutdown_deadline
    );
    agent.stopping.cancel();
    agent.tasks.close();
    let _ = tokio::time::timeout(
        agent.cfg.shutdown_deadline + Duration::from_secs(2),
        agent.tasks.wait(),
    )
    .await;
    if let Err(e) = agent.raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    agent.log.flush()?;
    info!("stopped cleanly");
    Ok(())
}

/// Stops an agent whose Raft core or essential task died: the gRPC server first, so that no
/// client reads a state that no longer moves, then everything else, each step bounded.
async fn stop_after_death(
    agent: &Arc<Agent>,
    death: Death,
    server_stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
) -> AgentError {
    server_stop.cancel();
    agent.stopping.cancel();
    agent.shutdown.cancel();
    agent.tasks.close();
    let bound = Duration::from_secs(2);
    let _ = tokio::time::timeout(bound, agent.tasks.wait()).await;
    if let Ok(Err(e)) = tokio::time::timeout(bound, agent.raft.shutdown()).await {
        warn!("raft shutdown: {e}");
    }
    let _ = tokio::time::timeout(bound, server).await;
    if let Err(e) = agent.log.flush() {
        warn!("flushing the data dir: {e}");
    }
    AgentError::Died {
        death,
        id: agent.me(),
        dir: agent.cfg.data_dir.display().to_string(),
    }
}

/// Forms or joins the cluster, then registers this node in the node table. Returns false when
/// the agent stopped first.
async fn form_cluster(agent: &Arc<Agent>) -> bool {
    let me = agent.me();
    let mut delay = Duration::from_millis(100);
    let mut last_log = Instant::now() - Duration::from_secs(10);
    loop {
        if agent.stopping.is_cancelled() {
            return false;
        }
        if agent.raft.is_initialized().await.unwrap_or(false) {
            break;
        }
        let mut answered = 0usize;
        let mut joined_via: Option<String> = None;
        let mut missing = Vec::new();
        for p in &agent.cfg.peers {
            match cluster_info(agent, &p.addr).await {
                Ok(info) => {
                    answered += 1;
                    if info.initialized {
                        joined_via = Some(p.addr.clone());
                    }
                }
                Err(e) => missing.push(format!("{}@{} ({e})", p.id, p.addr)),
            }
        }
        if joined_via.is_some() {
            info!("a peer already belongs to a cluster; joining it");
            break;
        }
        let lowest = agent.cfg.peers.iter().all(|p| p.id > me);
        if answered == agent.cfg.peers.len() && lowest {
            let mut ids: Vec<(NodeId, String)> = agent
                .cfg
                .peers
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect();
            ids.push((me, agent.cfg.advertise.clone()));
            ids.sort();
            let voters: BTreeMap<NodeId, RaftNode> = ids
                .into_iter()
                .take(agent.cfg.voters)
                .map(|(id, addr)| (id, RaftNode { addr }))
                .collect();
            info!(voters = ?voters.keys().collect::<Vec<_>>(), "initializing a new cluster");
            match agent.raft.initialize(voters).await {
                Ok(()) => break,
                Err(e) => warn!("initialize: {e}"),
            }
        } else if last_log.elapsed() > Duration::from_secs(2) {
            last_log = Instant::now();
            if missing.is_empty() {
                info!("waiting for the lowest-id peer to initialize the cluster");
            } else {
                info!(waiting_for = %missing.join(", "), "waiting for peers before forming the cluster");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = agent.stopping.cancelled() => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    // Register in the node table (through whoever leads).
    let info = agent.node_info();
    let req = pb::JoinRequest {
        id: info.id,
        name: info.name.clone(),
        addr: info.addr.clone(),
        cpus: info.cpus,
        memory_bytes: info.memory_bytes,
        slots: info.slots,
        labels: Default::default(),
    };
    loop {
        let r = agent
            .client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.join(r).await }
            })
            .await;
        match r {
            Ok(reply) => {
                info!(role = %reply.role, leader = reply.leader_id, "registered in the node table");
                *agent.known_leader.lock().expect("leader lock") = agent.client.current_addr();
                return true;
            }
            Err(e) => warn!("join: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = agent.stopping.cancelled() => return false,
        }
    }
}

async fn cluster_info(agent: &Agent, addr: &str) -> Result<pb::ClusterInfoReply, String> {
    cluster_info_at(&agent.cfg, addr).await
}

async fn cluster_info_at(cfg: &AgentConfig, addr: &str) -> Result<pb::ClusterInfoReply, String> {
    let ch = cfg
        .security
        .client()
        .from_node(cfg.id)
        .channel(addr)
        .map_err(|e| e.to_string())?;
    let mut c = pb::mozen_client::MozenClient::new(ch);
    let mut req = tonic::Request::new(pb::ClusterInfoRequest {
        asking_node: cfg.id,
    });
    req.set_timeout(Duration::from_secs(1));
    c.cluster_info(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

/// Refuses to start a member whose data dir is empty while the cluster knows it as a
/// registered voter: its log and vote were lost (a wiped or replaced disk), and a voter with
/// an empty log could help elect a leader without acknowledged entries. Peers that do not
/// answer are skipped: a new cluster's members all start empty.
async fn refuse_lost_voter(cfg: &AgentConfig) -> Result<(), AgentError> {
    // Bounded: a peer starting at the same time has bound its port but serves nothing yet
    // (it runs this same check), so a request to it would wait for its server.
    let asks = cfg
        .peers
        .iter()
        .filter(|p| p.id != cfg.id)
        .map(|p| async move {
            let info = tokio::time::timeout(Duration::from_secs(1), cluster_info_at(cfg, &p.addr))
                .await
                .unwrap_or_else(|_| Err("no answer within 1 s".into()));
            (p, info)
        });
    for (peer, info) in futures::future::join_all(asks).await {
        if let Ok(info) = info
            && info.initialized
            && info.asking_node_registered
            && info.voters.iter().any(|m| m.id == cfg.id)
        {
            return Err(AgentError::LostLog {
                dir: cfg.data_dir.display().to_string(),
                id: cfg.id,
                peer: format!("{}@{}", peer.id, peer.addr),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, RaftMetrics};

    fn applied_in(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn damage_found_at_start_or_while_running_exits_3_and_other_deaths_4() {
        let died = |death| AgentError::Died {
            death,
            id: 1,
            dir: "d".into(),
        };
        let corrupt = mozen_store::StoreError::Corrupt {
            tree: "raft_log",
            key: "index 3".into(),
            reason: "checksum mismatch".into(),
        };
        let damaged_read = died(Death::Damaged {
            detail: corrupt.to_string(),
        });
        let core_on_damage = died(Death::RaftCore {
            cause: format!("storage error: {corrupt}"),
        });
        let core_panic = died(Death::RaftCore {
            cause: "it panicked".into(),
        });
        let task = died(Death::Task {
            name: "gRPC server",
            how: "ended".into(),
        });
        assert_eq!(AgentError::Store(corrupt).exit_code(), 3);
        assert_eq!(damaged_read.exit_code(), 3);
        assert_eq!(core_on_damage.exit_code(), 3);
        assert_eq!(core_panic.exit_code(), 4);
        assert_eq!(task.exit_code(), 4);
        assert_eq!(AgentError::Repair("x".into()).exit_code(), 1);
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
