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
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
        if let Some(f) = &self.faults
            && f.blocks(self.target)
        {
            let e = std::io::Error::other(format!(
                "{what} to node {}: cut off by the fault control",
                self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad peer address {}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let mut request = Request::new(payload);
        request.set_timeout(opt.hard_ttl());
        let reply = match what {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = std::io::Error::other(format!(
                    "{what} to node {} at {}: {status}",
                    self.target, self.addr
                ));
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let res: Result<Resp, RaftError<u64, E>> = decode(what, &reply)
            .map_err(|m| RPCError::Network(NetworkError::new(&std::io::Error::other(m))))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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
            return self.send("append_entries", payload, &option).await;
        }
        self.rpc("append_entries", &rpc, &option).await
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
            c.last = Some((l, term, Instant::now()));
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

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("reply does not encode: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("append_entries", req.get_ref()).map_err(Status::invalid_argument)?;
        let leader = rpc
            .vote
            .leader_id()
            .voted_for()
            .map(|l| (l, rpc.vote.leader_id().get_term()));
        let handling = Handling::start(&self.contact, leader);
        let r = self.raft.append_entries(rpc).await;
        drop(handling);
        let mut c = self.contact.lock().expect("contact");
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

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> =
            decode("vote", req.get_ref()).map_err(Status::invalid_argument)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode("install_snapshot", req.get_ref()).map_err(Status::invalid_argument)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
