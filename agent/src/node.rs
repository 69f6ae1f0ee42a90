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

use crate::agent::Agent;
use crate::client::Client;
use crate::config::AgentConfig;
use crate::context::{Context, raft_config};
pub use crate::error::{AgentError, EXIT_DAMAGED, EXIT_DIED, EXIT_ERROR};
use crate::faults::Faults;
use crate::functions::Functions;
use crate::hub::Hub;
use crate::network::Network;
use crate::proposer::Proposer;
use crate::supervise::{Death, Lives, Supervisor};
use mozen_model::NodeId;
use mozen_proto as pb;
use mozen_store::{Raft, RaftNode, StoreOptions};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

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
            append_entries_timeout: cfg.append_entries_timeout_ms(),
            ..raft_config()
        }
        .validate()
        .map_err(|e| AgentError::Raft(e.to_string()))?,
    );
    let faults = cfg.fault_file.as_ref().map(|_| Arc::new(Faults::default()));
    let transport = cfg.security.client().from_node(cfg.id);
    let network = Network {
        max_message: cfg.raft_message(),
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
    let client = Client::with_transport(
        addrs,
        cfg.raft_message(),
        Duration::from_secs(3600),
        transport,
    )
    .map_err(|e| AgentError::Server(e.to_string()))?;
    let ctx = Arc::new(Context {
        cfg,
        raft,
        log,
        sm,
        proposer,
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
        conn_seq: AtomicU64::new(1),
    });
    let agent = Arc::new(Agent {
        ctx,
        hub,
        functions,
        integrity: Default::default(),
        refusals: Default::default(),
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
        crate::leading::watch(agent.clone()),
    );
    sup.spawn(
        &agent.tasks,
        "failover watch",
        Lives::AsLongAsTheAgent,
        crate::failover::watch(agent.ctx.clone()),
    );
    sup.spawn(
        &agent.tasks,
        "corruption check",
        Lives::MayEnd,
        crate::checks::watch(agent.clone()),
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
            .worker_rpc(|mut c| {
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
