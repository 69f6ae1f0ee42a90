//! The Rust client: call functions on a Mozen cluster as if it were a local pool.
//!
//! `Client::connect(["127.0.0.1:7001", ...])` talks to any agent and follows the leader
//! transparently: a follower answers `MZ-NOT-LEADER` with the leader's address in the
//! `mozen-leader-addr` header, and an unreachable agent makes the client try the next address.
//! A call in flight survives a leader change or the loss of the agent it talked to: the client
//! knows the request's key (the same content hash the cluster computes) and re-attaches to it
//! with `Get(wait)` wherever it can.

use crate::error::ClientError;
use crate::status::{is_not_leader, is_transport, leader_hint, rejected};
use crate::transport::{AuthChannel, ClientTransport};
use crate::worker::WorkerClient;
use futures::StreamExt;
use futures::future::BoxFuture;
use mozen_model::{RequestKey, TaskError, canonical_args, codes};
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use mozen_proto::mozen_worker_client::MozenWorkerClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub no_cache: bool,
    pub priority: i32,
    /// None: wait as long as it takes.
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    /// Hex key of the calling request (re-entrant calls).
    pub parent: Option<RequestKey>,
}

struct Inner {
    addrs: Vec<String>,
    /// The agent currently believed to be the leader (index into `addrs` or an address learnt
    /// from a redirect) and its channel.
    current: Mutex<Option<Current>>,
    max_message: usize,
    /// How long to keep looking for a reachable leader before giving up.
    patience: Duration,
    /// TLS and credentials of every channel.
    transport: ClientTransport,
    /// The open Calls stream to the current agent, if any (see [`Client::call_json`]).
    pipe: Mutex<Option<PipeTx>>,
    /// Counts the agents the client settled on after a search for the leader.
    epoch: AtomicU64,
    /// One search for the leader at a time ([`Client::find_leader`]): the calls that lost the
    /// leader together wait for one search instead of each hunting on its own.
    search: tokio::sync::Mutex<()>,
    /// Channels the searches probe with, by address (one connection per agent).
    probes: Mutex<HashMap<String, MozenClient<AuthChannel>>>,
}

/// The agent the client talks to: its address, and its `Mozen` and `MozenWorker` services
/// over one channel.
type Current = (String, MozenClient<AuthChannel>, WorkerClient);

/// How long one probe of an agent may take during a search for the leader.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of probes while no agent says it leads (an election runs).
const PROBE_EVERY: Duration = Duration::from_millis(25);
/// A call whose Calls stream broke this many times in a row falls back to a unary `Call`.
const PIPE_TRIES: usize = 4;

/// A call waiting for its reply on the Calls stream.
type PipeTx = mpsc::UnboundedSender<(
    pb::CallRequest,
    oneshot::Sender<Result<pb::CallReply, Status>>,
)>;

/// A cheap, cloneable handle on a cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Runs one Calls stream: tags the calls taken from `rx`, sends them, and routes each reply to
/// its caller. When the stream ends every call still waiting gets `UNAVAILABLE` (its caller
/// then re-attaches by key) and the stream is not reused.
async fn run_pipe(
    mut client: MozenClient<AuthChannel>,
    mut rx: mpsc::UnboundedReceiver<(
        pb::CallRequest,
        oneshot::Sender<Result<pb::CallReply, Status>>,
    )>,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<pb::TaggedCall>();
    let mut inbound = match client
        .calls(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(_) => return,
    };
    let mut pending: HashMap<u64, oneshot::Sender<Result<pb::CallReply, Status>>> = HashMap::new();
    let mut next = 0u64;
    let mut open = true;
    loop {
        tokio::select! {
            c = rx.recv(), if open => match c {
                Some((call, reply)) => {
                    next += 1;
                    pending.insert(next, reply);
                    if out_tx.send(pb::TaggedCall { tag: next, call: Some(call) }).is_err() {
                        break;
                    }
                }
                None => open = false,
            },
            m = inbound.message() => match m {
                Ok(Some(r)) => {
                    if let Some(reply) = pending.remove(&r.tag) {
                        let _ = reply.send(tagged_result(r));
                    }
                    if !open && pending.is_empty() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    tracing::debug!(waiting = pending.len(), "call stream ended");
    for (_, reply) in pending {
        let _ = reply.send(Err(Status::unavailable(
            mozen_model::Code::Unreachable.message("the call stream closed"),
        )));
    }
}

/// What a probe learnt of one agent during a search for the leader.
enum Probe {
    /// It leads.
    Leads,
    /// It names another agent as the leader.
    Names(String),
    /// It answered with something else than its role (refused, older agent).
    Answers(Status),
    /// It answered but knows no leader yet (an election runs).
    NoLeader,
    /// Unreachable.
    Silent(String),
}

/// A Calls stream reply as the result of an ordinary call.
fn tagged_result(r: pb::TaggedReply) -> Result<pb::CallReply, Status> {
    if r.code == 0 {
        return Ok(r.reply.unwrap_or_default());
    }
    let mut status = Status::new(Code::from_i32(r.code), r.message);
    if !r.leader_addr.is_empty()
        && let Ok(v) = r.leader_addr.parse()
    {
        status.metadata_mut().insert(pb::LEADER_ADDR_HEADER, v);
    }
    Err(status)
}

/// Splits `HOST:PORT[,HOST:PORT...]`.
pub fn split_addrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

impl Client {
    /// A client for the agents at `addrs` (HOST:PORT). Connects lazily.
    pub fn connect<I, S>(addrs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_options(
            addrs,
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(30),
        )
    }

    /// Like [`connect`](Self::connect) with a message bound and a patience for finding a leader.
    pub fn with_options<I, S>(
        addrs: I,
        max_message: usize,
        patience: Duration,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_transport(addrs, max_message, patience, ClientTransport::default())
    }

    /// Like [`with_options`](Self::with_options) over a secured transport (token, TLS): see
    /// [`ClientTransport`].
    pub fn with_transport<I, S>(
        addrs: I,
        max_message: usize,
        patience: Duration,
        transport: ClientTransport,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            return Err(ClientError::Rejected {
                code: mozen_model::Code::Usage.as_str().into(),
                message: "no agent address given".into(),
            });
        }
        Ok(Client {
            inner: Arc::new(Inner {
                addrs,
                current: Mutex::new(None),
                max_message,
                patience,
                transport,
                pipe: Mutex::new(None),
                epoch: AtomicU64::new(0),
                search: tokio::sync::Mutex::new(()),
                probes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A client of the agent at `addr` alone, with the client's transport and message bound: for
    /// a stream that must stay on one agent. Nothing follows the leader here.
    pub fn agent(&self, addr: &str) -> Result<MozenClient<AuthChannel>, Status> {
        let ch = self
            .inner
            .transport
            .channel(addr)
            .map_err(|e| Status::unavailable(format!("bad address {addr}: {e}")))?;
        Ok(MozenClient::new(ch)
            .max_decoding_message_size(self.inner.max_message)
            .max_encoding_message_size(self.inner.max_message))
    }

    /// Both services of the agent at `addr`, over one channel.
    fn link(&self, addr: String) -> Result<Current, Status> {
        let ch = self
            .inner
            .transport
            .channel(&addr)
            .map_err(|e| Status::unavailable(format!("bad address {addr}: {e}")))?;
        let max = self.inner.max_message;
        let worker = MozenWorkerClient::new(ch.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let mozen = MozenClient::new(ch)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let worker = WorkerClient::new(worker, mozen.clone());
        Ok((addr, mozen, worker))
    }

    fn current(&self, attempt: usize) -> Result<Current, Status> {
        let mut cur = self.inner.current.lock().expect("client lock");
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let addr = self.inner.addrs[attempt % self.inner.addrs.len()].clone();
        let c = self.link(addr)?;
        *cur = Some(c.clone());
        Ok(c)
    }

    fn switch(&self, to: Option<String>) {
        let mut cur = self.inner.current.lock().expect("client lock");
        *cur = match to {
            Some(addr) => self.link(addr).ok(),
            None => None,
        };
    }

    /// Forgets the current agent: the next call looks for the leader again.
    pub fn rpc_reset(&self) {
        self.switch(None);
    }

    /// The address the client talks to now.
    pub fn current_addr(&self) -> Option<String> {
        self.inner
            .current
            .lock()
            .expect("client lock")
            .as_ref()
            .map(|(a, _, _)| a.clone())
    }

    /// Runs `op` against the leader, following redirects and skipping unreachable agents until
    /// the client's patience runs out. When the agent is gone or names no reachable leader (an
    /// election runs), the call waits for the client's one search for the leader
    /// ([`find_leader`](Self::find_leader)) instead of hunting on its own.
    pub async fn rpc<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(MozenClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rpc_on(|(_, c, _)| op(c)).await
    }

    /// [`rpc`](Self::rpc) on the leader's `MozenWorker` service (agents' own worker RPCs:
    /// join, heartbeat, Work, completions, parking; see [`WorkerClient`]).
    pub async fn worker_rpc<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(WorkerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rpc_on(|(_, _, w)| op(w)).await
    }

    async fn rpc_on<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(Current) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let deadline = start + self.inner.patience;
        let mut attempt = 0usize;
        // Redirects followed since the last search: a hint can name a leader that just died.
        let mut hops = 0usize;
        loop {
            let epoch = self.epoch();
            let result = match self.current(attempt) {
                Ok(cur) => (cur.0.clone(), op(cur).await),
                Err(s) => (String::new(), Err(s)),
            };
            let (addr, result) = result;
            match result {
                Ok(r) => {
                    if attempt > 0 {
                        tracing::debug!(
                            addr,
                            attempt,
                            waited_ms = start.elapsed().as_millis() as u64,
                            "rpc reached an agent after retries"
                        );
                    }
                    return Ok(r.into_inner());
                }
                Err(status) if is_not_leader(&status) => {
                    match leader_hint(&status) {
                        Some(leader) if leader != addr && hops < 2 => {
                            hops += 1;
                            if self.current_addr().as_deref() != Some(leader.as_str()) {
                                self.switch(Some(leader));
                            }
                            continue;
                        }
                        hint => {
                            // No leader known here (election in progress), or the hints lead
                            // in a circle: search.
                            attempt += 1;
                            hops = 0;
                            self.find_leader(epoch, hint, deadline).await?;
                        }
                    }
                }
                Err(status) if is_transport(&status) => {
                    // The agent is gone: any agent of the list that answers will do (the
                    // leader if one leads); one that does not lead redirects as above.
                    tracing::debug!(addr, "rpc: {}", status.message());
                    attempt += 1;
                    hops = 0;
                    self.find_agent(epoch, None, deadline, false).await?;
                }
                Err(status) => return Err(rejected(&status)),
            }
        }
    }

    /// Settles the client on the agent that leads, after a call found its agent gone or not
    /// leading: one search at a time; a caller whose `seen` epoch is already outdated returns
    /// at once (another search found the leader meanwhile). Each round probes every known
    /// address (and any leader an agent names) with `Status` at once, so a dead address costs
    /// no more than its refused connection or [`PROBE_TIMEOUT`], and is repeated every
    /// [`PROBE_EVERY`] while no agent leads, until `deadline`.
    async fn find_leader(
        &self,
        seen: u64,
        hint: Option<String>,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        self.find_agent(seen, hint, deadline, true).await
    }

    /// [`find_leader`](Self::find_leader), or with `leader_only` false, the leader if one
    /// leads, else the first agent of the client's own list that answers.
    async fn find_agent(
        &self,
        seen: u64,
        hint: Option<String>,
        deadline: Instant,
        leader_only: bool,
    ) -> Result<(), ClientError> {
        let _search = self.inner.search.lock().await;
        if self.epoch() != seen {
            return Ok(());
        }
        let started = Instant::now();
        let mut hints: Vec<String> = hint.into_iter().collect();
        let mut last = String::from("no agent answered");
        loop {
            let mut candidates = hints.clone();
            for a in &self.inner.addrs {
                if !candidates.contains(a) {
                    candidates.push(a.clone());
                }
            }
            let probes = candidates.iter().map(|addr| self.probe(addr));
            let answers = futures::future::join_all(probes).await;
            let mut answering = None;
            let mut reachable = None;
            for (addr, answer) in candidates.iter().zip(answers) {
                if !matches!(answer, Probe::Silent(_)) && self.inner.addrs.contains(addr) {
                    reachable.get_or_insert(addr.clone());
                }
                match answer {
                    Probe::Leads => {
                        tracing::debug!(
                            addr,
                            searched_ms = started.elapsed().as_millis() as u64,
                            "leader found"
                        );
                        self.settle_on(addr);
                        return Ok(());
                    }
                    Probe::Names(leader) => {
                        if !hints.contains(&leader) {
                            hints.insert(0, leader);
                        }
                    }
                    Probe::Answers(status) => {
                        last = format!("{addr}: {}", status.message());
                        answering.get_or_insert(addr.clone());
                    }
                    Probe::NoLeader => last = format!("{addr}: no leader yet"),
                    Probe::Silent(why) => last = format!("{addr}: {why}"),
                }
            }
            if !leader_only && let Some(addr) = reachable {
                self.settle_on(&addr);
                return Ok(());
            }
            // An agent that answers but does not say whether it leads (e.g. an older one, or
            // one that refuses `Status`): let the operation itself meet its answer.
            if let Some(addr) = answering {
                self.settle_on(&addr);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unreachable {
                    addrs: self.inner.addrs.join(","),
                    last,
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Asks the agent at `addr` whether it leads.
    async fn probe(&self, addr: &str) -> Probe {
        let client = {
            let mut probes = self.inner.probes.lock().expect("probe lock");
            match probes.get(addr) {
                Some(c) => c.clone(),
                None => match self.agent(addr) {
                    Ok(c) => {
                        probes.insert(addr.to_string(), c.clone());
                        c
                    }
                    Err(s) => return Probe::Silent(s.message().to_string()),
                },
            }
        };
        let mut client = client;
        match tokio::time::timeout(PROBE_TIMEOUT, client.status(pb::StatusRequest {})).await {
            Err(_) => Probe::Silent(format!("no answer within {PROBE_TIMEOUT:?}")),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.leader_id == Some(r.node_id) {
                    Probe::Leads
                } else if !r.leader_addr.is_empty() && r.leader_addr != addr {
                    Probe::Names(r.leader_addr)
                } else {
                    Probe::NoLeader
                }
            }
            Ok(Err(s)) if is_not_leader(&s) => match leader_hint(&s) {
                Some(l) if l != addr => Probe::Names(l),
                _ => Probe::NoLeader,
            },
            Ok(Err(s)) if is_transport(&s) => Probe::Silent(s.message().to_string()),
            Ok(Err(s)) => Probe::Answers(s),
        }
    }

    /// Makes `addr` the current agent (a fresh channel, and no Calls stream yet) and counts a
    /// new epoch.
    fn settle_on(&self, addr: &str) {
        self.switch(Some(addr.to_string()));
        *self.inner.pipe.lock().expect("pipe lock") = None;
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// Asks the leader to carry out `op` on node `id` (`id` is not used by the autoscaler's
    /// switch); what it did, in words.
    pub async fn node_op(
        &self,
        id: mozen_model::NodeId,
        op: mozen_model::NodeOp,
    ) -> Result<String, ClientError> {
        let req = pb::NodeOpRequest {
            node_id: id,
            op: op.as_str().into(),
        };
        Ok(self
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.node_op(r).await }
            })
            .await?
            .message)
    }

    /// Every function the cluster knows, by name, read page by page.
    pub async fn functions(&self) -> Result<Vec<pb::FunctionStats>, ClientError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = pb::FunctionsRequest {
                limit: 0,
                page_token,
            };
            let page = self
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.functions(r).await }
                })
                .await?;
            all.extend(page.functions);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// The newest `limit` events (0: 100), oldest first, read page by page.
    pub async fn events(&self, limit: usize) -> Result<Vec<pb::Event>, ClientError> {
        let want = if limit == 0 { 100 } else { limit };
        let mut pages: Vec<Vec<pb::Event>> = Vec::new();
        let mut got = 0;
        let mut page_token = String::new();
        while got < want {
            let req = pb::EventsRequest {
                limit: (want - got).min(u32::MAX as usize) as u32,
                page_token,
            };
            let page = self
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.events(r).await }
                })
                .await?;
            got += page.events.len();
            pages.push(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        // Each page is older than the one before it.
        Ok(pages.into_iter().rev().flatten().collect())
    }

    /// Calls `function(args)` and decodes its result.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: A,
    ) -> Result<R, ClientError> {
        let v = serde_json::to_value(args)
            .map_err(|e| ClientError::Codec(format!("{function}: {e}")))?;
        let reply = self.call_json(function, v, &CallOptions::default()).await?;
        decode_result(function, &reply)
    }

    /// Calls with JSON arguments and options; returns the full reply (key, cached, node...).
    pub async fn call_json(
        &self,
        function: &str,
        args: Value,
        opts: &CallOptions,
    ) -> Result<pb::CallReply, ClientError> {
        let key = RequestKey::of(function, &canonical_args(&args));
        let req = call_request(function, &args, opts);
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let first = self.first_reply(&req).await;
        let reply = match first {
            Ok(r) => r,
            // The agent we talked to died mid-call: the request lives on in the cluster.
            Err(ClientError::Unreachable { .. }) => pb::CallReply {
                key: key.to_hex(),
                state: "unknown".into(),
                ..Default::default()
            },
            Err(e) => return Err(e),
        };
        self.settle(key, reply, deadline, opts.timeout).await
    }

    /// The first reply to a call: sent on the Calls stream to the leader; when the stream
    /// breaks (the agent died) or reached a follower, the call waits for the client's search
    /// for the leader and is sent again on the stream to the new one, at once. Resending is
    /// safe: the same call has the same key, and the cluster joins it to the request it
    /// already knows. With no stream to be had (no agent known yet, or it kept breaking) the
    /// ordinary unary call finds the leader.
    async fn first_reply(&self, req: &pb::CallRequest) -> Result<pb::CallReply, ClientError> {
        let deadline = Instant::now() + self.inner.patience;
        for _ in 0..PIPE_TRIES {
            let epoch = self.epoch();
            match self.call_piped(req).await {
                Some(Ok(r)) => return Ok(r),
                Some(Err(status)) if is_not_leader(&status) || is_transport(&status) => {
                    self.find_leader(epoch, leader_hint(&status), deadline)
                        .await?;
                }
                Some(Err(status)) => return Err(rejected(&status)),
                None => break,
            }
        }
        self.rpc(|mut c| {
            let r = req.clone();
            async move { c.call(r).await }
        })
        .await
    }

    /// Sends `req` on the Calls stream to the current agent, opening the stream if needed.
    /// `None` when there is no current agent yet or the stream went away before answering.
    async fn call_piped(&self, req: &pb::CallRequest) -> Option<Result<pb::CallReply, Status>> {
        let tx = self.pipe()?;
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send((req.clone(), reply_tx)).is_err() {
            self.drop_pipe(&tx);
            return None;
        }
        let result = reply_rx.await.ok();
        if result.as_ref().is_none_or(|r| {
            r.as_ref()
                .is_err_and(|s| is_not_leader(s) || is_transport(s))
        }) {
            self.drop_pipe(&tx);
        }
        result
    }

    /// The Calls stream to the current agent, opened on first use.
    fn pipe(&self) -> Option<PipeTx> {
        let mut pipe = self.inner.pipe.lock().expect("pipe lock");
        if let Some(tx) = pipe.as_ref().filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let (_, client, _) = self.inner.current.lock().expect("client lock").clone()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_pipe(client, rx));
        *pipe = Some(tx.clone());
        Some(tx)
    }

    /// Forgets the Calls stream `tx` feeds, unless another one replaced it already.
    fn drop_pipe(&self, tx: &PipeTx) {
        let mut pipe = self.inner.pipe.lock().expect("pipe lock");
        if pipe.as_ref().is_some_and(|p| p.same_channel(tx)) {
            *pipe = None;
        }
    }

    /// Follows a request until it finishes (re-attaching by key after leader changes).
    async fn settle(
        &self,
        key: RequestKey,
        mut reply: pb::CallReply,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<pb::CallReply, ClientError> {
        loop {
            match reply.state.as_str() {
                "done" => return Ok(reply),
                "failed" | "cancelled" => {
                    let e = reply
                        .error
                        .as_ref()
                        .map(TaskError::from)
                        .unwrap_or_else(|| TaskError::new(codes::FUNCTION_FAILED, "failed"));
                    return Err(ClientError::Task(e));
                }
                _ => {}
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => l,
                    _ => {
                        return Err(ClientError::Timeout {
                            key: key.to_hex(),
                            after: timeout.unwrap_or_default(),
                        });
                    }
                },
                None => Duration::from_secs(30),
            };
            let get = pb::GetRequest {
                key: key.to_hex(),
                wait: true,
                timeout_ms: left.as_millis().min(30_000) as u64,
            };
            reply = match self
                .rpc(|mut c| {
                    let g = get.clone();
                    async move { c.get(g).await }
                })
                .await
            {
                Ok(r) => r,
                Err(ClientError::Rejected { code, .. })
                    if code == mozen_model::Code::UnknownRequest =>
                {
                    // Not yet replicated where we asked (e.g. a fresh leader): ask again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    pb::CallReply {
                        key: key.to_hex(),
                        state: "unknown".into(),
                        ..Default::default()
                    }
                }
                Err(e) => return Err(e),
            };
        }
    }

    /// Submits without waiting; the handle is a future of the result.
    pub fn submit<A: Serialize, R: DeserializeOwned + Send + 'static>(
        &self,
        function: &str,
        args: A,
    ) -> Handle<R> {
        let client = self.clone();
        let function = function.to_string();
        let args = serde_json::to_value(args);
        let fut: BoxFuture<'static, Result<R, ClientError>> = Box::pin(async move {
            let args = args.map_err(|e| ClientError::Codec(format!("{function}: {e}")))?;
            let reply = client
                .call_json(&function, args, &CallOptions::default())
                .await?;
            decode_result(&function, &reply)
        });
        Handle {
            fut: tokio::spawn(fut),
        }
    }

    /// Calls `function` on every item with at most `concurrency` calls in flight; results in
    /// input order.
    pub async fn map<A, R, I>(
        &self,
        function: &str,
        items: I,
        concurrency: usize,
    ) -> Vec<Result<R, ClientError>>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let calls = items.into_iter().map(|a| self.call::<A, R>(function, a));
        futures::stream::iter(calls)
            .buffered(concurrency.max(1))
            .collect()
            .await
    }

    /// Calls on the cluster; if no agent can be reached, runs `local` instead.
    pub async fn call_or_local<A, R, F, Fut>(
        &self,
        function: &str,
        args: A,
        local: F,
    ) -> Result<R, ClientError>
    where
        A: Serialize + Clone,
        R: DeserializeOwned,
        F: FnOnce(A) -> Fut,
        Fut: Future<Output = R>,
    {
        match self.call(function, args.clone()).await {
            Err(ClientError::Unreachable { .. }) => Ok(local(args).await),
            other => other,
        }
    }
}

/// Builds the wire request of a call.
pub fn call_request(function: &str, args: &Value, opts: &CallOptions) -> pb::CallRequest {
    pb::CallRequest {
        function: function.to_string(),
        args_json: args.to_string(),
        parent: opts.parent.map(|p| p.to_hex()).unwrap_or_default(),
        no_cache: opts.no_cache,
        priority: opts.priority,
        timeout_ms: opts.timeout.map_or(0, |t| t.as_millis() as u64),
        retries: opts.retries,
        max_attempts: opts.max_attempts,
        backoff_ms: opts.backoff_ms,
    }
}

fn decode_result<R: DeserializeOwned>(
    function: &str,
    reply: &pb::CallReply,
) -> Result<R, ClientError> {
    let text = reply.result_json.as_deref().unwrap_or("null");
    serde_json::from_str(text)
        .map_err(|e| ClientError::Codec(format!("{function}: result {text} does not decode: {e}")))
}

/// A submitted request; await it for the result.
pub struct Handle<R> {
    fut: tokio::task::JoinHandle<Result<R, ClientError>>,
}

impl<R: Send + 'static> IntoFuture for Handle<R> {
    type Output = Result<R, ClientError>;
    type IntoFuture = BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.fut.await.unwrap_or_else(|e| {
                Err(ClientError::Rejected {
                    code: mozen_model::Code::Internal.as_str().into(),
                    message: e.to_string(),
                })
            })
        })
    }
}
