//! The peer-only Raft transport: openraft RPCs as postcard bytes over the gRPC `Raft` service.
//!
//! Failures are classified for openraft: a transport failure is `Unreachable` (openraft backs
//! off instead of retrying hot), a `RaftError` from the peer is `RemoteError`, and a payload
//! that does not decode is a `Network` error naming the RPC.
//!
//! Channels come from [`ClientTransport`] (TLS, token, sender id). A peer blocked by the
//! test-only fault table ([`crate::faults`]) is `Unreachable` without any I/O.

use crate::faults::Faults;
use crate::security::{AuthChannel, ClientTransport};
use futures::Stream;
use mozen_proto::RaftPayload;
use mozen_proto::raft_client::RaftClient;
use mozen_proto::raft_server;
use mozen_store::{RaftNode, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Envelope version of [`RaftPayload::data`].
pub const PAYLOAD_VERSION: u32 = 1;

fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, postcard::Error> {
    Ok(RaftPayload {
        version: PAYLOAD_VERSION,
        data: postcard::to_allocvec(v)?,
    })
}

fn decode<T: DeserializeOwned>(what: &str, p: &RaftPayload) -> Result<T, String> {
    if p.version != PAYLOAD_VERSION {
        return Err(format!(
            "{what}: payload version {} but this agent speaks {PAYLOAD_VERSION}",
            p.version
        ));
    }
    postcard::from_bytes(&p.data).map_err(|e| format!("{what}: payload does not decode: {e}"))
}

/// About the most bytes of entries in one AppendEntries of several entries.
const APPEND_BYTES: usize = 2 * crate::proposer::MAX_ENTRY_BYTES;

/// Creates one [`PeerClient`] per target.
#[derive(Clone)]
pub struct Network {
    pub max_message: usize,
    pub transport: ClientTransport,
    /// The test-only fault table, when `--fault-file` is given.
    pub faults: Option<Arc<Faults>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> Self::Network {
        let client = self.transport.channel(&node.addr).ok().map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(self.max_message)
                .max_encoding_message_size(self.max_message)
        });
        PeerClient {
            target,
            addr: node.addr.clone(),
            client,
            faults: self.faults.clone(),
            max_message: self.max_message,
            lane: None,
            lane_refused: false,
        }
    }
}

/// The Raft RPC client for one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    client: Option<RaftClient<AuthChannel>>,
    faults: Option<Arc<Faults>>,
    /// Largest message the peer accepts.
    max_message: usize,
    /// The open `AppendStream` to the peer, if any. Taken out while a request is on it, so a
    /// call dropped midway (openraft's timeout) drops the stream with it: its next answer
    /// would otherwise be read as the answer to the next request.
    lane: Option<AppendLane>,
    /// The peer answered `AppendStream` with UNIMPLEMENTED (an older agent): unary from now on.
    lane_refused: bool,
}

/// One `AppendStream`: requests go down `tx`, their answers come back on `rx` in order.
struct AppendLane {
    tx: tokio::sync::mpsc::Sender<RaftPayload>,
    rx: tonic::Streaming<RaftPayload>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, RaftNode, RaftError<u64, E>>;

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &mut self,
        what: &'static str,
        req: &Req,
        opt: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(what, payload, opt).await
    }

    /// Sends an encoded RPC and decodes its reply.
    async fn send<Resp, E>(
        &mut self,
        what: &'static str,
        payload: RaftPayload,
        opt: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.reachable(what)?;
        let mut request = Request::new(payload);
        request.set_timeout(opt.hard_ttl());
        let reply = match what {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        match reply {
            Ok(r) => self.answer(what, &r.into_inner()),
            Err(status) => Err(self.failed(what, &status)),
        }
    }

    /// The gRPC client, unless the fault control cuts the peer off or its address is bad.
    // The error type is what openraft's `RaftNetwork` methods return.
    #[allow(clippy::result_large_err)]
    fn reachable<E>(&mut self, what: &str) -> Result<&mut RaftClient<AuthChannel>, RpcErr<E>>
    where
        E: std::error::Error,
    {
        if let Some(f) = &self.faults
            && f.blocks(self.target)
        {
            let e = std::io::Error::other(format!(
                "{what} to node {}: cut off by the fault control",
                self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let addr = &self.addr;
        self.client.as_mut().ok_or_else(|| {
            let e = std::io::Error::other(format!("bad peer address {addr}"));
            RPCError::Unreachable(Unreachable::new(&e))
        })
    }

    /// Decodes a peer's answer: its Raft result, or a `Network` error if it does not decode.
    // The error type is what openraft's `RaftNetwork` methods return.
    #[allow(clippy::result_large_err)]
    fn answer<Resp, E>(&self, what: &str, reply: &RaftPayload) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let res: Result<Resp, RaftError<u64, E>> = decode(what, reply)
            .map_err(|m| RPCError::Network(NetworkError::new(&std::io::Error::other(m))))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// A gRPC failure as openraft wants it: `Unreachable` (it backs off) when the peer could
    /// not be reached or did not answer in time, else `Network`.
    fn failed<E: std::error::Error>(&self, what: &str, status: &Status) -> RpcErr<E> {
        let e = std::io::Error::other(format!(
            "{what} to node {} at {}: {status}",
            self.target, self.addr
        ));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    /// Sends an encoded AppendEntries on the peer's `AppendStream`, opening one if none is
    /// open, and reads its answer. A stream that fails or times out is dropped; the next
    /// request opens a new one.
    async fn append(
        &mut self,
        payload: RaftPayload,
        opt: &RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        const WHAT: &str = "append_entries";
        if self.lane_refused {
            return self.send(WHAT, payload, opt).await;
        }
        let lane = self.lane.take();
        let client = self.reachable(WHAT)?;
        // Kept for the unary fallback, which only the opening of a stream can call for.
        let spare = lane.is_none().then(|| payload.clone());
        let exchange = async move {
            let mut lane = match lane {
                Some(lane) => {
                    // Cannot fail while the stream is open: one request in flight at a time.
                    if lane.tx.send(payload).await.is_err() {
                        return (None, Err(Status::unavailable("the stream was closed")));
                    }
                    lane
                }
                None => {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    // Goes with the stream's opening.
                    let _ = tx.try_send(payload);
                    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                    match client.append_stream(Request::new(requests)).await {
                        Ok(r) => AppendLane {
                            tx,
                            rx: r.into_inner(),
                        },
                        Err(status) => return (None, Err(status)),
                    }
                }
            };
            match lane.rx.message().await {
                Ok(Some(reply)) => (Some(lane), Ok(reply)),
                Ok(None) => (None, Err(Status::unavailable("the stream ended"))),
                Err(status) => (None, Err(status)),
            }
        };
        let (lane, reply) = match tokio::time::timeout(opt.hard_ttl(), exchange).await {
            Ok(r) => r,
            Err(_) => (None, Err(Status::deadline_exceeded("no answer in time"))),
        };
        self.lane = lane;
        match reply {
            Ok(reply) => self.answer(WHAT, &reply),
            Err(status) if status.code() == tonic::Code::Unimplemented && spare.is_some() => {
                tracing::info!(
                    peer = self.target,
                    "peer has no AppendStream: unary from now on"
                );
                self.lane_refused = true;
                let payload = spare.expect("checked above");
                self.send(WHAT, payload, opt).await
            }
            Err(status) => Err(self.failed(WHAT, &status)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        // Entries are sent many at a time; large ones (shipped data, big results) could
        // together pass the peer's message limit, or take longer than the heartbeat interval
        // openraft allows an AppendEntries. Openraft then sends fewer per RPC.
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let room = self
                .max_message
                .saturating_sub(64 << 10)
                .clamp(1, APPEND_BYTES) as u64;
            let size = payload.data.len() as u64;
            if size > room {
                let fit = (n * room / size).clamp(1, n - 1);
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit),
                ));
            }
            return self.append(payload, &option).await;
        }
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.append(payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.rpc("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.rpc("vote", &rpc, &option).await
    }
}

/// What this agent last heard from a leader through `AppendEntries` (entries or heartbeat);
/// read by [`crate::failover::watch`].
#[derive(Debug, Default)]
pub struct Contact {
    /// The leader (node id, term) and when its last `AppendEntries` arrived or was answered.
    pub last: Option<(u64, u64, Instant)>,
    /// `AppendEntries` being handled now: while one is (a large entry being written), the
    /// leader is alive whatever the clock says.
    pub handling: usize,
    /// The longest gap between two `AppendEntries` of the same leader and term seen lately
    /// (see [`Contact::recent_gap`]), and when it was seen.
    longest_gap: Option<(Duration, Instant)>,
}

/// How long a gap between a leader's `AppendEntries` counts as recent.
pub const GAP_MEMORY: Duration = Duration::from_secs(30);

impl Contact {
    /// Notes an `AppendEntries` from `leader` in `term`, heard `now`.
    fn heard(&mut self, leader: u64, term: u64, now: Instant) {
        if let Some((l, t, prev)) = self.last
            && (l, t) == (leader, term)
        {
            let gap = now.saturating_duration_since(prev);
            let longer = self
                .longest_gap
                .is_none_or(|(g, at)| gap >= g || now.saturating_duration_since(at) > GAP_MEMORY);
            if longer {
                self.longest_gap = Some((gap, now));
            }
        }
        self.last = Some((leader, term, now));
    }

    /// The longest gap between two `AppendEntries` of the current leader within the last
    /// [`GAP_MEMORY`]: how late this leader's heartbeats arrive when the machines are busy.
    pub fn recent_gap(&self, now: Instant) -> Duration {
        match self.longest_gap {
            Some((g, at)) if now.saturating_duration_since(at) <= GAP_MEMORY => g,
            _ => Duration::ZERO,
        }
    }
}

pub type LeaderContact = Arc<Mutex<Contact>>;

/// One `AppendEntries` counted in [`Contact::handling`] for as long as it lives. A guard, so
/// that the count also goes down when the handler is dropped midway: the server drops it when
/// the leader's connection breaks, which is how a leader's death looks while it was sending
/// (the count stuck above zero kept the follower from ever standing early).
struct Handling<'a>(&'a LeaderContact);

impl<'a> Handling<'a> {
    /// Counts one more request from `leader` (node id, term), heard from now.
    fn start(contact: &'a LeaderContact, leader: Option<(u64, u64)>) -> Self {
        let mut c = contact.lock().expect("contact");
        c.handling += 1;
        if let Some((l, term)) = leader {
            c.heard(l, term, Instant::now());
        }
        Handling(contact)
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("contact").handling -= 1;
    }
}

/// Server side of the peer transport: hands each RPC to the local Raft.
pub struct RaftService {
    pub raft: mozen_store::Raft,
    pub contact: LeaderContact,
}

fn reply<T: Serialize>(v: &T) -> Result<RaftPayload, Status> {
    encode(v).map_err(|e| Status::internal(format!("reply does not encode: {e}")))
}

/// Hands one encoded AppendEntries to the local Raft and encodes its answer; notes the
/// leader's contact on the way.
async fn handle_append(
    raft: &mozen_store::Raft,
    contact: &LeaderContact,
    req: &RaftPayload,
) -> Result<RaftPayload, Status> {
    let rpc: AppendEntriesRequest<TypeConfig> =
        decode("append_entries", req).map_err(Status::invalid_argument)?;
    let leader = rpc
        .vote
        .leader_id()
        .voted_for()
        .map(|l| (l, rpc.vote.leader_id().get_term()));
    let handling = Handling::start(contact, leader);
    let r = raft.append_entries(rpc).await;
    drop(handling);
    let mut c = contact.lock().expect("contact");
    // Anything but a refusal of its term means the leader is alive and this agent's Raft
    // took it as its leader (and renewed the leader's lease).
    if let (Some((l, term)), Ok(resp)) = (leader, &r)
        && !matches!(resp, AppendEntriesResponse::HigherVote(_))
    {
        c.last = Some((l, term, Instant::now()));
    }
    drop(c);
    reply(&r)
}

type AppendStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        handle_append(&self.raft, &self.contact, req.get_ref())
            .await
            .map(Response::new)
    }

    type AppendStreamStream = AppendStream;

    /// Answers each request of the stream in turn, in the task that writes the answers (no
    /// task of its own). A request that does not decode ends the stream with its error.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<AppendStream>, Status> {
        let start = (
            req.into_inner(),
            self.raft.clone(),
            self.contact.clone(),
            false,
        );
        let answers =
            futures::stream::unfold(start, |(mut inbound, raft, contact, done)| async move {
                if done {
                    return None;
                }
                let answer = match inbound.message().await {
                    Ok(Some(m)) => handle_append(&raft, &contact, &m).await,
                    Ok(None) => return None,
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                Some((answer, (inbound, raft, contact, failed)))
            });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> =
            decode("vote", req.get_ref()).map_err(Status::invalid_argument)?;
        reply(&self.raft.vote(rpc).await).map(Response::new)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode("install_snapshot", req.get_ref()).map_err(Status::invalid_argument)?;
        reply(&self.raft.install_snapshot(rpc).await).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_recent_gap_of_one_leader_is_remembered_for_a_while() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Contact::default();
        c.heard(1, 5, t0);
        c.heard(1, 5, t0 + ms(100));
        c.heard(1, 5, t0 + ms(500));
        c.heard(1, 5, t0 + ms(600));
        assert_eq!(
            c.recent_gap(t0 + ms(600)),
            ms(400),
            "the longest, not the last"
        );
        // Another leader or term starts afresh: its first message is no gap.
        c.heard(2, 6, t0 + ms(5_000));
        assert_eq!(c.recent_gap(t0 + ms(5_000)), ms(400));
        assert_eq!(
            c.recent_gap(t0 + ms(500) + GAP_MEMORY + ms(1)),
            Duration::ZERO
        );
        // Heartbeats on time for longer than the memory: the long gap is forgotten, and the
        // longest of the recent ones (a heartbeat interval) takes its place.
        let mut at = t0 + ms(5_000);
        while at < t0 + ms(5_000) + GAP_MEMORY + ms(500) {
            at += ms(100);
            c.heard(2, 6, at);
        }
        assert_eq!(c.recent_gap(at), ms(100));
    }
    use proptest::prelude::*;

    #[tokio::test]
    async fn an_append_dropped_midway_is_no_longer_counted_as_handled() {
        let contact = LeaderContact::default();
        // A handler that never finishes, dropped as the server drops it when the leader's
        // connection breaks.
        let handler = async {
            let _handling = Handling::start(&contact, Some((1, 3)));
            std::future::pending::<()>().await;
        };
        let mut handler = Box::pin(handler);
        assert!(futures::poll!(handler.as_mut()).is_pending());
        assert_eq!(contact.lock().unwrap().handling, 1);
        assert_eq!(
            contact.lock().unwrap().last.map(|(l, t, _)| (l, t)),
            Some((1, 3))
        );
        drop(handler);
        assert_eq!(contact.lock().unwrap().handling, 0);
    }

    /// A peer whose every AppendEntries answer names its request (`PartialSuccess` of the
    /// request's `prev_log_id`). Requests with `prev_log_id` index `slow` are answered only once
    /// `release` is notified;
    /// without `stream` it has no `AppendStream`, as an older agent.
    #[derive(Clone)]
    struct Peer {
        stream: bool,
        slow: Option<u64>,
        release: Arc<tokio::sync::Notify>,
        opened: Arc<std::sync::atomic::AtomicUsize>,
    }

    type Answer = Result<AppendEntriesResponse<u64>, RaftError<u64>>;

    async fn answer_of(
        req: &RaftPayload,
        slow: Option<u64>,
        release: &tokio::sync::Notify,
    ) -> Result<RaftPayload, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("append_entries", req).map_err(Status::invalid_argument)?;
        if rpc.prev_log_id.map(|l| l.index) == slow {
            release.notified().await;
        }
        let a: Answer = Ok(AppendEntriesResponse::PartialSuccess(rpc.prev_log_id));
        Ok(encode(&a).unwrap())
    }

    #[tonic::async_trait]
    impl raft_server::Raft for Peer {
        async fn append_entries(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            answer_of(req.get_ref(), self.slow, &self.release)
                .await
                .map(Response::new)
        }

        type AppendStreamStream = AppendStream;

        async fn append_stream(
            &self,
            req: Request<tonic::Streaming<RaftPayload>>,
        ) -> Result<Response<AppendStream>, Status> {
            if !self.stream {
                return Err(Status::unimplemented("no AppendStream here"));
            }
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let slow = self.slow;
            let release = Arc::clone(&self.release);
            let answers = futures::stream::unfold(req.into_inner(), move |mut inbound| {
                let release = Arc::clone(&release);
                async move {
                    let m = inbound.message().await.ok()??;
                    Some((answer_of(&m, slow, &release).await, inbound))
                }
            });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("vote"))
        }

        async fn install_snapshot(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
    }

    /// Serves `peer` on an ephemeral port; returns a client of it as the Raft core gets one.
    async fn client_of(peer: Peer) -> PeerClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(raft_server::RaftServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut net = Network {
            max_message: 4 << 20,
            transport: ClientTransport::default(),
            faults: None,
        };
        net.new_client(2, &RaftNode { addr }).await
    }

    fn append(prev: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                prev,
            )),
            entries: vec![],
            leader_commit: None,
        }
    }

    fn named(prev: u64) -> AppendEntriesResponse<u64> {
        AppendEntriesResponse::PartialSuccess(append(prev).prev_log_id)
    }

    fn patient() -> RPCOption {
        RPCOption::new(std::time::Duration::from_secs(10))
    }

    #[tokio::test]
    async fn appends_share_one_stream_and_each_gets_its_own_answer() {
        let opened = Arc::default();
        let peer = Peer {
            stream: true,
            slow: None,
            release: Arc::default(),
            opened: Arc::clone(&opened),
        };
        let mut c = client_of(peer).await;
        for prev in 1..=5 {
            let a = c.append_entries(append(prev), patient()).await.unwrap();
            assert_eq!(a, named(prev));
        }
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A request that times out leaves its answer on the way: the stream is dropped with it,
    /// so that answer is never read as the next request's.
    #[tokio::test]
    async fn an_answer_too_late_is_not_taken_for_the_next_one() {
        let opened = Arc::default();
        let release = Arc::new(tokio::sync::Notify::new());
        let peer = Peer {
            stream: true,
            slow: Some(1),
            release: Arc::clone(&release),
            opened: Arc::clone(&opened),
        };
        let mut c = client_of(peer).await;
        assert_eq!(
            c.append_entries(append(0), patient()).await.unwrap(),
            named(0)
        );
        let hasty = RPCOption::new(std::time::Duration::from_millis(50));
        let e = c.append_entries(append(1), hasty).await.unwrap_err();
        assert!(matches!(e, RPCError::Unreachable(_)), "{e}");
        // The late answer goes out now, on the stream the timed-out request left.
        release.notify_one();
        assert_eq!(
            c.append_entries(append(2), patient()).await.unwrap(),
            named(2)
        );
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_is_sent_unary_appends() {
        let peer = Peer {
            stream: false,
            slow: None,
            release: Arc::default(),
            opened: Arc::default(),
        };
        let mut c = client_of(peer).await;
        for prev in 1..=3 {
            assert_eq!(
                c.append_entries(append(prev), patient()).await.unwrap(),
                named(prev)
            );
        }
        assert!(c.lane_refused);
    }

    /// Decodes `data` as each Raft RPC payload and each reply; an error names the RPC.
    fn check_bad_input(version: u32, data: Vec<u8>) {
        let p = RaftPayload { version, data };
        let named = |what: &str, r: Result<(), String>| {
            if let Err(e) = r {
                assert!(e.starts_with(&format!("{what}: payload ")), "{e}");
            }
        };
        named(
            "append_entries",
            decode::<AppendEntriesRequest<TypeConfig>>("append_entries", &p).map(drop),
        );
        named("vote", decode::<VoteRequest<u64>>("vote", &p).map(drop));
        named(
            "install_snapshot",
            decode::<InstallSnapshotRequest<TypeConfig>>("install_snapshot", &p).map(drop),
        );
    }

    #[test]
    fn a_payload_of_another_version_is_refused_by_name() {
        let e = decode::<VoteRequest<u64>>(
            "vote",
            &RaftPayload {
                version: 9,
                data: vec![],
            },
        )
        .unwrap_err();
        assert_eq!(e, "vote: payload version 9 but this agent speaks 1");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn bad_input_raft_payloads_give_clear_errors(
            version in prop_oneof![Just(PAYLOAD_VERSION), any::<u32>()],
            data in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            check_bad_input(version, data);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200_000))]

        #[test]
        #[ignore = "long: run with --run-ignored"]
        fn bad_input_raft_payloads_give_clear_errors_long(
            data in prop::collection::vec(any::<u8>(), 0..4096),
        ) {
            check_bad_input(PAYLOAD_VERSION, data);
        }
    }
}
