//! Leadership: everything only the leader has, owned by one value.
//!
//! A [`Leadership`] is made when this agent becomes the Raft leader and ended when it steps
//! down ([`watch`] follows Raft's metrics). It owns the leader's memory, none of which is a log
//! entry and all of which a new leader rebuilds: the workers' Work streams, liveness and
//! throughput per node, places reserved for assignments on their way to the log, mean run
//! times per function, express flights and held calls, child calls waiting for a reported
//! value. It also owns its loops (scheduler, liveness, express housekeeping, autoscaler),
//! spawned on its own task tracker under a cancellation token that is a child of the agent's.
//!
//! Holding a `Leadership` is the proof of leadership: RPC handlers ask the agent for it
//! ([`crate::agent::Agent::leadership`]) and get it or a typed [`NotLeader`]. Ending it cancels
//! the loops, closes the Work streams (workers reconnect to the new leader), gives back every
//! reservation and drops what was only held in memory (callers of express calls send them
//! again to the new leader). Nothing is reset by hand elsewhere.
//!
//! - [`schedule`]: the scheduling pass and loop, and placing one call at once.
//! - [`liveness`]: heartbeats, marking nodes down and back, bounding the memo table.
//! - [`express`]: calls that run before they are written down.
//! - [`autoscale`]: starting pool agents for a backlog, stopping idle ones.

pub mod autoscale;
pub mod express;
pub mod liveness;
pub mod schedule;

pub use express::{Flight, Flights, Held, Start};
pub use liveness::Liveness;
pub use schedule::{Nodes, PLAN_LIMIT, plan_pass};

use crate::context::Context;
use mozen_model::{NodeId, RequestKey};
use mozen_proto as pb;
use mozen_store::{AssignReply, Command, CompleteReply, NewRequest, Response, SharedState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A value a worker reported, before it is committed: (value, node, milliseconds it ran).
pub type Reported = (Arc<[u8]>, NodeId, u64);

/// A worker's open Work stream.
pub struct Stream {
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Result<pb::WorkItem, tonic::Status>>,
}

/// A function whose mean run time is at most this is short: its requests may wait in a
/// worker's local queue (see the scheduler).
pub const SHORT_MS: f64 = 5.0;

/// This agent does not lead (now): who does, as far as it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLeader {
    /// This agent.
    pub me: NodeId,
    /// The leader's id, when known.
    pub leader: Option<NodeId>,
    /// The leader's address, when known (empty while one is being elected).
    pub addr: String,
}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.leader.map_or("unknown".to_string(), |i| i.to_string());
        write!(
            f,
            "{}: node {} is not the leader; the leader is node {id} ({})",
            mozen_model::Code::NotLeader,
            self.me,
            if self.addr.is_empty() {
                "being elected"
            } else {
                &self.addr
            }
        )
    }
}

impl std::error::Error for NotLeader {}

/// The leader's memory and loops, for one term.
pub struct Leadership {
    term: u64,
    state: SharedState,
    token: CancellationToken,
    tasks: TaskTracker,
    /// Mean run time per function in milliseconds (moving average), learned from completions.
    durations: Mutex<HashMap<String, f64>>,
    /// Places handed out whose assignment is not applied yet, per node.
    reserved: Mutex<HashMap<NodeId, u32>>,
    /// Child calls waiting for a value as soon as a worker reports it (see
    /// [`Leadership::wait_reported`]).
    reported: Mutex<HashMap<RequestKey, Vec<oneshot::Sender<Reported>>>>,
    /// The workers' open Work streams.
    pub streams: Mutex<HashMap<NodeId, Stream>>,
    pub liveness: Mutex<Liveness>,
    /// Wakes the scheduler loop.
    pub schedule: Notify,
    /// Express calls running before they are written down.
    pub flights: Mutex<Flights>,
    /// Express calls waiting for a place.
    pub held: Mutex<Held>,
    /// Express calls whose worker's stream ended, to submit to the queue.
    pub orphans: Mutex<Vec<NewRequest>>,
    /// Wakes the express housekeeping.
    pub express: Notify,
}

impl Leadership {
    /// The leadership of `term`, over the replicated `state`; its token is a child of `parent`.
    pub fn new(term: u64, state: SharedState, parent: &CancellationToken) -> Self {
        Leadership {
            term,
            state,
            token: parent.child_token(),
            tasks: TaskTracker::new(),
            durations: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            liveness: Mutex::new(Liveness::default()),
            schedule: Notify::new(),
            flights: Mutex::new(HashMap::new()),
            held: Mutex::new(Default::default()),
            orphans: Mutex::new(Vec::new()),
            express: Notify::new(),
        }
    }

    /// The term this leadership is for.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Spawns a task of this leadership's (it is waited for at shutdown).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Fires when this leadership ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.token
    }

    /// Starts the loops, once the state holds everything committed before this term (the
    /// first entry of the term is applied): a liveness pass over an older state would take a
    /// node the previous leader marked down for alive. Each loop is watched by the agent's
    /// supervisor: a leader that went on without one would stall the cluster.
    pub fn begin(self: &Arc<Self>, agent: &Arc<Context>, previous: Option<NodeId>) {
        self.seed_liveness(agent, previous);
        let sup = agent.supervisor.clone();
        let may_end = crate::supervise::Lives::MayEnd;
        let loops = [
            (
                "scheduler",
                self.tasks.spawn(self.clone().scheduler_loop(agent.clone())),
            ),
            (
                "autoscaler",
                self.tasks.spawn(self.clone().autoscale_loop(agent.clone())),
            ),
            (
                "express loop",
                self.tasks.spawn(self.clone().express_loop(agent.clone())),
            ),
            (
                "liveness loop",
                self.tasks.spawn(self.clone().liveness_loop(agent.clone())),
            ),
        ];
        for (name, task) in loops {
            sup.watch(name, may_end, task);
        }
        // The agent waits for these loops at shutdown like for its own tasks.
        let tasks = self.tasks.clone();
        agent.tasks.spawn(async move { tasks.wait().await });
    }

    /// Ends this leadership: its loops stop, the Work streams close (workers reconnect to the
    /// new leader), reservations are given back and what was only in memory is dropped.
    pub fn end(&self) {
        self.token.cancel();
        self.tasks.close();
        self.streams.lock().expect("streams").clear();
        self.drop_flights();
        self.reported.lock().expect("reported").clear();
    }

    /// Registers a child call's interest in `key`'s value as soon as a worker reports it,
    /// before it is committed. The sender is dropped (the receiver sees an error) once the
    /// request finishes in the log or the leadership ends.
    pub fn wait_reported(&self, key: RequestKey) -> oneshot::Receiver<Reported> {
        let (tx, rx) = oneshot::channel();
        self.reported
            .lock()
            .expect("reported")
            .entry(key)
            .or_default()
            .push(tx);
        rx
    }

    /// A worker reported `key`'s value: hands it to the child calls waiting for it.
    pub fn value_reported(&self, key: &RequestKey, value: &[u8], node: NodeId, ms: u64) {
        let Some(ws) = self.reported.lock().expect("reported").remove(key) else {
            return;
        };
        let value: Arc<[u8]> = Arc::from(value);
        for w in ws {
            let _ = w.send((value.clone(), node, ms));
        }
    }

    /// A request finished in the log: no value will be reported for it, and an express
    /// flight of it is over.
    fn finished(&self, key: &RequestKey) {
        self.reported.lock().expect("reported").remove(key);
        let mut flights = self.flights.lock().expect("flights");
        if let Some(f) = flights.remove(key)
            && f.holds_place()
        {
            drop(flights);
            self.release(f.node);
        }
    }

    /// Places held by assignments not applied yet, per node. Hold the guard while deciding a
    /// placement and call [`Leadership::reserve`] with it, so that concurrent decisions see
    /// each other.
    pub fn reservations(&self) -> MutexGuard<'_, HashMap<NodeId, u32>> {
        self.reserved.lock().expect("reserved")
    }

    /// Holds a place on `node` until the returned guard drops (after its assignment applied).
    pub fn reserve<'a>(
        &'a self,
        held: &mut MutexGuard<'_, HashMap<NodeId, u32>>,
        node: NodeId,
    ) -> Reservation<'a> {
        *held.entry(node).or_default() += 1;
        Reservation { owner: self, node }
    }

    /// Gives back a place held on `node` (see [`Reservation::keep`]).
    pub fn release(&self, node: NodeId) {
        let mut r = self.reserved.lock().expect("reserved");
        if let Some(n) = r.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
    }

    /// Learns run times from completions: (function, milliseconds).
    pub fn record_durations<'a>(&self, runs: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut d = self.durations.lock().expect("durations");
        for (function, ms) in runs {
            let ms = ms as f64;
            match d.get_mut(function) {
                Some(mean) => *mean = 0.8 * *mean + 0.2 * ms,
                None => {
                    d.insert(function.to_string(), ms);
                }
            }
        }
    }

    /// Whether `function`'s mean run time is known and short.
    pub fn is_short(&self, function: &str) -> bool {
        self.durations
            .lock()
            .expect("durations")
            .get(function)
            .is_some_and(|ms| *ms <= SHORT_MS)
    }

    /// Functions whose mean run time is known and short.
    pub fn short_functions(&self) -> HashSet<String> {
        self.durations
            .lock()
            .expect("durations")
            .iter()
            .filter(|(_, ms)| **ms <= SHORT_MS)
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Sends an item down a node's Work stream; false when the node has none.
    pub fn send_work(&self, node: NodeId, item: pb::WorkItem) -> bool {
        let streams = self.streams.lock().expect("streams");
        streams
            .get(&node)
            .is_some_and(|s| s.tx.send(Ok(item)).is_ok())
    }

    fn broadcast(&self, item: pb::WorkItem) {
        for s in self.streams.lock().expect("streams").values() {
            let _ = s.tx.send(Ok(item.clone()));
        }
    }

    /// What the leader does when the state machine applied `cmd` with `resp`: push
    /// assignments down the Work streams of the nodes that run them, count completions, end
    /// express flights, broadcast cancellations, wake the scheduler.
    pub fn on_applied(&self, cmd: &Command, resp: &Response) {
        match (cmd, resp) {
            (Command::Batch(cs), Response::Batch(rs)) => {
                for (c, r) in cs.iter().zip(rs) {
                    self.on_applied(c, r);
                }
            }
            (Command::Submit { .. } | Command::SubmitFrom { .. }, _) => self.schedule.notify_one(),
            (Command::Assign { assignments, .. }, Response::Assigned(replies)) => {
                if self.streams.lock().expect("streams").is_empty() {
                    return;
                }
                let state = self.state.read().expect("state lock");
                let mut flights = self.flights.lock().expect("flights");
                for (a, r) in assignments.iter().zip(replies) {
                    if *r != AssignReply::Started {
                        continue;
                    }
                    // An express call flying there, or written down there (its first
                    // attempt), runs there already (as attempt 0). A later assignment of a
                    // written-down one is the log's own (that run was lost and re-queued):
                    // that flight is over.
                    match flights.get(&a.key) {
                        Some(f) if f.node == a.node && (!f.written || a.attempt <= 1) => continue,
                        Some(f) if f.written => {
                            flights.remove(&a.key);
                        }
                        _ => {}
                    }
                    let Some(req) = state.request(&a.key) else {
                        continue;
                    };
                    self.send_work(a.node, assignment_item(a.key, &req, a.attempt));
                }
            }
            (Command::Complete { completions, .. }, Response::Completed(replies)) => {
                {
                    let mut l = self.liveness.lock().expect("liveness");
                    for (c, r) in completions.iter().zip(replies) {
                        if *r != CompleteReply::Stale {
                            *l.completed.entry(c.node).or_default() += 1;
                        }
                    }
                }
                for (c, r) in completions.iter().zip(replies) {
                    if *r == CompleteReply::Finished {
                        self.finished(&c.key);
                    }
                }
                self.schedule.notify_one();
            }
            (Command::Ran { runs, .. }, Response::Ran(_)) => {
                for r in runs {
                    self.finished(&r.request.key);
                }
            }
            (Command::Cancel { .. } | Command::CancelMany { .. }, Response::Cancelled(keys)) => {
                for k in keys {
                    self.finished(k);
                    self.broadcast(pb::WorkItem {
                        item: Some(pb::work_item::Item::Cancel(k.0.to_vec())),
                    });
                }
                self.schedule.notify_one();
            }
            (
                Command::Requeue { .. } | Command::SetNodeState { .. } | Command::RemoveNode { .. },
                _,
            ) => {
                self.reported.lock().expect("reported").clear();
                self.schedule.notify_one();
            }
            (Command::RegisterNode { .. } | Command::SetNodeRole { .. }, _) => {
                self.schedule.notify_one();
            }
            (Command::Forget { .. }, _) => self.reported.lock().expect("reported").clear(),
            (Command::Park { parked: true, .. }, _) => self.schedule.notify_one(),
            _ => {}
        }
    }

    /// A snapshot replaced the state: child calls waiting for reports check the log again,
    /// and the scheduler looks at the new state.
    pub fn on_snapshot(&self) {
        self.reported.lock().expect("reported").clear();
        self.schedule.notify_one();
    }
}

/// An assignment of `req` (as attempt `attempt`) as a Work stream item.
pub fn assignment_item(key: RequestKey, req: &mozen_model::Request, attempt: u32) -> pb::WorkItem {
    pb::WorkItem {
        item: Some(pb::work_item::Item::Assign(pb::Assignment {
            key: key.0.to_vec(),
            function: req.function.clone(),
            args: req.args.clone(),
            attempt,
        })),
    }
}

/// A place on a node held by an assignment on its way to the log.
pub struct Reservation<'a> {
    owner: &'a Leadership,
    node: NodeId,
}

impl<'a> Reservation<'a> {
    /// A guard again for a place kept earlier (see [`keep`](Self::keep)) on `node`.
    pub fn adopt(owner: &'a Leadership, node: NodeId) -> Self {
        Reservation { owner, node }
    }

    /// Keeps the place held past the guard: the holder gives it back with
    /// [`Leadership::release`].
    pub fn keep(self) -> NodeId {
        let node = self.node;
        std::mem::forget(self);
        node
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.owner.release(self.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;
    use std::time::Instant;

    /// `noop(1)`, as submitted.
    fn noop_request() -> NewRequest {
        NewRequest {
            key: RequestKey::of("noop", b"1"),
            function: "noop".into(),
            args: b"1".to_vec(),
            parent: None,
            priority: 0,
            retry: Default::default(),
            no_cache: false,
        }
    }

    fn leadership() -> Leadership {
        Leadership::new(
            1,
            Arc::new(RwLock::new(Default::default())),
            &CancellationToken::new(),
        )
    }

    #[test]
    fn a_reported_value_reaches_the_child_calls_waiting_for_it_once() {
        let l = leadership();
        let key = RequestKey([7; 32]);
        let mut a = l.wait_reported(key);
        let mut b = l.wait_reported(key);
        let mut other = l.wait_reported(RequestKey([8; 32]));
        l.value_reported(&key, b"42", 2, 5);
        for rx in [&mut a, &mut b] {
            let (value, node, ms) = rx.try_recv().expect("the reported value");
            assert_eq!((&value[..], node, ms), (&b"42"[..], 2, 5));
        }
        assert!(
            other.try_recv().is_err(),
            "another key's caller stays waiting"
        );
        // Reported once: a caller registering later waits for the log (or a new report).
        let mut late = l.wait_reported(key);
        assert!(late.try_recv().is_err());
    }

    #[test]
    fn waiting_for_a_reported_value_ends_with_the_request_or_the_leadership() {
        let l = leadership();
        let key = RequestKey([7; 32]);
        let mut finished = l.wait_reported(key);
        l.finished(&key);
        assert_eq!(
            finished.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "finished in the log: no report will come"
        );
        let mut deposed = l.wait_reported(key);
        l.end();
        assert_eq!(
            deposed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        assert!(l.reported.lock().expect("reported").is_empty());
        assert!(l.ended().is_cancelled());
    }

    #[test]
    fn ending_closes_the_work_streams_and_gives_back_every_place() {
        let l = leadership();
        let (tx, mut rx) = mpsc::unbounded_channel();
        l.streams.lock().unwrap().insert(2, Stream { conn: 1, tx });
        {
            let mut reserved = l.reservations();
            l.reserve(&mut reserved, 2).keep();
        }
        let new = noop_request();
        l.flights.lock().unwrap().insert(
            new.key,
            Flight {
                request: new,
                node: 2,
                started: Instant::now(),
                written: false,
                landing: false,
                calls: false,
            },
        );
        l.end();
        assert!(rx.try_recv().is_err() && rx.is_closed(), "stream closed");
        assert_eq!(l.reservations().get(&2), Some(&0));
        assert!(l.flights.lock().unwrap().is_empty());
    }

    /// The state of one node (2) running `noop(1)` as `attempt`, the request's key, and a
    /// leadership over it with node 2's Work stream open.
    fn running_there(
        attempt: u32,
    ) -> (
        Leadership,
        RequestKey,
        mpsc::UnboundedReceiver<Result<pb::WorkItem, tonic::Status>>,
    ) {
        use mozen_model::{NodeInfo, NodeRole, NodeState};
        use mozen_store::{Assignment, ClusterState};
        let mut st = ClusterState::new();
        st.apply(&Command::RegisterNode {
            node: NodeInfo {
                id: 2,
                name: "two".into(),
                addr: "127.0.0.1:2".into(),
                cpus: 1,
                memory_bytes: 1 << 30,
                slots: 3,
                state: NodeState::Active,
                role: NodeRole::Voter,
                labels: Default::default(),
            },
            at: 1,
        });
        let new = noop_request();
        let key = new.key;
        st.apply(&Command::Submit {
            requests: vec![new.clone()],
            at: 2,
        });
        for a in 1..=attempt {
            if a > 1 {
                st.apply(&Command::Requeue {
                    node: 2,
                    keys: Some(vec![key]),
                    reason: "assignment lost".into(),
                    at: 3,
                });
            }
            st.apply(&Command::Assign {
                assignments: vec![Assignment {
                    key,
                    node: 2,
                    attempt: a,
                }],
                at: 3,
            });
        }
        let l = Leadership::new(1, Arc::new(RwLock::new(st)), &CancellationToken::new());
        let (tx, rx) = mpsc::unbounded_channel();
        l.streams.lock().unwrap().insert(2, Stream { conn: 1, tx });
        // It flew to node 2 and was written down there (as attempt 1).
        l.flights.lock().unwrap().insert(
            key,
            Flight {
                request: new,
                node: 2,
                started: Instant::now(),
                written: true,
                landing: false,
                calls: false,
            },
        );
        (l, key, rx)
    }

    fn assigned(l: &Leadership, key: RequestKey, attempt: u32) {
        let cmd = Command::Assign {
            assignments: vec![mozen_store::Assignment {
                key,
                node: 2,
                attempt,
            }],
            at: 3,
        };
        l.on_applied(&cmd, &Response::Assigned(vec![AssignReply::Started]));
    }

    #[test]
    fn a_flight_written_down_where_it_runs_is_not_sent_again() {
        let (l, key, mut rx) = running_there(1);
        assigned(&l, key, 1);
        assert!(rx.try_recv().is_err(), "it runs there already as attempt 0");
        assert!(l.flights.lock().unwrap().contains_key(&key));
    }

    #[test]
    fn a_later_attempt_of_a_written_down_flight_is_sent_and_ends_the_flight() {
        // The written-down run was lost (its worker never ran it) and re-queued: the log's
        // next attempt must reach the worker, however often it lands on the same node.
        let (l, key, mut rx) = running_there(2);
        assigned(&l, key, 2);
        match rx.try_recv() {
            Ok(Ok(pb::WorkItem {
                item: Some(pb::work_item::Item::Assign(a)),
            })) => assert_eq!((a.key, a.attempt), (key.0.to_vec(), 2)),
            other => panic!("expected attempt 2 sent to node 2, got {other:?}"),
        }
        assert!(
            !l.flights.lock().unwrap().contains_key(&key),
            "the flight is the log's now"
        );
    }
}
