//! The corruption checks (see [`crate::integrity`] for what they look for and what a finding
//! does): every voter compares its state checkpoints with the other voters', at start and
//! every `--corruption-check-interval`, and an outvoted one quarantines itself.

use crate::agent::Agent;
use crate::integrity::{
    ANNOUNCE_RETRY, ASK_TIMEOUT, KIND_CONFLICT, KIND_CORRUPT, Quarantine, describe, ids,
    marker_path, write_marker,
};
use mozen_model::{Code, NodeId};
use mozen_proto as pb;
use mozen_store::checkpoint::{Checkpoint, Mismatch, compare};
use mozen_store::{Command, FORMAT_VERSION};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// This agent's checkpoints, as reported and compared: with the test-only digest fault of
/// [`crate::faults`] applied.
pub fn own_checkpoints(agent: &Agent) -> Vec<Checkpoint> {
    let mut list = agent.sm.checkpoints().list();
    if let Some(from) = agent.faults.as_ref().and_then(|f| f.corrupt_digests_from()) {
        for c in list.iter_mut().filter(|c| c.index >= from) {
            c.digest[0] ^= 0xff;
        }
    }
    list
}

/// The checkpoints part of a `StateDigest` reply.
pub fn checkpoints_reply(agent: &Agent) -> pb::StateDigestReply {
    pb::StateDigestReply {
        node_id: agent.me(),
        checkpoints: own_checkpoints(agent)
            .into_iter()
            .map(|c| pb::Checkpoint {
                index: c.index,
                digest: c.digest.to_vec(),
            })
            .collect(),
        digest_format: FORMAT_VERSION,
        quarantined: agent.integrity.is_quarantined(),
        ..Default::default()
    }
}

/// Runs the corruption checks of this agent until it stops (see the module docs).
pub async fn watch(agent: Arc<Agent>) {
    // First once the state is current (holds what was committed before this term).
    while !crate::context::await_state_current(&agent.raft, Duration::from_secs(1)).await {
        if agent.stopping.is_cancelled() {
            return;
        }
    }
    let interval = agent.cfg.corruption_check_interval;
    let mut next_check = Instant::now();
    loop {
        if Instant::now() >= next_check {
            check(&agent).await;
            next_check = Instant::now() + interval;
        }
        if agent.integrity.is_quarantined() {
            return;
        }
        let pending = announce(&agent).await;
        let wake = if pending {
            next_check.min(Instant::now() + ANNOUNCE_RETRY)
        } else {
            next_check
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = agent.stopping.cancelled() => return,
        }
    }
}

/// One comparison with the other voters, if this agent is a voter.
async fn check(agent: &Arc<Agent>) {
    let me = agent.me();
    let voters: BTreeMap<NodeId, String> = {
        let m = agent.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        mem.voter_ids()
            .map(|id| {
                (
                    id,
                    mem.get_node(&id)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                )
            })
            .collect()
    };
    if !voters.contains_key(&me) {
        return;
    }
    let mut seen = BTreeMap::from([(me, own_checkpoints(agent))]);
    let asks = voters
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, addr)| async move { (*id, ask(agent, addr).await) });
    for (id, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(r) if r.digest_format == FORMAT_VERSION => {
                let list = r
                    .checkpoints
                    .iter()
                    .filter_map(|c| {
                        let digest = <[u8; 32]>::try_from(&c.digest[..]).ok()?;
                        Some(Checkpoint {
                            index: c.index,
                            digest,
                        })
                    })
                    .collect();
                seen.insert(id, list);
            }
            Ok(r) => debug!(
                peer = id,
                format = r.digest_format,
                "corruption check: another state format; not compared"
            ),
            Err(e) => debug!(peer = id, "corruption check: no checkpoints: {e}"),
        }
    }
    let cmp = compare(voters.len(), &seen);
    let previous = agent.integrity.checks.fetch_add(1, Ordering::Relaxed);
    let voter_ids: BTreeSet<NodeId> = voters.keys().copied().collect();
    for m in agent.integrity.record(&voter_ids, &cmp) {
        error!(node = m.node, index = m.index, "{}", describe(&m));
    }
    if cmp.compared > 0 && !agent.integrity.compared_once.swap(true, Ordering::Relaxed) {
        // Once, so that the log shows the checks at work without a line every interval.
        info!(
            voters = seen.len(),
            indexes = cmp.compared,
            checks = previous + 1,
            "corruption checks: first comparison of state checkpoints with other voters"
        );
    }
    debug!(
        answered = seen.len(),
        compared = cmp.compared,
        "corruption check done"
    );
    if let Some(m) = cmp.mismatches.iter().find(|m| m.node == me && m.outvoted) {
        quarantine(agent, m.clone()).await;
    }
}

/// Asks the voter at `addr` for its checkpoints.
async fn ask(agent: &Agent, addr: &str) -> Result<pb::StateDigestReply, String> {
    let ch = agent
        .cfg
        .security
        .client()
        .from_node(agent.me())
        .channel(addr)
        .map_err(|e| e.to_string())?;
    let mut c = pb::mozen_client::MozenClient::new(ch);
    let mut req = tonic::Request::new(pb::StateDigestRequest {
        checkpoints_only: true,
    });
    req.set_timeout(ASK_TIMEOUT);
    c.state_digest(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

/// Quarantines this agent, whose state a majority outvoted (see the module docs). The mark
/// comes first, then the marker file, then the Raft member stops.
pub async fn quarantine(agent: &Agent, m: Mismatch) {
    let reason = format!(
        "its replicated state differs at log index {} from the one voters {} hold, a majority",
        m.index,
        ids(&m.others)
    );
    let q = Quarantine {
        mismatch: m,
        reason: reason.clone(),
    };
    if agent.integrity.quarantine.set(q).is_err() {
        return;
    }
    error!(
        "{}: quarantining this agent: {reason}; it stops serving reads and leaves Raft",
        Code::Corrupt
    );
    if let Err(e) = write_marker(&agent.cfg.data_dir, &reason) {
        error!(
            path = %marker_path(&agent.cfg.data_dir).display(),
            "cannot write the quarantine marker: {e}; do not restart this agent on this data dir before it is repaired"
        );
    }
    agent.stopping.cancel();
    agent.supervisor.expect_raft_stop();
    if let Err(e) = agent.raft.shutdown().await {
        warn!("raft shutdown for the quarantine: {e}");
    }
    info!("quarantined: Raft stopped; Status, Events and StateDigest are still served");
}

/// On the leader: records an event for each finding that has none yet. Returns whether some
/// finding is still without its event.
async fn announce(agent: &Agent) -> bool {
    let pending = agent.integrity.unannounced();
    if pending.is_empty() {
        return false;
    }
    if !agent.is_leader() {
        return true;
    }
    let mut left = false;
    for m in pending {
        let kind = if m.outvoted {
            KIND_CORRUPT
        } else {
            KIND_CONFLICT
        };
        let message = describe(&m);
        let recorded = {
            let state = agent.sm.shared();
            let state = state.read().expect("state");
            state
                .events()
                .any(|e| e.kind == kind && e.node == Some(m.node) && e.message == message)
        };
        if !recorded {
            let cmd = Command::Event {
                kind: kind.into(),
                node: Some(m.node),
                message,
                at: crate::context::now_ms(),
            };
            if let Err(e) = agent.propose(cmd).await {
                warn!("recording the corruption event: {e}");
                left = true;
                continue;
            }
        }
        agent.integrity.mark_announced(&m);
    }
    left
}
