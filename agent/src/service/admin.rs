//! The operators' audience: node operations (drain, undrain, promote, demote, remove, the
//! autoscaler's switch) and expecting a node that is not running yet. The leader's.

use super::{Res, Service, propose_status};
use crate::context::now_ms;
use crate::membership::NodeOpError;
use mozen_model::{Code, NodeInfo, NodeOp, NodeRole, NodeState, UnknownNodeOp};
use mozen_proto as pb;
use mozen_proto::status::{self, status};
use mozen_store::Command;
use std::collections::BTreeMap;
use tonic::{Request, Response};

pub(super) async fn node_op(s: &Service, r: Request<pb::NodeOpRequest>) -> Res<pb::NodeOpReply> {
    let leadership = s.leadership()?;
    let r = r.into_inner();
    let op: NodeOp =
        r.op.parse()
            .map_err(|e: UnknownNodeOp| status(Code::BadOp, e))?;
    if op.is_autoscale_switch() {
        let message = crate::leadership::autoscale::switch(&s.agent, op).await;
        return Ok(Response::new(pb::NodeOpReply { message }));
    }
    match crate::membership::node_op(&s.agent, &leadership, r.node_id, op).await {
        Ok(message) => Ok(Response::new(pb::NodeOpReply { message })),
        Err(NodeOpError::Propose(e)) => Err(propose_status(&s.agent, e)),
        Err(e) => Err(status::coded(e)),
    }
}

pub(super) async fn add_node(s: &Service, r: Request<pb::AddNodeRequest>) -> Res<pb::NodeOpReply> {
    s.leadership()?;
    let r = r.into_inner();
    if r.node_id == 0 {
        return Err(status(
            Code::BadArguments,
            "node id must be a positive integer",
        ));
    }
    crate::config::parse_host_port("addr", &r.addr, &r.addr)
        .map_err(|e| status(Code::BadArguments, e))?;
    if s.agent
        .sm
        .shared()
        .read()
        .expect("state")
        .node(r.node_id)
        .is_some()
    {
        return Err(status(
            Code::NodeExists,
            format_args!("node {} is already in the node table", r.node_id),
        ));
    }
    let at = now_ms();
    let node = NodeInfo {
        id: r.node_id,
        name: format!("node-{}", r.node_id),
        addr: r.addr.clone(),
        cpus: 0,
        memory_bytes: 0,
        slots: 0,
        state: NodeState::Down,
        role: NodeRole::Worker,
        labels: BTreeMap::new(),
    };
    s.propose(Command::Batch(vec![
        Command::RegisterNode { node, at },
        Command::SetNodeState {
            id: r.node_id,
            state: NodeState::Down,
            at,
        },
    ]))
    .await?;
    Ok(Response::new(pb::NodeOpReply {
        message: format!(
            "expecting node {} at {}: start `mozen-agent --id {} --peers ...` there",
            r.node_id, r.addr, r.node_id
        ),
    }))
}
