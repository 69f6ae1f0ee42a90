//! `mozen-agent repair`: brings back a member whose data dir is damaged or quarantined.
//!
//! The member's own copy of the log cannot be trusted, and a member that came back with an
//! empty log while still a voter could help elect a leader that lacks acknowledged entries.
//! So repair, run with the member's usual flags:
//!
//! 1. confirms the data dir is damaged or quarantined (a healthy one is refused, untouched);
//! 2. asks the cluster's leader to take this node out of the Raft membership (it stays in the
//!    node table as a worker): this needs a leader, that is a quorum of healthy voters;
//! 3. moves the dir aside to `<dir>.damaged-<unix seconds>`, kept for inspection;
//! 4. starts as an empty member: it joins, and if it was a voter it asks to be promoted, which
//!    makes it a learner fed by the leader's snapshot and log and a voter only once it has
//!    caught up (see `node_op` promote).
//!
//! Nothing acknowledged is lost while a quorum of healthy voters holds it: the repaired member
//! gets everything back from them.

use crate::client::Client;
use crate::config::AgentConfig;
use crate::error::AgentError;
use mozen_model::NodeId;
use mozen_proto as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// The file a member writes into its data dir when it finds its state differs from the
/// other voters' (see docs/operations.md): the dir must be repaired before it serves again.
pub const QUARANTINE_FILE: &str = "quarantine";

/// What a repair did before the member starts afresh.
#[derive(Debug)]
pub struct Repaired {
    /// Where the damaged dir was moved.
    pub moved_to: PathBuf,
    /// Whether the node was a voter: it asks to be promoted again once it has joined.
    pub was_voter: bool,
}

/// Why the data dir needs repair, or `None` when it opens and checks out.
pub fn diagnose(dir: &Path) -> Result<Option<String>, AgentError> {
    if !dir.exists() {
        return Ok(None);
    }
    let quarantine = dir.join(QUARANTINE_FILE);
    if let Ok(why) = std::fs::read_to_string(&quarantine) {
        return Ok(Some(format!(
            "quarantined ({}): {}",
            quarantine.display(),
            why.trim()
        )));
    }
    match mozen_store::open(dir, &mozen_store::StoreOptions::default()) {
        Ok(_) => Ok(None),
        Err(e) if e.is_damage() => Ok(Some(e.to_string())),
        Err(e) => Err(AgentError::Store(e)),
    }
}

/// Steps 1-3 of the module docs. On any failure before the move, the dir is left as it was.
pub async fn prepare(cfg: &AgentConfig) -> Result<Repaired, AgentError> {
    let dir = &cfg.data_dir;
    let Some(why) = diagnose(dir)? else {
        return Err(AgentError::Repair(format!(
            "data dir {} is not damaged: it opens and matches its watermark, nothing to repair; start the agent without `repair`",
            dir.display()
        )));
    };
    warn!(dir = %dir.display(), "repairing: {why}");
    let addrs: Vec<String> = cfg.peers.iter().map(|p| p.addr.clone()).collect();
    let client = Client::with_transport(
        addrs,
        cfg.max_message,
        Duration::from_secs(30),
        cfg.security.client().from_node(cfg.id),
    )
    .map_err(|e| AgentError::Repair(format!("--peers: {e}")))?;
    let info = client
        .rpc(|mut c| async move { c.cluster_info(pb::ClusterInfoRequest::default()).await })
        .await
        .map_err(|e| no_cluster(cfg, e))?;
    let was_voter = info.voters.iter().any(|m| m.id == cfg.id);
    leave_membership(&client, cfg.id)
        .await
        .map_err(|e| no_cluster(cfg, e))?;
    let moved_to = aside(dir)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::Repair(format!("cannot create a new {}: {e}", dir.display())))?;
    info!(
        moved_to = %moved_to.display(),
        was_voter,
        "the damaged data dir was moved aside; starting as a new member"
    );
    Ok(Repaired {
        moved_to,
        was_voter,
    })
}

fn no_cluster(cfg: &AgentConfig, e: crate::client::ClientError) -> AgentError {
    AgentError::Repair(format!(
        "cannot take node {} out of the cluster's membership through its leader ({e}); repair needs a quorum of healthy voters: start them first. The data dir {} was not touched",
        cfg.id,
        cfg.data_dir.display()
    ))
}

/// Demotes node `id` to a worker through the leader (a worker is left as it is).
async fn leave_membership(client: &Client, id: NodeId) -> Result<(), crate::client::ClientError> {
    let req = pb::NodeOpRequest {
        node_id: id,
        op: "demote".into(),
    };
    let reply = client
        .rpc(|mut c| {
            let r = req.clone();
            async move { c.node_op(r).await }
        })
        .await?;
    info!("{}", reply.message);
    Ok(())
}

/// Renames `dir` to `<dir>.damaged-<unix seconds>`.
fn aside(dir: &Path) -> Result<PathBuf, AgentError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{secs}"));
    let to = dir.with_file_name(name);
    std::fs::rename(dir, &to).map_err(|e| {
        AgentError::Repair(format!(
            "cannot move {} aside to {}: {e}",
            dir.display(),
            to.display()
        ))
    })?;
    Ok(to)
}

/// Step 4's end: asks the leader to promote this node until it is a voter again (the leader
/// adds it as a learner and waits until it has caught up first). Runs until done or stopped.
pub async fn promote_when_caught_up(agent: std::sync::Arc<crate::agent::Agent>) {
    let req = pb::NodeOpRequest {
        node_id: agent.me(),
        op: "promote".into(),
    };
    loop {
        let r = agent
            .client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.node_op(r).await }
            })
            .await;
        match r {
            Ok(reply) => {
                info!("repair finished: {}", reply.message);
                return;
            }
            Err(e) => warn!("repair: promotion back to voter: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = agent.stopping.cancelled() => return,
        }
    }
}
