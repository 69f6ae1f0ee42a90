//! The background side: the console's feed of the cluster.
//!
//! [`run`] owns it. It keeps one `Watch` stream open to the leader and forwards every
//! `ClusterUpdate` to the UI as an [`Action::Update`]; when a follower answers
//! `MZ-NOT-LEADER` it follows the `mozen-leader-addr` header; when the stream breaks or goes
//! quiet it reports [`Conn::Lost`] and reconnects with exponential backoff, trying every seed
//! address in turn. Effects from the UI run concurrently, each in its own task, through
//! [`Cluster::rpc`] and come back as actions.
//!
//! The connection itself is mozen-client's: [`Cluster`] wraps a [`Client`], which follows the
//! leader for the effects and carries the token and TLS; its refusal classification
//! ([`leader_hint`], [`is_not_leader`], [`describe`]) also drives the `Watch` loop. What stays
//! here is the console's own: the stream, its reconnection pacing, and the status lines.

use crate::app::{Action, Conn, Effect, call_label};
use mozen_client::{AuthChannel, Client, ClientTransport, describe, is_not_leader, leader_hint};
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

/// A client of one agent whose requests carry the console's token.
pub type AgentClient = MozenClient<AuthChannel>;

/// The longest wait for a unary RPC or for a `Watch` stream to start; also how long an effect
/// may look for the leader before it reports the cluster unreachable.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream with no update for this long is treated as broken (the agent sends every 500 ms).
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How long a retried request may run before the console stops waiting for its outcome.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(600);
/// The pause between attempts in the first round over the seeds after a failure.
const FIRST_ROUND_DELAY: Duration = Duration::from_millis(100);
/// The pause between attempts while an election is under way (agents answer, no leader).
const ELECTION_POLL: Duration = Duration::from_millis(300);
/// Leader redirects followed in a row before backing off (guards against a ping-pong while an
/// election settles).
const MAX_HOPS: u32 = 4;

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// The delay before the next attempt; each call doubles the one after, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// An agent that could not be reached: a connection refused or broken. An agent that answers
/// with its own `MZ-` refusal is up, and is not skipped.
fn unreachable(s: &Status) -> bool {
    mozen_client::is_transport(s) && !s.message().starts_with("MZ-")
}

/// The cluster as the console sees it: its seed addresses and a [`Client`] on them.
#[derive(Clone)]
pub struct Cluster {
    seeds: Vec<String>,
    client: Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .field("current", &self.client.current_addr())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `seeds` are HOST:PORT; at least one. Creating channels needs a tokio runtime.
    pub fn new(seeds: Vec<String>) -> Self {
        Self::with_access(seeds, ClientTransport::default())
    }

    /// Like [`new`](Self::new) for a cluster that wants a token or TLS.
    pub fn with_access(seeds: Vec<String>, transport: ClientTransport) -> Self {
        assert!(!seeds.is_empty(), "at least one address");
        let client = Client::with_transport(
            seeds.clone(),
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            RPC_TIMEOUT,
            transport,
        )
        .expect("at least one address");
        Cluster { seeds, client }
    }

    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// A client of the agent at `addr` alone (for the `Watch` stream, which the console
    /// steers itself).
    pub fn client(&self, addr: &str) -> Result<AgentClient, Status> {
        self.client.agent(addr)
    }

    /// Runs one RPC against the leader, following redirects and waiting out an election for
    /// up to [`RPC_TIMEOUT`]; one attempt that takes longer than `per_try` ends it with
    /// `MZ-TIMEOUT`. Errors come back as operator messages with their `MZ-` code.
    pub async fn rpc<T, F, Fut>(&self, per_try: Duration, f: F) -> Result<T, String>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.client
            .rpc(|c| {
                let call = tokio::time::timeout(per_try, f(c));
                let addr = self.client.current_addr().unwrap_or_default();
                async move {
                    call.await.unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "MZ-TIMEOUT: {addr} did not answer within {}s",
                            per_try.as_secs()
                        )))
                    })
                }
            })
            .await
            .map_err(|e| e.to_string())
    }
}

/// Runs the client side until the UI goes away: the `Watch` stream plus every effect sent on
/// `effects`. `requests` is how many recent requests each update carries.
pub async fn run(
    cluster: Arc<Cluster>,
    tx: mpsc::Sender<Action>,
    mut effects: mpsc::UnboundedReceiver<Effect>,
    requests: u32,
) {
    let perform_loop = {
        let (cluster, tx) = (cluster.clone(), tx.clone());
        async move {
            while let Some(effect) = effects.recv().await {
                let (cluster, tx) = (cluster.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(perform(&cluster, effect).await).await;
                });
            }
        }
    };
    tokio::select! {
        _ = watch(cluster, tx, requests) => {}
        _ = perform_loop => {}
    }
}

/// Picks the agent to try next: a redirect first, then the known leader, then the seeds in
/// turn, skipping agents that just refused connections (a follower keeps naming a dead leader
/// until its election timeout fires, which would send the console back to the dead one).
#[derive(Debug)]
struct Targets {
    seeds: Vec<String>,
    next_seed: usize,
    redirect: Option<String>,
    /// Agents whose last connection attempt failed, and when.
    down: HashMap<String, Instant>,
}

/// How long an agent that refused a connection is skipped.
const DOWN_FOR: Duration = Duration::from_secs(3);

impl Targets {
    fn new(seeds: Vec<String>) -> Self {
        Targets {
            seeds,
            next_seed: 0,
            redirect: None,
            down: HashMap::new(),
        }
    }

    fn is_down(&self, addr: &str) -> bool {
        self.down.get(addr).is_some_and(|t| t.elapsed() < DOWN_FOR)
    }

    fn next(&mut self, leader: Option<String>) -> String {
        if let Some(r) = self.redirect.take() {
            return r;
        }
        if let Some(l) = leader.filter(|l| !self.is_down(l)) {
            return l;
        }
        let n = self.seeds.len();
        let pick = (0..n)
            .map(|i| (self.next_seed + i) % n)
            .find(|&i| !self.is_down(&self.seeds[i]))
            .unwrap_or(self.next_seed % n);
        self.next_seed = pick + 1;
        self.seeds[pick].clone()
    }

    /// Follows a redirect, unless it names an agent that just refused connections.
    fn follow(&mut self, to: String) -> bool {
        if self.is_down(&to) {
            return false;
        }
        self.redirect = Some(to);
        true
    }
}

/// Keeps a `Watch` stream open to the leader, forever (until the UI's receiver is dropped).
pub async fn watch(cluster: Arc<Cluster>, tx: mpsc::Sender<Action>, requests: u32) {
    let _ = watch_until_closed(cluster, tx, requests).await;
}

/// The body of [`watch`]; returns `None` once the UI's receiver is gone.
async fn watch_until_closed(
    cluster: Arc<Cluster>,
    tx: mpsc::Sender<Action>,
    requests: u32,
) -> Option<()> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut targets = Targets::new(cluster.seeds.clone());
    // The leader as last learned, from a working stream or a redirect.
    let mut leader: Option<String> = None;
    let mut hops = 0;
    // Failed attempts since the last working stream: the first round over the seeds goes
    // quickly (another agent is likely fine); only then does the backoff grow.
    let mut failures = 0usize;
    loop {
        let addr = targets.next(leader.clone());
        tx.send(Action::Conn(Conn::Connecting { addr: addr.clone() }))
            .await
            .ok()?;
        let started = match cluster.client(&addr) {
            Ok(mut c) => {
                tokio::time::timeout(RPC_TIMEOUT, c.watch(pb::WatchRequest { requests })).await
            }
            Err(s) => Ok(Err(s)),
        };
        let error = match started {
            Ok(Ok(resp)) => {
                leader = Some(addr.clone());
                targets.down.remove(&addr);
                hops = 0;
                failures = 0;
                backoff.reset();
                let _ = tx
                    .send(Action::Conn(Conn::Connected { addr: addr.clone() }))
                    .await;
                let mut stream = resp.into_inner();
                let why = loop {
                    match tokio::time::timeout(STALE_AFTER, stream.message()).await {
                        Ok(Ok(Some(u))) => tx.send(Action::Update(Box::new(u))).await.ok()?,
                        Ok(Ok(None)) => {
                            break format!("{addr} ended the stream (it is no longer the leader?)");
                        }
                        Ok(Err(s)) => break describe(&addr, &s),
                        Err(_) => {
                            break format!(
                                "MZ-TIMEOUT: no update from {addr} for {}s",
                                STALE_AFTER.as_secs()
                            );
                        }
                    }
                };
                // Ask the same agent first: if it lost the leadership it names the new leader.
                forget(&mut leader, &addr);
                targets.follow(addr);
                why
            }
            Ok(Err(s)) => {
                let hint = leader_hint(&s).filter(|h| *h != addr && hops < MAX_HOPS);
                if let Some(h) = hint
                    && targets.follow(h.clone())
                {
                    hops += 1;
                    leader = Some(h);
                    continue;
                }
                hops = 0;
                forget(&mut leader, &addr);
                if is_not_leader(&s) {
                    // The cluster answers but has no (live) leader yet: an election is under
                    // way. Ask again soon, without growing the backoff.
                    lost(&tx, describe(&addr, &s), ELECTION_POLL).await?;
                    continue;
                }
                if unreachable(&s) {
                    targets.down.insert(addr.clone(), Instant::now());
                }
                describe(&addr, &s)
            }
            Err(_) => {
                forget(&mut leader, &addr);
                targets.down.insert(addr.clone(), Instant::now());
                format!(
                    "MZ-TIMEOUT: {addr} did not answer within {}s",
                    RPC_TIMEOUT.as_secs()
                )
            }
        };
        failures += 1;
        let delay = if failures <= cluster.seeds.len() {
            FIRST_ROUND_DELAY
        } else {
            backoff.next_delay()
        };
        lost(&tx, error, delay).await?;
    }
}

/// Forgets `addr` as the leader (it stopped answering as one).
fn forget(leader: &mut Option<String>, addr: &str) {
    if leader.as_deref() == Some(addr) {
        *leader = None;
    }
}

/// Reports the connection lost and waits `delay` before the next attempt. `None` when the UI
/// has gone away.
async fn lost(tx: &mpsc::Sender<Action>, error: String, delay: Duration) -> Option<()> {
    let lost = Conn::Lost {
        error,
        retry_in_ms: delay.as_millis() as u64,
    };
    tx.send(Action::Conn(lost)).await.ok()?;
    tokio::time::sleep(delay).await;
    Some(())
}

/// Performs one effect and returns its outcome as an action.
pub async fn perform(cluster: &Cluster, effect: Effect) -> Action {
    let what = effect.describe();
    let done = match effect {
        Effect::NodeOp { id, op } => {
            let req = pb::NodeOpRequest {
                node_id: id,
                op: op.as_str().into(),
            };
            cluster
                .rpc(RPC_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.node_op(req).await }
                })
                .await
                .map(|r| ok_message(r.message, &what))
        }
        Effect::AddNode { id, addr } => {
            let req = pb::AddNodeRequest { node_id: id, addr };
            cluster
                .rpc(RPC_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.add_node(req).await }
                })
                .await
                .map(|r| ok_message(r.message, &what))
        }
        Effect::Cancel { key, label } => {
            let req = pb::CancelRequest {
                key,
                ..Default::default()
            };
            cluster
                .rpc(RPC_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.cancel(req).await }
                })
                .await
                .map(|r| match r.cancelled.len() {
                    0 => format!("nothing cancelled: {label} had already finished"),
                    1 => format!("cancelled {label}"),
                    n => format!("cancelled {label} and {} of its children", n - 1),
                })
        }
        Effect::Retry {
            function,
            args_json,
        } => {
            let label = call_label(&function, &args_json, 40);
            let req = pb::CallRequest {
                function,
                args_json,
                no_cache: true,
                ..Default::default()
            };
            cluster
                .rpc(RETRY_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.call(req).await }
                })
                .await
                .and_then(|r| retry_outcome(&label, r))
        }
        Effect::Tree { key } => {
            let req = pb::TreeRequest {
                key: key.clone(),
                max_nodes: 5_000,
                ..Default::default()
            };
            let result = cluster
                .rpc(RPC_TIMEOUT, |mut c| {
                    let req = req.clone();
                    async move { c.tree(req).await }
                })
                .await
                .map(|r| r.entries);
            return Action::Tree { key, result };
        }
    };
    Action::Done(done)
}

fn ok_message(message: String, what: &str) -> String {
    if message.is_empty() {
        format!("{what}: done")
    } else {
        message
    }
}

/// The outcome of a retried call as a status line.
fn retry_outcome(label: &str, r: pb::CallReply) -> Result<String, String> {
    let node = r.node.map_or(String::new(), |n| format!(" on node {n}"));
    match (r.state.as_str(), &r.error) {
        ("done", _) => Ok(format!(
            "retry of {label}: done in {} ms{node} → {}",
            r.duration_ms,
            r.result_json.as_deref().unwrap_or("null")
        )),
        (_, Some(e)) => Err(format!(
            "{}: retry of {label} failed{node}: {}",
            e.code, e.message
        )),
        (state, None) => Ok(format!("retry of {label}: {state} [{}]", &r.key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn targets_skip_agents_that_just_refused() {
        let seeds: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let mut t = Targets::new(seeds);
        assert_eq!(t.next(None), "a");
        assert_eq!(t.next(None), "b");
        assert_eq!(t.next(Some("c".into())), "c", "the leader comes first");
        t.down.insert("a".into(), Instant::now());
        assert!(
            !t.follow("a".into()),
            "a redirect to a dead leader is not followed"
        );
        assert_eq!(t.next(Some("a".into())), "c");
        assert_eq!(t.next(None), "b");
        assert_eq!(t.next(None), "c");
        assert!(t.follow("b".into()));
        assert_eq!(t.next(None), "b");
        // When every agent refused, they are tried anyway.
        for a in ["b", "c"] {
            t.down.insert(a.into(), Instant::now());
        }
        assert!(["a", "b", "c"].contains(&t.next(None).as_str()));
    }

    #[test]
    fn retry_outcomes() {
        let ok = pb::CallReply {
            state: "done".into(),
            node: Some(2),
            duration_ms: 5,
            result_json: Some("0.5".into()),
            ..Default::default()
        };
        assert_eq!(
            retry_outcome("ratio(2)", ok).unwrap(),
            "retry of ratio(2): done in 5 ms on node 2 → 0.5"
        );
        let failed = pb::CallReply {
            state: "failed".into(),
            error: Some(pb::TaskError {
                code: "MZ-CHILD-FAILED".into(),
                message: "divide([1,0]): division by zero".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = retry_outcome("ratio(1)", failed).unwrap_err();
        assert!(
            e.starts_with("MZ-CHILD-FAILED: retry of ratio(1) failed"),
            "{e}"
        );
    }

    /// A refused connection is reported as lost with a retry delay, and the loop keeps trying:
    /// quickly while other seeds are untried, then with growing delays (about 0.5 s of real
    /// time).
    #[tokio::test]
    async fn unreachable_cluster_is_reported_and_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // the listener is dropped: nothing answers there
        let cluster = Arc::new(Cluster::new(vec![format!("127.0.0.1:{port}")]));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(watch(cluster, tx, 10));
        let mut delays = Vec::new();
        while delays.len() < 4 {
            match rx.recv().await.unwrap() {
                Action::Conn(Conn::Lost { error, retry_in_ms }) => {
                    assert!(error.starts_with("MZ-"), "{error}");
                    delays.push(retry_in_ms);
                }
                Action::Conn(Conn::Connecting { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, [100, 100, 200, 400]);
        task.abort();
    }
}
