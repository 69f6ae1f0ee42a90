//! The public `Mozen` gRPC service (CLI, console, clients and workers).
//!
//! Writes go to the leader: a follower answers `FAILED_PRECONDITION` with a message starting
//! `MZ-NOT-LEADER` and the leader's address in the `mozen-leader-addr` header, which the
//! client library follows. Reads are served by any Raft member from its applied state; an agent
//! that is only a worker redirects reads too. Memo hits are answered by any member without
//! touching the log.

use crate::hub::Woken;
use crate::node::{Agent, node_op, now_ms};
use crate::proposer::ProposeError;
use crate::view;
use mozen_model::{
    Code, NodeInfo, NodeRole, NodeState, RequestKey, RequestState, RetryPolicy, canonical_args,
    code_of,
};
use mozen_proto as pb;
use mozen_proto::mozen_server::{Mozen, MozenServer};
use mozen_proto::raft_server::RaftServer;
use mozen_store::{Command, ForgetSelector, NewRequest, Response as SmResponse, SubmitReply};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Longest a single Call or Get(wait) RPC waits before answering "still running"; the client
/// then re-attaches, so no RPC outlives a leader change by much.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Calls in progress on one Calls stream before the agent stops reading it.
const CALLS_PER_STREAM: usize = 16_384;

/// Serves both gRPC services on `listener` until `stop` fires.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener, stop: CancellationToken) {
    let max = agent.cfg.max_message;
    let mozen = MozenServer::new(Service {
        agent: agent.clone(),
        streams: crate::limits::StreamLimiter::new(agent.cfg.limits.max_client_streams),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let raft = RaftServer::new(crate::network::RaftService {
        raft: agent.raft.clone(),
        contact: agent.leader_contact.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    // The listener is bound by the caller, so the builder's own TCP options do not reach the
    // accepted sockets: set them here. Without TCP_NODELAY, small replies wait for the peer's
    // delayed ACK (about 40 ms per round trip).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let guard = crate::security::Guard::new(
        agent.me(),
        agent.cfg.security.token.as_ref(),
        agent.faults.clone(),
    );
    let server = match agent.cfg.security.server() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("gRPC server TLS: {e}");
            return;
        }
    };
    let r = server
        .layer(tonic::service::InterceptorLayer::new(guard))
        .add_service(raft)
        .add_service(mozen)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = r {
        tracing::error!("gRPC server: {e}");
    }
}

#[derive(Clone)]
pub struct Service {
    agent: Arc<Agent>,
    /// Open RPCs per client connection (`--max-client-streams`).
    streams: crate::limits::StreamLimiter,
}

type Res<T> = Result<Response<T>, Status>;

impl Service {
    fn not_leader(&self) -> Status {
        not_leader(&self.agent)
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.agent.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    fn require_member(&self) -> Result<(), Status> {
        if self.agent.is_member() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// For reads of the replicated state: refused with `MZ-CORRUPT` on a quarantined agent.
    fn require_sound_member(&self) -> Result<(), Status> {
        match self.agent.integrity.refusal(self.agent.me()) {
            Some(m) => Err(Status::failed_precondition(m)),
            None => self.require_member(),
        }
    }

    /// For what a quarantined agent still answers (status, events, checkpoints): its Raft
    /// member is stopped, so membership is not asked then.
    fn require_member_or_quarantined(&self) -> Result<(), Status> {
        if self.agent.integrity.is_quarantined() {
            Ok(())
        } else {
            self.require_member()
        }
    }

    fn propose_err(&self, e: ProposeError) -> Status {
        propose_status(&self.agent, e)
    }

    async fn propose(&self, cmd: Command) -> Result<SmResponse, Status> {
        self.agent
            .propose(cmd)
            .await
            .map_err(|e| self.propose_err(e))
    }

    /// The reply for `key` as the applied state knows it; `known` is its value when the
    /// caller was handed it on waking (else a finished request's outcome is read back).
    fn reply_for(
        &self,
        key: &RequestKey,
        cached: bool,
        known: Woken,
    ) -> Result<pb::CallReply, Status> {
        let fields = {
            let state = self.agent.sm.shared();
            let state = state.read().expect("state");
            state.reply_fields(key)
        };
        let Some((state, node, duration_ms)) = fields else {
            return Ok(pb::CallReply {
                key: key.to_hex(),
                state: "unknown".into(),
                state_enum: pb::RequestState::Unknown.into(),
                ..Default::default()
            });
        };
        let mut reply = pb::CallReply {
            key: key.to_hex(),
            cached,
            node,
            duration_ms,
            state: state.name().into(),
            state_enum: pb::RequestState::from(&state).into(),
            ..Default::default()
        };
        let done = state == RequestState::Done;
        if state.is_terminal() {
            let outcome = match known.filter(|_| done) {
                Some(v) => Some(mozen_model::Outcome::Value(v.to_vec())),
                None => self.agent.sm.outcome(key).map_err(|e| {
                    if e.is_damage() {
                        self.agent
                            .supervisor
                            .report(crate::supervise::Death::Damaged {
                                detail: e.to_string(),
                            });
                    }
                    Status::internal(e.to_string())
                })?,
            };
            match outcome {
                Some(mozen_model::Outcome::Value(v)) => {
                    reply.result_json = Some(String::from_utf8_lossy(&v).into_owned())
                }
                Some(mozen_model::Outcome::Error(e)) => reply.error = Some(pb::TaskError::from(&e)),
                None => {}
            }
        }
        Ok(reply)
    }

    /// Waits for a wake-up `rx` until `deadline`: what it was woken with, None once the time
    /// is up or the agent stops.
    async fn woken(
        &self,
        rx: tokio::sync::oneshot::Receiver<Woken>,
        deadline: Instant,
    ) -> Option<Woken> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tokio::select! {
            w = rx => Some(w.unwrap_or_default()),
            _ = tokio::time::sleep(left) => Some(None),
            _ = self.agent.shutdown.cancelled() => None,
        }
    }

    /// Waits until `key` is terminal or `limit` passes; answers its reply either way.
    async fn wait_reply(
        &self,
        key: RequestKey,
        limit: Duration,
        cached: bool,
    ) -> Result<pb::CallReply, Status> {
        let deadline = Instant::now() + limit;
        let mut known = None;
        loop {
            let rx = self.agent.hub.wait_for(key);
            let reply = self.reply_for(&key, cached, known.take())?;
            if is_final(&reply) {
                return Ok(reply);
            }
            match self.woken(rx, deadline).await {
                Some(w) => known = w,
                None => return Ok(reply),
            }
        }
    }

    /// Waits for an express call (see `express`): answered once its value is committed. A
    /// call whose flight ended without a value in the log (it failed, or its worker went away)
    /// takes the usual way; on an agent that stopped leading it is refused, so that its
    /// caller sends it to the new leader.
    async fn wait_express(
        &self,
        new: NewRequest,
        limit: Duration,
    ) -> Result<pb::CallReply, Status> {
        let key = new.key;
        let deadline = Instant::now() + limit;
        let mut known = None;
        loop {
            let rx = self.agent.hub.wait_for(key);
            let reply = self.reply_for(&key, false, known.take())?;
            if is_final(&reply) {
                return Ok(reply);
            }
            if reply.state != "unknown" {
                let left = deadline.saturating_duration_since(Instant::now());
                return self.wait_reply(key, left, false).await;
            }
            if !crate::express::flies(&self.agent, &key) {
                self.require_leader()?;
                if let SmResponse::Submitted(r) = self
                    .propose(Command::Submit {
                        requests: vec![new],
                        at: now_ms(),
                    })
                    .await?
                    && r.first() == Some(&SubmitReply::ParentGone)
                {
                    return Err(parent_gone());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                return self.wait_reply(key, left, false).await;
            }
            match self.woken(rx, deadline).await {
                Some(w) => known = w,
                None => return Ok(reply),
            }
        }
    }

    fn parse_call(&self, c: &pb::CallRequest) -> Result<(RequestKey, NewRequest), Status> {
        if c.function.is_empty() {
            return Err(Status::invalid_argument(
                Code::BadArguments.message("function name is empty"),
            ));
        }
        crate::limits::check_function_name(&c.function)?;
        (self.agent.cfg.limits).check_args(&c.function, c.args_json.len())?;
        let text = if c.args_json.trim().is_empty() {
            "null"
        } else {
            c.args_json.as_str()
        };
        let args: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Status::invalid_argument(format!(
                "{}: arguments of {} are not one JSON value: {e}",
                Code::BadArguments,
                c.function
            ))
        })?;
        let canon = canonical_args(&args);
        let key = RequestKey::of(&c.function, &canon);
        let parent = if c.parent.is_empty() {
            None
        } else {
            Some(c.parent.parse::<RequestKey>().map_err(|e| {
                Status::invalid_argument(format!("{}: parent: {e}", Code::BadArguments))
            })?)
        };
        let def = RetryPolicy::default();
        let unset = c.retries == 0 && c.backoff_ms == 0 && c.max_attempts == 0;
        // A child call that sets no policy of its own inherits its caller's: a request allowed
        // ten attempts does not fail because one of its children was allowed three.
        let inherited = parent.filter(|_| unset).and_then(|p| {
            let state = self.agent.sm.shared();
            let state = state.read().expect("state");
            state.request(&p).map(|r| r.retry)
        });
        let retry = inherited.unwrap_or(RetryPolicy {
            retries: c.retries,
            backoff_ms: if c.backoff_ms == 0 {
                def.backoff_ms
            } else {
                c.backoff_ms
            },
            max_attempts: if c.max_attempts == 0 {
                def.max_attempts
            } else {
                c.max_attempts
            },
        });
        Ok((
            key,
            NewRequest {
                key,
                function: c.function.clone(),
                args: canon,
                parent,
                priority: c.priority,
                retry,
                no_cache: c.no_cache,
            },
        ))
    }

    fn memo_hit(&self, key: &RequestKey) -> bool {
        self.agent.is_member()
            && !self.agent.integrity.is_quarantined()
            && self
                .agent
                .sm
                .shared()
                .read()
                .expect("state")
                .request_state(key)
                == Some(RequestState::Done)
    }

    async fn do_call(&self, c: pb::CallRequest) -> Result<pb::CallReply, Status> {
        let (key, new) = self.parse_call(&c)?;
        if !c.no_cache && self.memo_hit(&key) {
            return self.reply_for(&key, true, None);
        }
        self.require_leader()?;
        if new.parent.is_none() {
            return self.start_call(&c, key, new).await;
        }
        // A child call is answered with its value as soon as a worker reports it: the caller
        // is a running function, whose own value is committed before anyone outside the
        // cluster sees it (see "Child values" in docs/architecture.md).
        let mut reported = self.agent.hub.wait_reported(key);
        tokio::select! {
            r = self.start_call(&c, key, new) => r,
            Ok((value, node, ms)) = &mut reported => Ok(pb::CallReply {
                key: key.to_hex(),
                node: Some(node),
                duration_ms: ms,
                result_json: Some(String::from_utf8_lossy(&value).into_owned()),
                state: "done".into(),
                state_enum: pb::RequestState::Done.into(),
                ..Default::default()
            }),
        }
    }

    /// Starts `new` (express, or submitted to the log) and waits for its outcome.
    async fn start_call(
        &self,
        c: &pb::CallRequest,
        key: RequestKey,
        new: NewRequest,
    ) -> Result<pb::CallReply, Status> {
        let admitted = self.agent.sm.shared();
        (self.agent.cfg.limits).admit(
            &admitted.read().expect("state"),
            &key,
            !c.parent.is_empty(),
        )?;
        let limit = if c.timeout_ms == 0 {
            MAX_WAIT
        } else {
            Duration::from_millis(c.timeout_ms).min(MAX_WAIT)
        };
        crate::express::write_parent(&self.agent, new.parent).await;
        match crate::express::start(&self.agent, &new) {
            crate::express::Start::Flying
            | crate::express::Start::Joined
            | crate::express::Start::Held => {
                return self.wait_express(new, limit).await;
            }
            _ => {}
        }
        let at = now_ms();
        let placed = crate::leader::place_now(&self.agent, key, &new.function, new.parent);
        let submit = Command::Submit {
            requests: vec![new],
            at,
        };
        let resp = match placed {
            // Submitted and started in one log entry; the place stays held until then.
            Some((a, _held)) => match self
                .propose(Command::Batch(vec![
                    submit,
                    Command::Assign {
                        assignments: vec![a],
                        at,
                    },
                ]))
                .await?
            {
                SmResponse::Batch(mut rs) if !rs.is_empty() => rs.swap_remove(0),
                other => other,
            },
            None => self.propose(submit).await?,
        };
        match resp {
            SmResponse::Submitted(r) if r.first() == Some(&SubmitReply::MemoHit) => {
                self.reply_for(&key, true, None)
            }
            SmResponse::Submitted(r) if r.first() == Some(&SubmitReply::ParentGone) => {
                Err(parent_gone())
            }
            _ => self.wait_reply(key, limit, false).await,
        }
    }
}

/// Whether a reply is the last word on its request (done, failed or cancelled).
fn is_final(reply: &pb::CallReply) -> bool {
    matches!(reply.state.as_str(), "done" | "failed" | "cancelled")
}

pub(crate) type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkItem, Status>> + Send>>;
type CallsStream = Pin<Box<dyn Stream<Item = Result<pb::TaggedReply, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Mozen for Service {
    async fn cluster_info(&self, r: Request<pb::ClusterInfoRequest>) -> Res<pb::ClusterInfoReply> {
        let asking = r.into_inner().asking_node;
        let a = &self.agent;
        let m = a.raft.metrics().borrow().clone();
        let initialized = a.raft.is_initialized().await.unwrap_or(false);
        let voters = m
            .membership_config
            .nodes()
            .filter(|(id, _)| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == **id)
            })
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
            })
            .collect();
        let leader_addr = a.leader().map(|(_, addr)| addr).unwrap_or_default();
        Ok(Response::new(pb::ClusterInfoReply {
            node_id: a.me(),
            initialized,
            leader_id: m.current_leader,
            leader_addr,
            voters,
            term: m.current_term,
            role: a.role_of(a.me()).as_str().into(),
            asking_node_registered: asking != 0
                && a.sm.shared().read().expect("state").node(asking).is_some(),
        }))
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Res<pb::RaftStatus> {
        self.require_member_or_quarantined()?;
        Ok(Response::new(view::raft_status(&self.agent)))
    }

    async fn nodes(&self, _r: Request<pb::NodesRequest>) -> Res<pb::NodesReply> {
        self.require_leader()?;
        Ok(Response::new(pb::NodesReply {
            nodes: view::nodes(&self.agent),
        }))
    }

    async fn node_op(&self, r: Request<pb::NodeOpRequest>) -> Res<pb::NodeOpReply> {
        self.require_leader()?;
        let r = r.into_inner();
        match node_op(&self.agent, r.node_id, &r.op).await {
            Ok(message) => Ok(Response::new(pb::NodeOpReply { message })),
            Err(m) if code_of(&m) == Some(Code::UnknownNode) => Err(Status::not_found(m)),
            Err(m) if code_of(&m) == Some(Code::NotLeader) => Err(self.not_leader()),
            Err(m) => Err(Status::failed_precondition(m)),
        }
    }

    async fn add_node(&self, r: Request<pb::AddNodeRequest>) -> Res<pb::NodeOpReply> {
        self.require_leader()?;
        let r = r.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument(
                Code::BadArguments.message("node id must be a positive integer"),
            ));
        }
        crate::config::parse_host_port("addr", &r.addr, &r.addr)
            .map_err(|e| Status::invalid_argument(format!("{}: {e}", Code::BadArguments)))?;
        if self
            .agent
            .sm
            .shared()
            .read()
            .expect("state")
            .node(r.node_id)
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "{}: node {} is already in the node table",
                Code::NodeExists,
                r.node_id
            )));
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
        self.propose(Command::Batch(vec![
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

    async fn join(&self, r: Request<pb::JoinRequest>) -> Res<pb::JoinReply> {
        self.require_leader()?;
        let r = r.into_inner();
        if r.id == 0 || r.slots == 0 {
            return Err(Status::invalid_argument(
                Code::BadArguments.message("join needs a positive id and slots"),
            ));
        }
        let role = self.agent.role_of(r.id);
        let node = NodeInfo {
            id: r.id,
            name: r.name,
            addr: r.addr,
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            slots: r.slots,
            state: NodeState::Active,
            role,
            labels: r.labels.into_iter().collect(),
        };
        let at = now_ms();
        self.agent
            .hub
            .liveness
            .lock()
            .expect("liveness")
            .last_seen
            .insert(r.id, Instant::now());
        self.propose(Command::Batch(vec![
            Command::RegisterNode { node, at },
            Command::SetNodeRole { id: r.id, role, at },
        ]))
        .await?;
        Ok(Response::new(pb::JoinReply {
            leader_id: self.agent.me(),
            role: role.as_str().into(),
        }))
    }

    async fn heartbeat(&self, r: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatReply> {
        self.require_leader()?;
        let r = r.into_inner();
        let known = self
            .agent
            .sm
            .shared()
            .read()
            .expect("state")
            .node(r.node_id)
            .is_some();
        if !known {
            return Err(Status::not_found(format!(
                "{}: node {} is not in the node table",
                Code::UnknownNode,
                r.node_id
            )));
        }
        {
            let mut l = self.agent.hub.liveness.lock().expect("liveness");
            l.last_seen.insert(r.node_id, Instant::now());
            if r.leaving {
                l.leaving.insert(r.node_id);
            } else {
                l.leaving.remove(&r.node_id);
            }
        }
        let at = now_ms();
        if !r.hand_back.is_empty() {
            let keys: Vec<RequestKey> = r
                .hand_back
                .iter()
                .filter_map(|k| pb::convert::key_from_bytes(k))
                .collect();
            self.propose(Command::Requeue {
                node: r.node_id,
                keys: Some(keys),
                reason: "its agent shut down".into(),
                at,
            })
            .await?;
        } else if !r.leaving {
            let reported: Vec<RequestKey> = r
                .running
                .iter()
                .filter_map(|k| pb::convert::key_from_bytes(k))
                .collect();
            let grace = (self.agent.cfg.lease.as_millis() as u64).max(3000);
            let lost = crate::leader::lost_assignments(&self.agent, r.node_id, &reported, grace);
            if !lost.is_empty() {
                tracing::info!(
                    node = r.node_id,
                    count = lost.len(),
                    "re-queueing assignments the worker does not know"
                );
                self.propose(Command::Requeue {
                    node: r.node_id,
                    keys: Some(lost),
                    reason: "assignment lost".into(),
                    at,
                })
                .await?;
            }
        }
        let term = self.agent.raft.metrics().borrow().current_term;
        Ok(Response::new(pb::HeartbeatReply {
            leader_id: self.agent.me(),
            term,
        }))
    }

    type WorkStream = WorkStream;

    async fn work(&self, r: Request<pb::WorkRequest>) -> Res<Self::WorkStream> {
        self.require_leader()?;
        Ok(Response::new(open_work(
            &self.agent,
            r.into_inner().node_id,
        )?))
    }

    async fn complete(&self, r: Request<pb::CompleteRequest>) -> Res<pb::CompleteReply> {
        self.require_leader()?;
        complete(&self.agent, r.into_inner().completions).await?;
        Ok(Response::new(pb::CompleteReply {}))
    }

    async fn park(&self, r: Request<pb::ParkRequest>) -> Res<pb::ParkReply> {
        self.require_leader()?;
        park(&self.agent, r.into_inner()).await?;
        Ok(Response::new(pb::ParkReply {}))
    }

    async fn call(&self, r: Request<pb::CallRequest>) -> Res<pb::CallReply> {
        let _open = self.streams.acquire(&r)?;
        Ok(Response::new(self.do_call(r.into_inner()).await?))
    }

    type CallsStream = CallsStream;

    async fn calls(&self, r: Request<tonic::Streaming<pb::TaggedCall>>) -> Res<Self::CallsStream> {
        // The stream counts as one open RPC of its client; the calls on it are bounded by
        // CALLS_PER_STREAM: past that the agent stops reading the stream until some finish
        // (HTTP/2 flow control then holds the client back).
        let open = self.streams.acquire(&r)?;
        let mut inbound = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let svc = self.clone();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(CALLS_PER_STREAM));
        tokio::spawn(async move {
            let _open = open;
            while let Ok(Some(m)) = inbound.message().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let tx = tx.clone();
                let svc = svc.clone();
                tokio::spawn(async move {
                    let result = match m.call {
                        Some(c) => svc.do_call(c).await,
                        None => Err(Status::invalid_argument(
                            Code::BadArguments.message("a tagged call without its call"),
                        )),
                    };
                    let _ = tx.send(Ok(tagged_reply(m.tag, result)));
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn call_batch(&self, r: Request<pb::CallBatchRequest>) -> Res<pb::CallBatchReply> {
        let _open = self.streams.acquire(&r)?;
        let calls = r.into_inner().calls;
        let replies = futures::future::join_all(calls.into_iter().map(|c| self.do_call(c))).await;
        let replies = replies.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::CallBatchReply { replies }))
    }

    async fn submit(&self, r: Request<pb::CallRequest>) -> Res<pb::SubmitReply> {
        let _open = self.streams.acquire(&r)?;
        let (key, new) = self.parse_call(r.get_ref())?;
        self.require_leader()?;
        let admitted = self.agent.sm.shared();
        (self.agent.cfg.limits).admit(
            &admitted.read().expect("state"),
            &key,
            !r.get_ref().parent.is_empty(),
        )?;
        crate::express::write_parent(&self.agent, new.parent).await;
        let resp = self
            .propose(Command::Submit {
                requests: vec![new],
                at: now_ms(),
            })
            .await?;
        let disposition = match resp {
            SmResponse::Submitted(r) => match r.first() {
                Some(SubmitReply::Queued) => "queued",
                Some(SubmitReply::Joined) => "joined",
                Some(SubmitReply::MemoHit) => "memo-hit",
                _ => "parent-gone",
            },
            _ => "unknown",
        };
        Ok(Response::new(pb::SubmitReply {
            key: key.to_hex(),
            disposition: disposition.into(),
        }))
    }

    async fn get(&self, r: Request<pb::GetRequest>) -> Res<pb::CallReply> {
        self.require_sound_member()?;
        let _open = self.streams.acquire(&r)?;
        let r = r.into_inner();
        let key = parse_key(&r.key)?;
        if self
            .agent
            .sm
            .shared()
            .read()
            .expect("state")
            .request(&key)
            .is_none()
            && !crate::express::flies(&self.agent, &key)
        {
            return Err(Status::not_found(format!(
                "{}: no request {key} (never submitted, or forgotten)",
                Code::UnknownRequest
            )));
        }
        if !r.wait {
            let mut reply = self.reply_for(&key, false, None)?;
            if reply.state == "unknown" {
                // An express call, not written down yet: held for a place, or running.
                reply.set_state(if crate::express::is_held(&self.agent, &key) {
                    pb::RequestState::Queued
                } else {
                    pb::RequestState::Running
                });
            }
            return Ok(Response::new(reply));
        }
        let limit = if r.timeout_ms == 0 {
            MAX_WAIT
        } else {
            Duration::from_millis(r.timeout_ms).min(MAX_WAIT)
        };
        Ok(Response::new(self.wait_reply(key, limit, false).await?))
    }

    async fn cancel(&self, r: Request<pb::CancelRequest>) -> Res<pb::CancelReply> {
        let key = parse_key(&r.get_ref().key)?;
        self.require_leader()?;
        // An express call is written down first, so that the log can cancel it.
        if crate::express::flies(&self.agent, &key) {
            crate::express::write_down(&self.agent, Some(&[key])).await;
        }
        match self.propose(Command::Cancel { key, at: now_ms() }).await? {
            SmResponse::Cancelled(keys) => Ok(Response::new(pb::CancelReply {
                cancelled: keys.iter().map(|k| k.to_hex()).collect(),
            })),
            SmResponse::Rejected(rej) => Err(Status::not_found(rej.to_string())),
            _ => Ok(Response::new(pb::CancelReply::default())),
        }
    }

    async fn forget(&self, r: Request<pb::ForgetRequest>) -> Res<pb::ForgetReply> {
        let r = r.into_inner();
        let selector = if !r.key.is_empty() {
            let key = parse_key(&r.key)?;
            ForgetSelector::Keys(vec![key])
        } else if !r.function.is_empty() {
            ForgetSelector::Function(r.function)
        } else if r.older_than_ms > 0 {
            ForgetSelector::OlderThan(now_ms().saturating_sub(r.older_than_ms))
        } else {
            return Err(Status::invalid_argument(
                Code::BadArguments.message("forget needs a key, a function or an age"),
            ));
        };
        self.require_leader()?;
        match self
            .propose(Command::Forget {
                selector,
                at: now_ms(),
            })
            .await?
        {
            SmResponse::Forgotten(n) => Ok(Response::new(pb::ForgetReply { forgotten: n })),
            _ => Ok(Response::new(pb::ForgetReply { forgotten: 0 })),
        }
    }

    async fn tree(&self, r: Request<pb::TreeRequest>) -> Res<pb::TreeReply> {
        self.require_sound_member()?;
        let r = r.into_inner();
        let key = parse_key(&r.key)?;
        let max = if r.max_nodes == 0 {
            10_000
        } else {
            r.max_nodes as usize
        };
        let depth = if r.max_depth == 0 {
            u32::MAX
        } else {
            r.max_depth
        };
        let entries =
            view::tree(&self.agent, key, max, depth, !r.omit_args).map_err(Status::not_found)?;
        Ok(Response::new(pb::TreeReply { entries }))
    }

    async fn put_blobs(&self, r: Request<pb::PutBlobsRequest>) -> Res<pb::PutBlobsReply> {
        use crate::batch::job::{MAX_BLOB_BYTES, blob_key, blob_memo, is_blob_hash};
        self.require_leader()?;
        let r = r.into_inner();
        if let Some((i, h)) = r.check.iter().enumerate().find(|(_, h)| !is_blob_hash(h)) {
            return Err(Status::invalid_argument(format!(
                "{}: check[{i}] ({} bytes) is not a blob hash (64 lowercase hex digits)",
                Code::BadArguments,
                h.len()
            )));
        }
        let limit = MAX_BLOB_BYTES.min(self.agent.cfg.limits.max_result.saturating_sub(2));
        if let Some((i, b)) = r.blobs.iter().enumerate().find(|(_, b)| b.len() > limit) {
            return Err(Status::invalid_argument(format!(
                "{}: blob {i} is {} bytes; this cluster takes blobs of at most {limit}: cut the job into smaller slices",
                crate::limits::TOO_LARGE,
                b.len()
            )));
        }
        let memos: Vec<_> = r.blobs.iter().map(|b| blob_memo(b).1).collect();
        let missing = {
            let state = self.agent.sm.shared();
            let state = state.read().expect("state");
            let done = |k: &RequestKey| state.request_state(k) == Some(RequestState::Done);
            let missing: Vec<String> = r
                .check
                .into_iter()
                .filter(|h| !done(&blob_key(h)))
                .collect();
            let memos: Vec<_> = memos.into_iter().filter(|m| !done(&m.key)).collect();
            (missing, memos)
        };
        let (missing, memos) = missing;
        let mut stored = 0;
        if !memos.is_empty() {
            let cmd = Command::Memoize {
                memos,
                at: now_ms(),
            };
            if let SmResponse::Memoized(new) = self.propose(cmd).await? {
                stored = new.iter().filter(|n| **n).count() as u64;
            }
        }
        Ok(Response::new(pb::PutBlobsReply { missing, stored }))
    }

    async fn functions(&self, _r: Request<pb::FunctionsRequest>) -> Res<pb::FunctionsReply> {
        self.require_sound_member()?;
        Ok(Response::new(pb::FunctionsReply {
            functions: view::functions(&self.agent),
        }))
    }

    async fn queue(&self, r: Request<pb::QueueRequest>) -> Res<pb::QueueReply> {
        self.require_sound_member()?;
        let limit = r.into_inner().limit.max(1) as usize;
        let (summary, head) = view::queue(&self.agent, limit);
        Ok(Response::new(pb::QueueReply {
            summary: Some(summary),
            head,
        }))
    }

    async fn events(&self, r: Request<pb::EventsRequest>) -> Res<pb::EventsReply> {
        self.require_member_or_quarantined()?;
        let limit = r.into_inner().limit;
        Ok(Response::new(pb::EventsReply {
            events: view::events(&self.agent, if limit == 0 { 100 } else { limit as usize }),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        self.require_leader()?;
        let open = self.streams.acquire(&r)?;
        let n = r.into_inner().requests;
        let n = if n == 0 { 200 } else { n as usize };
        let agent = self.agent.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _open = open;
            loop {
                if !agent.is_leader() {
                    break; // the console reconnects and follows the new leader
                }
                let update = view::cluster_update(&agent, n);
                if tx.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = agent.shutdown.cancelled() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn state_digest(&self, r: Request<pb::StateDigestRequest>) -> Res<pb::StateDigestReply> {
        self.require_member_or_quarantined()?;
        if r.get_ref().checkpoints_only {
            return Ok(Response::new(crate::integrity::checkpoints_reply(
                &self.agent,
            )));
        }
        Ok(Response::new(view::state_digest(&self.agent)))
    }
}

/// Unregisters a worker's stream when tonic drops it.
struct StreamGuard {
    hub: Arc<crate::hub::Hub>,
    node: u64,
    conn: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = self.hub.streams.lock().expect("streams");
        if s.get(&self.node).is_some_and(|st| st.conn == self.conn) {
            s.remove(&self.node);
            drop(s);
            crate::express::orphan(&self.hub, self.node);
        }
    }
}

fn async_stream_with_guard<S>(
    inner: S,
    guard: StreamGuard,
) -> impl Stream<Item = Result<pb::WorkItem, Status>> + Send
where
    S: Stream<Item = Result<pb::WorkItem, Status>> + Send + Unpin,
{
    futures::stream::unfold((inner, guard), |(mut inner, guard)| async move {
        use futures::StreamExt;
        inner.next().await.map(|item| (item, (inner, guard)))
    })
}

/// Parses a request key from the public API (64 hex digits).
/// `MZ-NOT-LEADER`, naming the leader (also in the `mozen-leader-addr` header) when known.
fn not_leader(agent: &Agent) -> Status {
    let leader = agent.leader();
    let (id, addr) = match &leader {
        Some((id, addr)) => (
            id.map_or("unknown".to_string(), |i| i.to_string()),
            addr.clone(),
        ),
        None => ("unknown".to_string(), String::new()),
    };
    let mut s = Status::failed_precondition(format!(
        "{}: node {} is not the leader; the leader is node {id} ({})",
        Code::NotLeader,
        agent.me(),
        if addr.is_empty() {
            "being elected"
        } else {
            &addr
        }
    ));
    if !addr.is_empty()
        && let Ok(v) = addr.parse()
    {
        s.metadata_mut().insert(pb::LEADER_ADDR_HEADER, v);
    }
    s
}

/// Why a proposal failed, as a gRPC status.
fn propose_status(agent: &Agent, e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => not_leader(agent),
        ProposeError::Closed => Status::unavailable(e.to_string()),
        ProposeError::Raft(m) => Status::unavailable(format!("{}: {m}", Code::Raft)),
    }
}

/// Opens node `node`'s Work stream on this agent, the leader: registers it with the hub and
/// replays what the state says runs there. The worker of the leader itself uses it directly,
/// without a gRPC round trip.
pub(crate) fn open_work(agent: &Arc<Agent>, node: u64) -> Result<WorkStream, Status> {
    let state = agent.sm.shared();
    if state.read().expect("state").node(node).is_none() {
        return Err(Status::not_found(format!(
            "{}: node {node} is not in the node table",
            Code::UnknownNode
        )));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = agent.next_conn();
    {
        // Register first, then replay what already runs there: an assignment applied in
        // between is sent twice and the worker ignores the repeat.
        agent.hub.streams.lock().expect("streams").insert(
            node,
            crate::hub::Stream {
                conn,
                tx: tx.clone(),
            },
        );
        agent
            .hub
            .liveness
            .lock()
            .expect("liveness")
            .last_seen
            .insert(node, Instant::now());
        let state = state.read().expect("state");
        for req in state.running_on(node) {
            if let RequestState::Running { attempt, .. } = req.state {
                let _ = tx.send(Ok(pb::WorkItem {
                    item: Some(pb::work_item::Item::Assign(pb::Assignment {
                        key: req.key.0.to_vec(),
                        function: req.function.clone(),
                        args: req.args.clone(),
                        attempt,
                    })),
                }));
            }
        }
    }
    agent.hub.schedule.notify_one();
    let hub = agent.hub.clone();
    let out = UnboundedReceiverStream::new(rx);
    // Unregister when the worker goes away (the stream is dropped).
    let guard = StreamGuard { hub, node, conn };
    let s = async_stream_with_guard(out, guard);
    Ok(Box::pin(s))
}

/// How long a new leader's `Complete` waits for its state to hold earlier terms' entries.
const STATE_CURRENT_WAIT: Duration = Duration::from_secs(5);

/// Commits outcomes reported by a worker (through gRPC, or directly by the leader's own).
pub(crate) async fn complete(agent: &Agent, reported: Vec<pb::Completion>) -> Result<(), Status> {
    let mut completions = Vec::with_capacity(reported.len());
    for c in reported {
        let Some(key) = pb::convert::key_from_bytes(&c.key) else {
            return Err(Status::invalid_argument(
                Code::BadArguments.message("completion key must be 32 bytes"),
            ));
        };
        let outcome = match (c.value, c.error) {
            (Some(v), None) => agent.cfg.limits.check_result(c.node, v),
            (_, Some(e)) => mozen_model::Outcome::Error((&e).into()),
            (None, None) => mozen_model::Outcome::Value(b"null".to_vec()),
        };
        completions.push(mozen_store::Completion {
            key,
            node: c.node,
            attempt: c.attempt,
            outcome,
            duration_ms: c.duration_ms,
        });
    }
    // Child calls waiting on these values go on now; the values are committed below.
    for c in &completions {
        if let mozen_model::Outcome::Value(v) = &c.outcome {
            agent.hub.value_reported(&c.key, v, c.node, c.duration_ms);
        }
    }
    let (express, completions): (Vec<_>, Vec<_>) =
        completions.into_iter().partition(|c| c.attempt == 0);
    // An express run this leader does not hold counts for what an earlier leader wrote down,
    // which this leader's state must show before it decides: else the run would be dropped
    // and its worker, acknowledged, would forget it while the log shows it running there
    // (later re-queued as lost, an attempt spent).
    if crate::express::any_stray(agent, &express)
        && !crate::node::await_state_current(&agent.raft, STATE_CURRENT_WAIT).await
    {
        return Err(Status::failed_precondition(Code::NotReady.message(
            "this leader has not yet applied what earlier leaders committed; \
             report again",
        )));
    }
    let mut cmds = Vec::new();
    if !express.is_empty() {
        let (landed, durations) = crate::express::land(agent, express);
        agent
            .hub
            .record_durations(durations.iter().map(|(f, ms)| (f.as_str(), *ms)));
        cmds = landed;
    }
    {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        let runs: Vec<_> = completions
            .iter()
            .filter(|c| matches!(c.outcome, mozen_model::Outcome::Value(_)))
            // A parent's run time is mostly waiting on its children (its slot lent): it says
            // nothing about how short its function is.
            .filter(|c| state.children(&c.key).is_empty())
            .filter_map(|c| Some((state.request(&c.key)?, c.duration_ms)))
            .collect();
        agent
            .hub
            .record_durations(runs.iter().map(|(r, ms)| (r.function.as_str(), *ms)));
    }
    if !completions.is_empty() {
        cmds.push(Command::Complete {
            completions,
            at: now_ms(),
        });
    }
    let cmd = match cmds.len() {
        0 => return Ok(()),
        1 => cmds.pop().expect("one"),
        _ => Command::Batch(cmds),
    };
    agent
        .propose(cmd)
        .await
        .map_err(|e| propose_status(agent, e))?;
    Ok(())
}

/// Commits that a running request parks or resumes (through gRPC, or directly by the leader's
/// own worker).
pub(crate) async fn park(agent: &Agent, r: pb::ParkRequest) -> Result<(), Status> {
    let Some(key) = pb::convert::key_from_bytes(&r.key) else {
        return Err(Status::invalid_argument(
            Code::BadArguments.message("park key must be 32 bytes"),
        ));
    };
    agent
        .propose(Command::Park {
            key,
            node: r.node,
            attempt: r.attempt,
            parked: r.parked,
            at: now_ms(),
        })
        .await
        .map_err(|e| propose_status(agent, e))?;
    Ok(())
}

fn parent_gone() -> Status {
    Status::failed_precondition(format!(
        "{}: the calling request is no longer running (cancelled or re-queued)",
        Code::ParentGone
    ))
}

/// A call's outcome as a Calls stream message.
fn tagged_reply(tag: u64, result: Result<pb::CallReply, Status>) -> pb::TaggedReply {
    match result {
        Ok(reply) => pb::TaggedReply {
            tag,
            reply: Some(reply),
            ..Default::default()
        },
        Err(s) => pb::TaggedReply {
            tag,
            code: s.code() as i32,
            message: s.message().to_string(),
            leader_addr: s
                .metadata()
                .get(pb::LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        },
    }
}

fn parse_key(s: &str) -> Result<RequestKey, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("{}: key: {e}", Code::BadArguments)))
}
