//! The worker: every agent runs requests the leader assigns to it.
//!
//! The worker opens a server stream (`Work`) to the leader and receives assignments as they
//! are committed: no polling. Each assignment runs as a task; its outcome is reported with
//! `Complete` (batched, retried until acknowledged: completions are idempotent). Heartbeats
//! carry the running set so the leader can re-queue assignments that were lost. On shutdown
//! the worker takes no new work, lets running requests finish until the deadline, and hands
//! the rest back.

use crate::agent::Agent;
use crate::client::{CallOptions, Client, ClientError};
use crate::functions::{ClusterCaller, Ctx, Slot};
use crate::leadership::Leadership;
use crate::security::Speaker;
use crate::service::WorkStream;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use mozen_client::worker::WorkerClient;
use mozen_model::{
    ChainLink, Code, ERROR_MESSAGE_BYTES, QUOTED_ARGS_BYTES, RequestKey, TaskError, codes, quote,
    quote_bytes,
};
use mozen_proto as pb;
use prost::Message as _;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a child call refused with `MZ-PARENT-GONE` is tried again (see `call_child`).
const PARENT_GONE_RETRY: Duration = Duration::from_secs(10);

/// Makes `call` again while it is refused with `MZ-PARENT-GONE`, backing off from 50 ms to
/// 1 s between tries, for up to `window`; returns the first other answer, or the refusal once
/// the window is over.
async fn while_parent_gone<T, F, Fut>(window: Duration, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let give_up = tokio::time::Instant::now() + window;
    let mut pause = Duration::from_millis(50);
    loop {
        match call().await {
            Err(ClientError::Rejected { code, .. })
                if code.as_str() == Code::ParentGone
                    && tokio::time::Instant::now() + pause < give_up =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// Child calls of running functions go through the agent's client to the leader.
struct ChildCaller {
    client: Client,
    agent: Arc<Agent>,
}

impl ClusterCaller for ChildCaller {
    fn call_child(
        &self,
        parent: RequestKey,
        function: String,
        args: Value,
    ) -> BoxFuture<'static, Result<(Value, bool), TaskError>> {
        let client = self.client.clone();
        async move {
            let opts = CallOptions {
                parent: Some(parent),
                ..Default::default()
            };
            // The leader refuses a child of a parent that is not running: cancelled, or put
            // back in the queue (its node looked lost). In the second case the leader may
            // assign it again, to this very run (a worker keeps one run per request), so
            // the refusal is tried again for a while rather than failing a run that is about
            // to be current again; a stale run's failure would be dropped anyway.
            let reply = while_parent_gone(PARENT_GONE_RETRY, || {
                client.call_json(&function, args.clone(), &opts)
            })
            .await;
            match reply {
                Ok(reply) => {
                    let text = reply.result_json.unwrap_or_else(|| "null".into());
                    let value = serde_json::from_str(&text).map_err(|e| {
                        TaskError::new(
                            codes::BAD_ARGUMENTS,
                            format!("{function}: result does not decode: {e}"),
                        )
                    })?;
                    Ok((value, reply.cached))
                }
                Err(ClientError::Task(e)) => Err(e),
                Err(e) => Err(TaskError::new(
                    codes::CHILD_FAILED,
                    format!("calling {function}: {e}"),
                )),
            }
        }
        .boxed()
    }

    fn park(&self, key: RequestKey, attempt: u32, parked: bool) -> BoxFuture<'static, bool> {
        let agent = self.agent.clone();
        async move {
            let req = pb::ParkRequest {
                key: key.0.to_vec(),
                node: agent.me(),
                attempt,
                parked,
            };
            on_leader(
                &agent,
                |_| {
                    let r = req.clone();
                    let agent = &agent;
                    async move {
                        crate::service::park_request(agent, r, &Speaker::local(agent.me())).await
                    }
                },
                |mut c| {
                    let r = req.clone();
                    async move { c.park(r).await }
                },
            )
            .await
            .is_ok()
        }
        .boxed()
    }
}

/// Runs `local` with this agent's leadership when it leads (no gRPC round trip to itself),
/// otherwise `remote` through the agent's client, which finds the leader.
async fn on_leader<T, L, LFut, F, Fut>(
    agent: &Agent,
    local: L,
    remote: F,
) -> Result<(), ClientError>
where
    L: FnOnce(Arc<Leadership>) -> LFut,
    LFut: Future<Output = Result<(), tonic::Status>>,
    F: Fn(WorkerClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match agent.leadership() {
        Ok(l) => local(l).await.map_err(|s| crate::client::rejected(&s)),
        Err(_) => agent.client.worker_rpc(remote).await.map(|_| ()),
    }
}

/// A request this worker runs, or has finished and reports.
struct Mine {
    attempt: u32,
    token: CancellationToken,
    /// Its completion once it finished, until the leader acknowledges it.
    done: Option<pb::Completion>,
}

/// Requests this worker runs (or has finished but not yet reported), by key.
type Running = Arc<Mutex<HashMap<RequestKey, Mine>>>;

pub async fn run(agent: Arc<Agent>) {
    let running: Running = Arc::new(Mutex::new(HashMap::new()));
    // Requests assigned beyond the free slots (short ones the leader queues here) wait for one.
    let slots = Arc::new(Semaphore::new(agent.cfg.slots as usize));
    let (done_tx, done_rx) = mpsc::unbounded_channel::<pb::Completion>();
    let reporter = tokio::spawn(report(agent.clone(), done_rx, running.clone()));
    let heartbeat = tokio::spawn(heartbeat(agent.clone(), running.clone()));
    let caller: Arc<dyn ClusterCaller> = Arc::new(ChildCaller {
        client: agent.client.clone(),
        agent: agent.clone(),
    });
    let mut delay = Duration::from_millis(50);
    while !agent.stopping.is_cancelled() && !agent.removed.is_cancelled() {
        let req = pb::WorkRequest {
            node_id: agent.me(),
            running: keys(&running),
        };
        let leadership = agent.leadership().ok();
        let in_process = leadership.is_some();
        let stream = if let Some(l) = leadership {
            // The leader's own worker takes its assignments without a gRPC round trip.
            crate::service::open_work(&agent, &l, agent.me())
                .map_err(|s| crate::client::rejected(&s))
        } else {
            tokio::select! {
                s = agent.client.worker_rpc(|mut c| {
                    let r = req.clone();
                    async move { c.work(r).await }
                }) => s.map(|s| -> WorkStream { Box::pin(s) }),
                // This agent won the election while looking for the leader: take the
                // assignments in process at once.
                _ = until_leading(&agent) => continue,
                _ = agent.stopping.cancelled() => break,
                _ = agent.removed.cancelled() => break,
            }
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!("work stream: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = agent.stopping.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        *agent.known_leader.lock().expect("leader lock") = agent.client.current_addr();
        if in_process {
            info!("work stream open (in process: this agent leads)");
        } else {
            info!(leader = ?agent.client.current_addr(), "work stream open");
        }
        loop {
            let msg = tokio::select! {
                m = stream.next() => m.transpose(),
                _ = agent.stopping.cancelled() => break,
                _ = agent.removed.cancelled() => break,
            };
            let item = match msg {
                Ok(Some(pb::WorkItem { item: Some(item) })) => item,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            match item {
                pb::work_item::Item::Assign(a) => {
                    start(&agent, &caller, &slots, &running, &done_tx, a)
                }
                pb::work_item::Item::Cancel(k) => {
                    if let Some(key) = pb::convert::key_from_bytes(&k)
                        && let Some(m) = running.lock().expect("running").get(&key)
                    {
                        m.token.cancel();
                    }
                }
            }
        }
        // The stream ended: the leader changed or went away. Reconnect (running work goes on).
        info!("work stream ended");
        agent.client.rpc_reset();
    }
    // Shutting down: tell the leader (no new work), let running requests finish until the
    // deadline, then hand the rest back.
    if !running.lock().expect("running").is_empty() {
        let hb = pb::HeartbeatRequest {
            node_id: agent.me(),
            running: keys(&running),
            leaving: true,
            hand_back: vec![],
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            agent.client.worker_rpc(|mut c| {
                let r = hb.clone();
                async move { c.heartbeat(r).await }
            }),
        )
        .await;
    }
    let deadline = Instant::now() + agent.cfg.shutdown_deadline;
    while Instant::now() < deadline && !running.lock().expect("running").is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = keys(&running);
    if !left.is_empty() {
        info!(
            count = left.len(),
            "handing unfinished requests back to the queue"
        );
        for m in running.lock().expect("running").values() {
            m.token.cancel();
        }
        let hb = pb::HeartbeatRequest {
            node_id: agent.me(),
            running: vec![],
            leaving: true,
            hand_back: left,
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            agent.client.worker_rpc(|mut c| {
                let r = hb.clone();
                async move { c.heartbeat(r).await }
            }),
        )
        .await;
    }
    heartbeat.abort();
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(3), reporter).await;
}

/// Returns once this agent leads (never if it is not a voter).
async fn until_leading(agent: &Agent) {
    let mut metrics = agent.raft.metrics();
    loop {
        if crate::context::leads(&metrics.borrow_and_update(), agent.me()) {
            return;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn keys(running: &Running) -> Vec<Vec<u8>> {
    running
        .lock()
        .expect("running")
        .keys()
        .map(|k| k.0.to_vec())
        .collect()
}

/// What a worker does with an assignment.
#[derive(Debug, PartialEq)]
enum Take {
    /// Run it.
    Run,
    /// That attempt (or a later one) runs here already: its completion will do.
    Runs,
    /// That attempt finished here and its report is not acknowledged yet. The report may have
    /// reached the leader before the leader sent the request again (flying again from a new
    /// leader), and been dropped: report it again.
    Finished(Box<pb::Completion>),
}

/// Takes `attempt` of `key` to run here unless that attempt (or a later one) ran or runs here
/// already (sent again after a reconnect, or flying again from a new leader).
fn take(
    running: &mut HashMap<RequestKey, Mine>,
    key: RequestKey,
    attempt: u32,
    token: &CancellationToken,
) -> Take {
    if let Some(m) = running.get(&key).filter(|m| m.attempt >= attempt) {
        return match &m.done {
            Some(c) => Take::Finished(Box::new(c.clone())),
            None => Take::Runs,
        };
    }
    running.insert(
        key,
        Mine {
            attempt,
            token: token.clone(),
            done: None,
        },
    );
    Take::Run
}

fn start(
    agent: &Arc<Agent>,
    caller: &Arc<dyn ClusterCaller>,
    slots: &Arc<Semaphore>,
    running: &Running,
    done: &mpsc::UnboundedSender<pb::Completion>,
    a: pb::Assignment,
) {
    let Some(key) = pb::convert::key_from_bytes(&a.key) else {
        warn!("assignment with a malformed key ignored");
        return;
    };
    let token = CancellationToken::new();
    match take(
        &mut running.lock().expect("running"),
        key,
        a.attempt,
        &token,
    ) {
        Take::Run => {}
        Take::Runs => return,
        Take::Finished(c) => {
            let _ = done.send(*c);
            return;
        }
    }
    let me = agent.me();
    let ctx = Ctx::new(key, me, a.attempt, token.clone(), caller.clone());
    // The agent, not its function table: cloning the table per assignment cost an
    // allocation per registered function (3 % of a follower's CPU under load).
    let agent = agent.clone();
    let done = done.clone();
    let slots = slots.clone();
    let running = running.clone();
    tokio::spawn(async move {
        let Some(slot) = Slot::acquire(slots, &token).await else {
            // Cancelled (or handed back) while waiting for a slot: nothing ran.
            let mut r = running.lock().expect("running");
            if r.get(&key).is_some_and(|m| m.attempt == a.attempt) {
                r.remove(&key);
            }
            return;
        };
        let ctx = ctx.with_slot(slot);
        let t0 = Instant::now();
        let outcome = match serde_json::from_slice::<Value>(&a.args) {
            Ok(args) => agent.functions.run(&a.function, ctx, args).await,
            Err(e) => Err(TaskError::new(
                codes::BAD_ARGUMENTS,
                format!("{}: arguments are not JSON: {e}", a.function),
            )),
        };
        let duration_ms = t0.elapsed().as_millis() as u64;
        let (value, error) = match outcome {
            Ok(v) => (
                Some(serde_json::to_vec(&v).unwrap_or_else(|_| b"null".to_vec())),
                None,
            ),
            Err(mut e) => {
                if e.node.is_none() {
                    e.node = Some(me);
                }
                // A function's own message, however long, is kept only up to a bound: it is
                // written down and served to every reader of the request.
                e.message = quote(&e.message, ERROR_MESSAGE_BYTES);
                e.push_link(ChainLink {
                    key,
                    function: a.function.clone(),
                    args: quote_bytes(&a.args, QUOTED_ARGS_BYTES),
                    node: Some(me),
                });
                (None, Some(pb::TaskError::from(&e)))
            }
        };
        let completion = pb::Completion {
            key: a.key,
            node: me,
            attempt: a.attempt,
            value,
            error,
            duration_ms,
        };
        if let Some(m) = running
            .lock()
            .expect("running")
            .get_mut(&key)
            .filter(|m| m.attempt == a.attempt)
        {
            m.done = Some(completion.clone());
        }
        let _ = done.send(completion);
    });
}

/// `Complete` calls of one worker in flight at once. Each waits for its commit (about a
/// millisecond); with one at a time, a completion that came just after a batch left waited for
/// that batch's commit and then its own, which on a call tree's way up doubled each level's
/// wait. The proposer still gathers concurrent batches into one log entry.
const REPORTS_IN_FLIGHT: usize = 4;

/// Reports completions in batches, up to [`REPORTS_IN_FLIGHT`] at once; each is retried
/// until the leader acknowledges. Returns once the channel closed and every batch is done.
async fn report(agent: Arc<Agent>, rx: mpsc::UnboundedReceiver<pb::Completion>, running: Running) {
    report_batches(rx, REPORTS_IN_FLIGHT, move |completions| {
        let agent = agent.clone();
        let running = running.clone();
        async move { send_report(&agent, pb::CompleteRequest { completions }, &running).await }
    })
    .await
}

/// Gathers what `rx` holds into batches (at most 1,024 completions) and hands each to `send`,
/// with at most `at_once` sends running. Returns once `rx` closed and every send is done.
async fn report_batches<F, Fut>(
    mut rx: mpsc::UnboundedReceiver<pb::Completion>,
    at_once: usize,
    send: F,
) where
    F: Fn(Vec<pb::Completion>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sending = tokio::task::JoinSet::new();
    // A completion that did not fit the batch before starts the next one.
    let mut held: Option<pb::Completion> = None;
    loop {
        let first = match held.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => break,
            },
        };
        // Completions keep arriving while every send is in flight: the next batch is
        // gathered once one of them is done.
        while sending.try_join_next().is_some() {}
        while sending.len() >= at_once.max(1) {
            sending.join_next().await;
        }
        // No batch passes REPORT_BYTES (one larger completion goes alone): a batch stays
        // within the Complete RPC's message bound and makes no log entry of many values.
        let mut bytes = first.encoded_len();
        let mut batch = vec![first];
        while batch.len() < 1024 && bytes < REPORT_BYTES {
            match rx.try_recv() {
                Ok(c) if bytes + c.encoded_len() > REPORT_BYTES => {
                    held = Some(c);
                    break;
                }
                Ok(c) => {
                    bytes += c.encoded_len();
                    batch.push(c);
                }
                Err(_) => break,
            }
        }
        sending.spawn(send(batch));
    }
    while sending.join_next().await.is_some() {}
}

/// About the most bytes of completions in one `Complete` (one larger result goes alone).
const REPORT_BYTES: usize = 1 << 20;

/// Sends one batch of completions, retrying for a minute, then forgets the runs it reported.
async fn send_report(agent: &Agent, req: pb::CompleteRequest, running: &Running) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let local = |l: Arc<Leadership>| {
            let completions = req.completions.clone();
            let me = Speaker::local(agent.me());
            async move { crate::service::complete_reported(agent, &l, completions, &me).await }
        };
        let r = on_leader(agent, local, |mut c| {
            let r = req.clone();
            async move { c.complete(r).await }
        })
        .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() > give_up => {
                warn!(
                    "dropping {} completions after retrying for a minute: {e}",
                    req.completions.len()
                );
                break;
            }
            Err(e) => {
                debug!("complete: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut r = running.lock().expect("running");
    for c in &req.completions {
        if let Some(key) = pb::convert::key_from_bytes(&c.key)
            && r.get(&key).is_some_and(|m| m.attempt == c.attempt)
        {
            r.remove(&key);
        }
    }
}

async fn heartbeat(agent: Arc<Agent>, running: Running) {
    let every = (agent.cfg.lease / 4).max(Duration::from_millis(100));
    loop {
        // The running set is read for each try: a heartbeat retried while the leader changes
        // must not carry a set older than the assignments the new leader made meanwhile
        // (it would take them for lost).
        let r = agent
            .client
            .worker_rpc(|mut c| {
                let r = pb::HeartbeatRequest {
                    node_id: agent.me(),
                    running: keys(&running),
                    leaving: agent.stopping.is_cancelled(),
                    hand_back: vec![],
                };
                async move { c.heartbeat(r).await }
            })
            .await;
        if let Err(ClientError::Rejected { code, message }) = &r
            && code.as_str() == Code::UnknownNode
        {
            warn!(
                "{code}: {message}; this agent was removed from the cluster and takes no more work (restart it to rejoin)"
            );
            agent.removed.cancel();
            return;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn completion(i: u8) -> pb::Completion {
        pb::Completion {
            key: vec![i; 32],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_completion_is_reported_while_an_earlier_report_awaits_its_commit() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(Vec<u8>, oneshot::Sender<()>)>();
        let reporter = tokio::spawn(report_batches(rx, 2, move |batch| {
            let sent_tx = sent_tx.clone();
            async move {
                // Each send waits until the test says its commit is done.
                let (done_tx, done_rx) = oneshot::channel();
                let keys = batch.iter().map(|c| c.key[0]).collect();
                sent_tx.send((keys, done_tx)).expect("test listening");
                let _ = done_rx.await;
            }
        }));
        tx.send(completion(1)).unwrap();
        let (first, first_done) = sent_rx.recv().await.expect("first batch");
        assert_eq!(first, vec![1]);
        // The first batch is still unacknowledged: the next completion goes out anyway.
        tx.send(completion(2)).unwrap();
        // (Bounded: one report at a time would never send it.)
        let (second, second_done) = tokio::time::timeout(Duration::from_secs(10), sent_rx.recv())
            .await
            .expect("the second batch left while the first awaited its commit")
            .expect("second batch");
        assert_eq!(second, vec![2]);
        // Both sends in flight (the limit): later completions wait, then leave as one batch.
        tx.send(completion(3)).unwrap();
        tx.send(completion(4)).unwrap();
        tokio::task::yield_now().await;
        assert!(
            sent_rx.try_recv().is_err(),
            "a third send while two were in flight"
        );
        first_done.send(()).unwrap();
        let (third, third_done) = sent_rx.recv().await.expect("third batch");
        assert_eq!(third, vec![3, 4]);
        // The reporter ends once its channel closed and every send finished.
        drop(tx);
        second_done.send(()).unwrap();
        third_done.send(()).unwrap();
        reporter.await.expect("reporter ends");
    }

    #[tokio::test]
    async fn batches_of_completions_stay_within_their_byte_bound() {
        let (tx, rx) = mpsc::unbounded_channel();
        let big = |i: u8| pb::Completion {
            key: vec![i; 32],
            value: Some(vec![b'v'; 400 << 10]),
            ..Default::default()
        };
        // Six of 400 KiB and one of 3 MiB, all waiting before the first send.
        for i in 0..6 {
            tx.send(big(i)).unwrap();
        }
        tx.send(pb::Completion {
            key: vec![6; 32],
            value: Some(vec![b'v'; 3 << 20]),
            ..Default::default()
        })
        .unwrap();
        drop(tx);
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = batches.clone();
        report_batches(rx, 1, move |batch| {
            let seen = seen.clone();
            async move {
                let keys: Vec<u8> = batch.iter().map(|c| c.key[0]).collect();
                let bytes: usize = batch.iter().map(|c| c.encoded_len()).sum();
                seen.lock().unwrap().push((keys, bytes));
            }
        })
        .await;
        let batches = batches.lock().unwrap().clone();
        let keys: Vec<Vec<u8>> = batches.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]);
        for (k, bytes) in &batches {
            assert!(*bytes <= REPORT_BYTES || k.len() == 1, "{k:?}: {bytes}");
        }
    }

    #[test]
    fn an_attempt_sent_again_runs_once_and_a_finished_one_is_reported_again() {
        let key = RequestKey([3; 32]);
        let token = CancellationToken::new();
        let mut running = HashMap::new();
        assert_eq!(take(&mut running, key, 0, &token), Take::Run);
        // Sent again while it runs: not run twice, nothing to report yet.
        assert_eq!(take(&mut running, key, 0, &token), Take::Runs);
        // It finished; the report is on its way (and may be dropped by a leader that did not
        // yet fly it again): the next send of the same attempt hands the completion back.
        running.get_mut(&key).unwrap().done = Some(completion(3));
        assert_eq!(
            take(&mut running, key, 0, &token),
            Take::Finished(Box::new(completion(3)))
        );
        // A later attempt (the log's own) runs.
        assert_eq!(take(&mut running, key, 1, &token), Take::Run);
        assert_eq!(running[&key].attempt, 1);
        assert!(running[&key].done.is_none());
    }

    fn gone() -> ClientError {
        ClientError::Rejected {
            code: codes::PARENT_GONE.into(),
            message: "the calling request is no longer running".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_refused_while_its_parent_is_requeued_is_called_again() {
        let calls = std::cell::Cell::new(0);
        let r = while_parent_gone(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(gone()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parent_gone_for_good_fails_the_child_call_once_the_window_is_over() {
        let started = tokio::time::Instant::now();
        let calls = std::cell::Cell::new(0);
        let r: Result<(), _> = while_parent_gone(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            async { Err(gone()) }
        })
        .await;
        assert!(matches!(r, Err(ClientError::Rejected { code, .. }) if code == codes::PARENT_GONE));
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(10), "{waited:?}");
        assert!(waited >= Duration::from_secs(8), "{waited:?}");
        // 50, 100, 200, 400, 800 ms, then a second at a time.
        assert!((10..=15).contains(&calls.get()), "{}", calls.get());
    }

    #[tokio::test(start_paused = true)]
    async fn other_refusals_are_not_called_again() {
        let calls = std::cell::Cell::new(0);
        let r: Result<(), _> = while_parent_gone(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            async {
                Err(ClientError::Rejected {
                    code: "MZ-QUORUM".into(),
                    message: "no quorum".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}
