//! The public `Mozen` gRPC service, one file per audience:
//!
//! - [`calls`]: callers (clients, functions calling functions): call, submit, get, cancel,
//!   forget, blobs;
//! - [`work`]: workers: join, heartbeat, the Work stream, completions, parking (the
//!   `MozenWorker` service, and the same RPCs still on `Mozen` for one release);
//! - [`admin`]: operators: node operations, expecting a node;
//! - [`reads`]: everyone: cluster info, status, nodes, queue, trees, events, the console's
//!   Watch stream, state digests.
//!
//! Beside them, [`standard`] serves gRPC health and server reflection.
//!
//! This file serves the services and holds what every audience shares: leadership and
//! membership checks, proposing, a request's reply. Writes go to the leader: what only a
//! leader may do takes the [`Leadership`] the agent hands out, and a follower answers
//! `FAILED_PRECONDITION` with a message starting `MZ-NOT-LEADER` and the leader's address in
//! the `mozen-leader-addr` header, which the client library follows. Reads are served by any
//! Raft member from its applied state; an agent that is only a worker redirects reads too.
//! Memo hits are answered by any member without touching the log.

mod admin;
mod calls;
mod reads;
mod standard;
pub(crate) mod work;

pub(crate) use work::{WorkStream, complete_reported, open_work, park_request};

use crate::agent::Agent;
use crate::hub::Woken;
use crate::leadership::{Leadership, NotLeader};
use crate::proposer::ProposeError;
use crate::security::Gated;
use calls::CallsStream;
use futures::StreamExt;
use mozen_model::{Code, RequestKey, RequestState};
use mozen_proto as pb;
use mozen_proto::mozen_server::{Mozen, MozenServer};
use mozen_proto::mozen_worker_server::{MozenWorker, MozenWorkerServer};
use mozen_proto::raft_server::RaftServer;
use mozen_proto::status::{self, status};
use mozen_store::{Command, Response as SmResponse};
use reads::WatchStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Serves the `Mozen`, `MozenWorker` and `Raft` services, health and reflection on
/// `listener` until `stop` fires. Every service but health passes the
/// [`crate::security::Guard`] first, which admits each RPC for the role it needs.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener, stop: CancellationToken) {
    // Room around a value at the bound (a result of --max-result in a completion, arguments
    // of --max-args in a call), so the limits refuse it with their own codes.
    let max = agent.cfg.max_message + crate::limits::FRAMING;
    let service = Service {
        agent: agent.clone(),
        streams: crate::limits::StreamLimiter::new(agent.cfg.limits.max_client_streams),
        feed: Arc::default(),
        admission: crate::limits::Admission::default(),
    };
    let worker = MozenWorkerServer::new(service.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let mozen = MozenServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let raft_max = agent.cfg.raft_message();
    let raft = RaftServer::new(crate::network::RaftService {
        raft: agent.raft.clone(),
        contact: agent.leader_contact.clone(),
    })
    .max_decoding_message_size(raft_max)
    .max_encoding_message_size(raft_max);
    // The listener is bound by the caller, so the builder's own TCP options do not reach the
    // accepted sockets: set them here. Without TCP_NODELAY, small replies wait for the peer's
    // delayed ACK (about 40 ms per round trip).
    let gate = crate::connections::Gate::new(agent.cfg.limits.max_client_connections);
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
        .filter_map(move |accepted| {
            futures::future::ready(match accepted {
                Ok(tcp) => gate.admit(tcp).map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
    let guard = crate::security::Guard::new(
        agent.me(),
        agent.cfg.security.token.as_ref(),
        agent.faults.clone(),
    )
    .with_access(agent.cfg.security.access.clone());
    let server = match agent.cfg.security.server() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("gRPC server TLS: {e}");
            return;
        }
    };
    let limits = &agent.cfg.limits;
    let mut server = server
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(crate::limits::HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::limits::HTTP2_KEEPALIVE_TIMEOUT));
    let (reflection_v1, reflection_v1alpha) = match standard::reflection() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("gRPC reflection: {e}");
            return;
        }
    };
    let health = standard::health(&agent).await;
    let r = server
        .add_service(health)
        .add_service(Gated::new(reflection_v1, guard.clone()))
        .add_service(Gated::new(reflection_v1alpha, guard.clone()))
        .add_service(Gated::new(raft, guard.clone()))
        .add_service(Gated::new(worker, guard.clone()))
        .add_service(Gated::new(mozen, guard))
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
    /// The console's feed, shared by every Watch stream.
    feed: Arc<reads::Feed>,
    /// Calls admitted and not applied yet (`--max-queue` and the other queue bounds).
    admission: crate::limits::Admission,
}

type Res<T> = Result<Response<T>, Status>;

impl Service {
    /// The leadership this agent holds, or `MZ-NOT-LEADER` naming the leader.
    fn leadership(&self) -> Result<Arc<Leadership>, Status> {
        self.agent.leadership().map_err(Status::from)
    }

    /// `MZ-NOT-LEADER` (for a member refusing what members answer: a non-member redirects).
    fn not_leader(&self) -> Status {
        match self.agent.leadership() {
            Err(e) => e.into(),
            Ok(_) => status::not_leader("leadership changing", ""),
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
    /// The byte budget of one read's reply (see [`crate::paging`]).
    fn fit(&self) -> crate::paging::Fit {
        crate::paging::Fit::new(crate::paging::reply_budget(self.agent.cfg.max_message))
    }

    fn require_sound_member(&self) -> Result<(), Status> {
        match self.agent.integrity.refusal(self.agent.me()) {
            Some(m) => Err(status::coded(m)),
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
                    status::coded(e)
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
}

/// The workers' service: the handlers of the same RPCs still on `Mozen` (for one release).
#[tonic::async_trait]
impl MozenWorker for Service {
    async fn join(&self, r: Request<pb::JoinRequest>) -> Res<pb::JoinReply> {
        work::join(self, r).await
    }

    async fn heartbeat(&self, r: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatReply> {
        work::heartbeat(self, r).await
    }

    type WorkStream = WorkStream;

    async fn work(&self, r: Request<pb::WorkRequest>) -> Res<Self::WorkStream> {
        work::work(self, r).await
    }

    async fn complete(&self, r: Request<pb::CompleteRequest>) -> Res<pb::CompleteReply> {
        work::complete(self, r).await
    }

    async fn park(&self, r: Request<pb::ParkRequest>) -> Res<pb::ParkReply> {
        work::park(self, r).await
    }
}

#[tonic::async_trait]
impl Mozen for Service {
    async fn cluster_info(&self, r: Request<pb::ClusterInfoRequest>) -> Res<pb::ClusterInfoReply> {
        reads::cluster_info(self, r).await
    }

    async fn status(&self, _r: Request<pb::StatusRequest>) -> Res<pb::RaftStatus> {
        reads::status(self, _r).await
    }

    async fn nodes(&self, _r: Request<pb::NodesRequest>) -> Res<pb::NodesReply> {
        reads::nodes(self, _r).await
    }

    async fn node_op(&self, r: Request<pb::NodeOpRequest>) -> Res<pb::NodeOpReply> {
        admin::node_op(self, r).await
    }

    async fn add_node(&self, r: Request<pb::AddNodeRequest>) -> Res<pb::NodeOpReply> {
        admin::add_node(self, r).await
    }

    async fn join(&self, r: Request<pb::JoinRequest>) -> Res<pb::JoinReply> {
        work::join(self, r).await
    }

    async fn heartbeat(&self, r: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatReply> {
        work::heartbeat(self, r).await
    }

    type WorkStream = WorkStream;

    async fn work(&self, r: Request<pb::WorkRequest>) -> Res<Self::WorkStream> {
        work::work(self, r).await
    }

    async fn complete(&self, r: Request<pb::CompleteRequest>) -> Res<pb::CompleteReply> {
        work::complete(self, r).await
    }

    async fn park(&self, r: Request<pb::ParkRequest>) -> Res<pb::ParkReply> {
        work::park(self, r).await
    }

    async fn call(&self, r: Request<pb::CallRequest>) -> Res<pb::CallReply> {
        calls::call(self, r).await
    }

    type CallsStream = CallsStream;

    async fn calls(&self, r: Request<tonic::Streaming<pb::TaggedCall>>) -> Res<Self::CallsStream> {
        calls::calls(self, r).await
    }

    async fn call_batch(&self, r: Request<pb::CallBatchRequest>) -> Res<pb::CallBatchReply> {
        calls::call_batch(self, r).await
    }

    async fn submit(&self, r: Request<pb::CallRequest>) -> Res<pb::SubmitReply> {
        calls::submit(self, r).await
    }

    async fn get(&self, r: Request<pb::GetRequest>) -> Res<pb::CallReply> {
        calls::get(self, r).await
    }

    async fn cancel(&self, r: Request<pb::CancelRequest>) -> Res<pb::CancelReply> {
        calls::cancel(self, r).await
    }

    async fn forget(&self, r: Request<pb::ForgetRequest>) -> Res<pb::ForgetReply> {
        calls::forget(self, r).await
    }

    async fn tree(&self, r: Request<pb::TreeRequest>) -> Res<pb::TreeReply> {
        reads::tree(self, r).await
    }

    async fn put_blobs(&self, r: Request<pb::PutBlobsRequest>) -> Res<pb::PutBlobsReply> {
        calls::put_blobs(self, r).await
    }

    async fn functions(&self, _r: Request<pb::FunctionsRequest>) -> Res<pb::FunctionsReply> {
        reads::functions(self, _r).await
    }

    async fn queue(&self, r: Request<pb::QueueRequest>) -> Res<pb::QueueReply> {
        reads::queue(self, r).await
    }

    async fn events(&self, r: Request<pb::EventsRequest>) -> Res<pb::EventsReply> {
        reads::events(self, r).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        reads::watch(self, r).await
    }

    async fn state_digest(&self, r: Request<pb::StateDigestRequest>) -> Res<pb::StateDigestReply> {
        reads::state_digest(self, r).await
    }
}

/// `MZ-NOT-LEADER`, naming the leader (also in the `mozen-leader-addr` header) when known.
impl From<NotLeader> for Status {
    fn from(e: NotLeader) -> Status {
        status::not_leader(&e, &e.addr)
    }
}

/// Why a proposal failed, as a gRPC status.
pub(crate) fn propose_status(agent: &Agent, e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => match agent.leadership() {
            Err(e) => e.into(),
            Ok(_) => status::not_leader(e, ""),
        },
        ProposeError::Closed => status::coded(e),
        ProposeError::Raft(m) => status(Code::Raft, m),
    }
}

/// Parses a request key from the public API (64 hex digits).
fn parse_key(s: &str) -> Result<RequestKey, Status> {
    s.parse()
        .map_err(|e| status(Code::BadArguments, format_args!("key: {e}")))
}
