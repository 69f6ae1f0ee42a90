//! `mozen up` and `mozen down`: bring the cluster a hosts file describes up, and take it down
//! without losing work.
//!
//! Up starts every listed host's agent that does not answer yet, waits until each is in the
//! node table and active with the file's voters in the Raft group (undraining hosts a
//! previous `down` drained, promoting missing voters), then prints the cluster.
//!
//! Down pauses the autoscaler, then drains and stops workers first, then the voters: they are
//! drained (no request runs anywhere any more; queued ones stay in the log) and stopped
//! followers first, the leader last, so the cluster keeps its quorum while anything can
//! still change. Requests submitted meanwhile are queued and run after the next `up`.

use mozen_client::{Client, ClientError, ClientTransport};
use mozen_fleet::hosts::{HostsError, HostsFile};
use mozen_fleet::launch::{self, LaunchError, Target};
use mozen_model::{Code, NodeId, NodeOp};
use mozen_proto as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Why `mozen up` or `mozen down` failed.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{code}: {0}", code = Code::UpTimeout)]
    Timeout(String),
}

impl ElasticError {
    /// Bad input (exit 2) rather than a failure while running (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, ElasticError::Hosts(_) | ElasticError::Usage(_))
    }
}

fn client(
    file: &HostsFile,
    transport: &ClientTransport,
    patience: Duration,
) -> Result<Client, ElasticError> {
    let addrs: Vec<String> = file.hosts.iter().map(|h| h.address.clone()).collect();
    Ok(Client::with_transport(
        addrs,
        pb::DEFAULT_MAX_MESSAGE_BYTES,
        patience,
        transport.clone(),
    )?)
}

/// Whether an agent answers at `addr` (within a second).
pub async fn answers(transport: &ClientTransport, addr: &str) -> bool {
    let Ok(ch) = transport.channel(addr) else {
        return false;
    };
    let mut c = pb::mozen_client::MozenClient::new(ch);
    let mut req = tonic::Request::new(pb::ClusterInfoRequest::default());
    req.set_timeout(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(2), c.cluster_info(req))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Polls until no agent answers at `addr`; false after `limit`.
async fn wait_quiet(transport: &ClientTransport, addr: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !answers(transport, addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn nodes(c: &Client) -> Result<Vec<pb::Node>, ClientError> {
    Ok(
        c.rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
            .await?
            .nodes,
    )
}

async fn status(c: &Client) -> Result<pb::RaftStatus, ClientError> {
    c.rpc(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
}

/// Reads the hosts file and the `--timeout` value: nothing runs when either is bad.
fn load(path: &Path, timeout: &str) -> Result<(HostsFile, Duration), ElasticError> {
    let timeout = humantime::parse_duration(timeout).map_err(|e| {
        ElasticError::Usage(format!("--timeout '{timeout}': {e} (examples: 30s, 2m)"))
    })?;
    Ok((HostsFile::load(path)?, timeout))
}

/// `mozen up HOSTS`: starts what should run, waits until healthy, prints the cluster.
pub async fn up(
    path: &Path,
    timeout: &str,
    transport: ClientTransport,
) -> Result<(), ElasticError> {
    let (file, timeout) = load(path, timeout)?;
    let started = Instant::now();
    let mut starts = Vec::new();
    for h in &file.hosts {
        if answers(&transport, &h.address).await {
            println!(
                "{:<12} node {:<3} {:<22} already running",
                h.name, h.id, h.address
            );
        } else {
            starts.push(h);
        }
    }
    let results = futures::future::join_all(starts.iter().map(|h| {
        let file = &file;
        async move { launch::start(file, &Target::host(h)).await }
    }))
    .await;
    let mut failed = Vec::new();
    for (h, r) in starts.iter().zip(results) {
        match r {
            Ok(_) => println!(
                "{:<12} node {:<3} {:<22} started ({})",
                h.name,
                h.id,
                h.address,
                h.launcher.name()
            ),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !failed.is_empty() {
        return Err(LaunchError(failed.join("; ")).into());
    }
    let c = client(&file, &transport, Duration::from_secs(5))?;
    let deadline = Instant::now() + timeout;
    let mut asked: BTreeSet<(NodeId, &str)> = BTreeSet::new();
    let mut missing;
    loop {
        missing = Vec::new();
        match (nodes(&c).await, status(&c).await) {
            (Ok(ns), Ok(st)) => {
                let by_id: BTreeMap<NodeId, &pb::Node> = ns.iter().map(|n| (n.id, n)).collect();
                let voters: BTreeSet<NodeId> = st.voters.iter().map(|m| m.id).collect();
                for h in &file.hosts {
                    match by_id.get(&h.id).map(|n| n.state.as_str()) {
                        Some("active") => {}
                        Some(s @ ("draining" | "drained")) => {
                            // Left so by a previous `mozen down`: the file says it should run.
                            if asked.insert((h.id, "undrain")) {
                                c.node_op(h.id, NodeOp::Undrain).await?;
                            }
                            missing.push(format!("{} (node {}) is {s}", h.name, h.id));
                        }
                        Some(s) => missing.push(format!("{} (node {}) is {s}", h.name, h.id)),
                        None => missing.push(format!("{} (node {}) has not joined", h.name, h.id)),
                    }
                }
                if missing.is_empty() && voters.len() < file.voters {
                    for h in file
                        .hosts
                        .iter()
                        .filter(|h| h.voter && !voters.contains(&h.id))
                    {
                        if asked.insert((h.id, "promote")) {
                            println!("{:<12} node {:<3} promoting to voter", h.name, h.id);
                            c.node_op(h.id, NodeOp::Promote).await?;
                        }
                        missing.push(format!("{} (node {}) is not a voter yet", h.name, h.id));
                    }
                }
                if missing.is_empty() {
                    break;
                }
            }
            (Err(e), _) | (_, Err(e)) => missing.push(format!("no leader yet ({e})")),
        }
        if Instant::now() > deadline {
            return Err(ElasticError::Timeout(format!(
                "the cluster was not healthy after {timeout:?}: {}; see the agents' logs in {}/NAME.log",
                missing.join("; "),
                file.data_dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Undo the pause of a previous `mozen down` (agents may follow another copy of the file).
    c.node_op(0, NodeOp::AutoscaleResume).await?;
    let st = status(&c).await?;
    let ns = nodes(&c).await?;
    println!(
        "cluster up in {:.1}s: leader {} ({}), term {}, {} voter(s), {} node(s)",
        started.elapsed().as_secs_f64(),
        st.leader_id.map_or("none".into(), |l| l.to_string()),
        st.leader_addr,
        st.term,
        st.voters.len(),
        ns.len()
    );
    print_nodes(&ns, &st);
    Ok(())
}

fn print_nodes(ns: &[pb::Node], st: &pb::RaftStatus) {
    let voters: BTreeSet<NodeId> = st.voters.iter().map(|m| m.id).collect();
    println!(
        "{:>4}  {:<12} {:<22} {:<8} {:<9} {:>7}",
        "ID", "NAME", "ADDRESS", "ROLE", "STATE", "SLOTS"
    );
    for n in ns {
        let role = if n.is_leader {
            "leader"
        } else if voters.contains(&n.id) {
            "voter"
        } else {
            "worker"
        };
        println!(
            "{:>4}  {:<12} {:<22} {:<8} {:<9} {:>7}",
            n.id,
            n.name,
            n.addr,
            role,
            n.state,
            format!("{}/{}", n.busy_slots, n.slots)
        );
    }
}

/// An agent `down` stops: a listed host or a pool's agent, as the node table shows it.
struct Member<'a> {
    target: Target<'a>,
    pool: bool,
    state: String,
}

/// `mozen down HOSTS`: drains and stops every agent of the file, workers first, voters last.
pub async fn down(
    path: &Path,
    timeout: &str,
    transport: ClientTransport,
) -> Result<(), ElasticError> {
    let (file, timeout) = load(path, timeout)?;
    let started = Instant::now();
    let c = client(&file, &transport, Duration::from_secs(5))?;
    let (ns, st) = match (nodes(&c).await, status(&c).await) {
        (Ok(n), Ok(s)) => (n, s),
        (Err(e), _) | (_, Err(e)) => {
            let running: Vec<&str> = {
                let mut v = Vec::new();
                for h in &file.hosts {
                    if answers(&transport, &h.address).await {
                        v.push(h.name.as_str());
                    }
                }
                v
            };
            if running.is_empty() {
                println!("no agent of {} answers: nothing to stop", path.display());
                return Ok(());
            }
            return Err(e.into());
        }
    };
    // No agents started behind our back while we stop them.
    c.node_op(0, NodeOp::AutoscalePause).await?;
    let voters: BTreeSet<NodeId> = st.voters.iter().map(|m| m.id).collect();
    let mut workers = Vec::new();
    let mut voter_members = Vec::new();
    for n in &ns {
        let target = if let Some(h) = file.host(n.id) {
            Target::host(h)
        } else if let Some(p) = file.pool_of(&n.name) {
            Target::pool(p, n.id, &n.addr)
        } else {
            println!(
                "{:<12} node {:<3} {:<22} not in {}: left running",
                n.name,
                n.id,
                n.addr,
                path.display()
            );
            continue;
        };
        let pool = matches!(target.kind, launch::Kind::Pool(_));
        let m = Member {
            target,
            pool,
            state: n.state.clone(),
        };
        if voters.contains(&n.id) {
            voter_members.push(m);
        } else {
            workers.push(m);
        }
    }
    // Workers: drain all, then stop each.
    drain_all(&c, &workers, timeout).await?;
    for m in &workers {
        stop_one(&file, &c, &transport, m, timeout).await?;
    }
    // Voters: drain all (nothing runs any more), then stop followers first, the leader last.
    drain_all(&c, &voter_members, timeout).await?;
    let leader = status(&c).await.ok().and_then(|s| s.leader_id);
    voter_members.sort_by_key(|m| Some(m.target.id) == leader);
    for m in &voter_members {
        stop_one(&file, &c, &transport, m, timeout).await?;
    }
    println!(
        "cluster down in {:.1}s: {} agent(s) stopped",
        started.elapsed().as_secs_f64(),
        workers.len() + voter_members.len()
    );
    Ok(())
}

async fn drain_all(
    c: &Client,
    members: &[Member<'_>],
    timeout: Duration,
) -> Result<(), ElasticError> {
    let live: Vec<&Member<'_>> = members.iter().filter(|m| m.state != "down").collect();
    for m in &live {
        c.node_op(m.target.id, NodeOp::Drain).await?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let ns = nodes(c).await?;
        let busy: Vec<String> = live
            .iter()
            .filter_map(|m| {
                let n = ns.iter().find(|n| n.id == m.target.id)?;
                (!matches!(n.state.as_str(), "drained" | "down"))
                    .then(|| format!("{} ({} running)", m.target.name, n.running))
            })
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            // The agents' own shutdown hands what still runs back to the queue.
            println!(
                "still draining after {timeout:?}: {}; stopping anyway",
                busy.join(", ")
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_one(
    file: &HostsFile,
    c: &Client,
    transport: &ClientTransport,
    m: &Member<'_>,
    timeout: Duration,
) -> Result<(), ElasticError> {
    let t = &m.target;
    let role = if m.pool { "pool" } else { "host" };
    if m.state != "down" || answers(transport, &t.address).await {
        launch::stop(file, t).await?;
        if !wait_quiet(transport, &t.address, timeout).await {
            return Err(ElasticError::Timeout(format!(
                "{} (node {}) at {} still answers {timeout:?} after it was asked to stop",
                t.name, t.id, t.address
            )));
        }
    }
    if m.pool {
        // A pool's agent is gone for good: take it out of the node table.
        c.node_op(t.id, NodeOp::Remove).await?;
    }
    println!(
        "{:<12} node {:<3} {:<22} stopped ({role})",
        t.name, t.id, t.address
    );
    Ok(())
}
