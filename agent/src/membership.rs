//! Node operations: drain, undrain, promote, demote, remove, carried out by the leader as a
//! typed [`NodeOp`] with a typed [`NodeOpError`].
//!
//! Membership changes go through Raft (`add_learner`, `change_membership`); a voter leaves
//! only when the voters left keep a live majority (heard from within the lease by this
//! leadership), so an operator cannot remove the quorum by accident.

use crate::context::{Context, now_ms};
use crate::leadership::Leadership;
use crate::proposer::ProposeError;
use mozen_model::{Code, NodeId, NodeOp, NodeRole, NodeState};
use mozen_store::{Command, RaftNode};
use openraft::ChangeMembers;
use std::collections::BTreeSet;

/// Why a node operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeOpError {
    #[error("{code}: no node {0} in the node table", code = Code::UnknownNode)]
    UnknownNode(NodeId),
    /// The operation would leave the voters without a live majority.
    #[error("{code}: {0}", code = Code::Quorum)]
    Quorum(String),
    /// Raft refused the membership change.
    #[error("{code}: {0}", code = Code::Raft)]
    Raft(String),
    /// The operation switches the autoscaler: it acts on no node.
    #[error("{code}: {0} acts on no node (it switches the autoscaler)", code = Code::BadOp)]
    NotOnANode(NodeOp),
    /// The fact could not be written down (not leader any more, or stopping).
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

impl NodeOpError {
    /// The error's code.
    pub fn code(&self) -> Code {
        match self {
            NodeOpError::UnknownNode(_) => Code::UnknownNode,
            NodeOpError::Quorum(_) => Code::Quorum,
            NodeOpError::Raft(_) => Code::Raft,
            NodeOpError::NotOnANode(_) => Code::BadOp,
            NodeOpError::Propose(ProposeError::NotLeader { .. }) => Code::NotLeader,
            NodeOpError::Propose(ProposeError::Closed) => Code::ShuttingDown,
            NodeOpError::Propose(ProposeError::Raft(_)) => Code::Raft,
        }
    }
}

/// Why a membership operation was refused.
pub fn quorum_check(agent: &Context, l: &Leadership, removing: NodeId) -> Result<(), NodeOpError> {
    let (voters, _) = agent.membership();
    if !voters.contains(&removing) {
        return Ok(());
    }
    let after: Vec<NodeId> = voters.iter().copied().filter(|v| *v != removing).collect();
    if after.is_empty() {
        return Err(NodeOpError::Quorum(format!(
            "node {removing} is the last voter; promote another node first"
        )));
    }
    let lease = agent.cfg.lease;
    let live = {
        let l = l.liveness.lock().expect("liveness");
        after
            .iter()
            .filter(|v| {
                **v == agent.me() || l.last_seen.get(v).is_some_and(|t| t.elapsed() < lease)
            })
            .count()
    };
    let need = after.len() / 2 + 1;
    if live < need {
        return Err(NodeOpError::Quorum(format!(
            "removing voter {removing} leaves {live} live of {} voters; a majority ({need}) is needed",
            after.len()
        )));
    }
    Ok(())
}

/// Carries out a node operation on the leader; what it did, in words.
pub async fn node_op(
    agent: &Context,
    l: &Leadership,
    id: NodeId,
    op: NodeOp,
) -> Result<String, NodeOpError> {
    let at = now_ms();
    let node = agent.sm.shared().read().expect("state").node(id).cloned();
    let Some(node) = node else {
        return Err(NodeOpError::UnknownNode(id));
    };
    let raft_err = |e: String| NodeOpError::Raft(e);
    match op {
        NodeOp::Drain => {
            agent
                .propose(Command::SetNodeState {
                    id,
                    state: NodeState::Draining,
                    at,
                })
                .await?;
            Ok(format!("node {id} is draining"))
        }
        NodeOp::Undrain => {
            agent
                .propose(Command::SetNodeState {
                    id,
                    state: NodeState::Active,
                    at,
                })
                .await?;
            Ok(format!("node {id} is active"))
        }
        NodeOp::Promote => {
            if agent.role_of(id) == NodeRole::Voter {
                return Ok(format!("node {id} is already a voter"));
            }
            agent
                .raft
                .add_learner(
                    id,
                    RaftNode {
                        addr: node.addr.clone(),
                    },
                    true,
                )
                .await
                .map_err(|e| raft_err(e.to_string()))?;
            agent
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| raft_err(e.to_string()))?;
            agent
                .propose(Command::SetNodeRole {
                    id,
                    role: NodeRole::Voter,
                    at,
                })
                .await?;
            Ok(format!("node {id} is a voter"))
        }
        NodeOp::Demote => {
            if agent.role_of(id) == NodeRole::Worker {
                return Ok(format!("node {id} is already a worker"));
            }
            leave_membership(agent, l, id).await?;
            agent
                .propose(Command::SetNodeRole {
                    id,
                    role: NodeRole::Worker,
                    at,
                })
                .await?;
            Ok(format!("node {id} is a worker"))
        }
        NodeOp::Remove => {
            leave_membership(agent, l, id).await?;
            agent.propose(Command::RemoveNode { id, at }).await?;
            Ok(format!("node {id} was removed"))
        }
        NodeOp::AutoscalePause | NodeOp::AutoscaleResume => Err(NodeOpError::NotOnANode(op)),
    }
}

/// Takes `id` out of the Raft membership, if it is in it: a voter only when the remaining
/// voters keep a live majority. A worker is left as it is.
async fn leave_membership(agent: &Context, l: &Leadership, id: NodeId) -> Result<(), NodeOpError> {
    let change = match agent.role_of(id) {
        NodeRole::Worker => return Ok(()),
        NodeRole::Voter => {
            quorum_check(agent, l, id)?;
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        }
        NodeRole::Learner => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
    };
    agent
        .raft
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| NodeOpError::Raft(e.to_string()))
}
