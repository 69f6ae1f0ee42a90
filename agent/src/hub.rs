//! The hub: what the agent does when the state machine applies commands.
//!
//! The store calls [`Hub::applied`] after each applied batch (on every voter). From it:
//! callers waiting on a request are woken when it finishes, assignments are pushed down the
//! Work streams of the nodes that run them (only the leader holds streams), cancellations are
//! broadcast to workers, and the scheduler is nudged when queue or capacity changed.
//! Liveness (last heartbeat per node) and throughput rates live here too: they are leader
//! memory, never log entries, and a new leader starts them afresh.

use mozen_model::{NodeId, Outcome, RequestKey};
use mozen_proto as pb;
use mozen_store::{ApplyObserver, AssignReply, Command, CompleteReply, Response, SharedState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{Notify, mpsc, oneshot};

/// What a waiter on a request is woken with: the request's value when the command that
/// finished it carried one.
pub type Woken = Option<Arc<[u8]>>;

/// A value a worker reported, before it is committed: (value, node, milliseconds it ran).
pub type Reported = (Arc<[u8]>, NodeId, u64);

/// A worker's open Work stream.
pub struct Stream {
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Result<pb::WorkItem, tonic::Status>>,
}

/// Per-node liveness and throughput, kept by the leader.
#[derive(Default)]
pub struct Liveness {
    pub last_seen: HashMap<NodeId, Instant>,
    /// Agents shutting down: no new work for them.
    pub leaving: HashSet<NodeId>,
    /// Completed attempts per node since this agent started.
    pub completed: HashMap<NodeId, u64>,
    /// Completions per second per node, refreshed about every second.
    pub rates: HashMap<NodeId, f64>,
    last_totals: HashMap<NodeId, u64>,
    last_rate_at: Option<Instant>,
    /// Requests re-queued when each node was marked down, until it is heard from again.
    pub requeued_at_down: HashMap<NodeId, u64>,
    /// Nodes marked down that were heard from again (a false suspicion), since this agent
    /// last became leader.
    pub false_suspicions: u64,
    /// Requests re-queued by those false suspicions: each may have run twice.
    pub reexecuted_after_false_suspicion: u64,
}

impl Liveness {
    /// Recomputes the per-node rates when a second has passed.
    pub fn refresh_rates(&mut self) {
        let now = Instant::now();
        let Some(prev) = self.last_rate_at else {
            self.last_rate_at = Some(now);
            self.last_totals = self.completed.clone();
            return;
        };
        let dt = now.duration_since(prev).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        for (node, total) in &self.completed {
            let before = self.last_totals.get(node).copied().unwrap_or(0);
            self.rates.insert(*node, (total - before) as f64 / dt);
        }
        self.last_totals = self.completed.clone();
        self.last_rate_at = Some(now);
    }
}

/// A function whose mean run time is at most this is short: its requests may wait in a
/// worker's local queue (see the scheduler).
pub const SHORT_MS: f64 = 5.0;

pub struct Hub {
    pub state: SharedState,
    /// Mean run time per function in milliseconds (moving average), learned by the leader
    /// from completions: leader memory, never a log entry.
    durations: Mutex<HashMap<String, f64>>,
    /// Places the leader handed out whose assignment is not applied yet, per node.
    reserved: Mutex<HashMap<NodeId, u32>>,
    waiters: Mutex<HashMap<RequestKey, Vec<oneshot::Sender<Woken>>>>,
    /// Child calls waiting for a value as soon as a worker reports it (see
    /// [`Hub::wait_reported`]). Leader memory.
    reported: Mutex<HashMap<RequestKey, Vec<oneshot::Sender<Reported>>>>,
    pub streams: Mutex<HashMap<NodeId, Stream>>,
    pub liveness: Mutex<Liveness>,
    /// Wakes the leader's scheduler loop.
    pub schedule: Notify,
    /// Wakes the leader's liveness and housekeeping loop (node table changed).
    pub nodes_changed: Notify,
    /// Express calls running before they are written down (leader memory).
    pub flights: Mutex<crate::express::Flights>,
    /// Express calls waiting for a place (leader memory).
    pub held: Mutex<crate::express::Held>,
    /// Express calls whose worker's stream ended, to submit to the queue.
    pub orphans: Mutex<Vec<mozen_store::NewRequest>>,
    /// Wakes the leader's express housekeeping.
    pub express: Notify,
}

impl Hub {
    pub fn new(state: SharedState) -> Self {
        Hub {
            state,
            waiters: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            durations: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            liveness: Mutex::new(Liveness::default()),
            schedule: Notify::new(),
            nodes_changed: Notify::new(),
            flights: Mutex::new(HashMap::new()),
            held: Mutex::new(Default::default()),
            orphans: Mutex::new(Vec::new()),
            express: Notify::new(),
        }
    }

    /// Registers interest in `key` finishing. Register before checking the state, then check,
    /// then await: a finish applied in between still wakes the receiver.
    pub fn wait_for(&self, key: RequestKey) -> oneshot::Receiver<Woken> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .entry(key)
            .or_default()
            .push(tx);
        rx
    }

    /// Registers a child call's interest in `key`'s value as soon as a worker reports it,
    /// before it is committed. The sender is dropped (the receiver sees an error) once the
    /// request finishes in the log or leadership ends.
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

    /// Wakes the callers waiting on `key`, handing them its value when the applied command
    /// carries it (so that they need not read it back from the store).
    fn wake(&self, key: &RequestKey, value: Option<&[u8]>) {
        self.reported.lock().expect("reported").remove(key);
        if let Some(ws) = self.waiters.lock().expect("waiters").remove(key) {
            let value: Woken = value.map(Arc::from);
            for w in ws {
                let _ = w.send(value.clone());
            }
        }
    }

    /// A request finished in the log: an express flight of it is over.
    fn landed(&self, key: &RequestKey) {
        let mut flights = self.flights.lock().expect("flights");
        if let Some(f) = flights.remove(key)
            && f.holds_place()
        {
            drop(flights);
            self.release(f.node);
        }
    }

    /// Wakes every caller waiting on a request.
    pub fn wake_all(&self) {
        self.reported.lock().expect("reported").clear();
        let all: Vec<_> = self.waiters.lock().expect("waiters").drain().collect();
        for (_, ws) in all {
            for w in ws {
                let _ = w.send(None);
            }
        }
    }

    /// Places held by assignments not applied yet, per node. Hold the guard while deciding a
    /// placement and call [`Hub::reserve`] with it, so that concurrent decisions see each other.
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
        Reservation { hub: self, node }
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

    fn on(&self, cmd: &Command, resp: &Response) {
        match (cmd, resp) {
            (Command::Batch(cs), Response::Batch(rs)) => {
                for (c, r) in cs.iter().zip(rs) {
                    self.on(c, r);
                }
            }
            (Command::Submit { .. }, _) => self.schedule.notify_one(),
            (Command::Assign { assignments, .. }, Response::Assigned(replies)) => {
                let has_streams = !self.streams.lock().expect("streams").is_empty();
                if !has_streams {
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
                    let item = pb::WorkItem {
                        item: Some(pb::work_item::Item::Assign(pb::Assignment {
                            key: a.key.0.to_vec(),
                            function: req.function.clone(),
                            args: req.args.clone(),
                            attempt: a.attempt,
                        })),
                    };
                    self.send_work(a.node, item);
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
                        self.landed(&c.key);
                        let value = match &c.outcome {
                            Outcome::Value(v) => Some(v.as_slice()),
                            Outcome::Error(_) => None,
                        };
                        self.wake(&c.key, value);
                    }
                }
                self.schedule.notify_one();
            }
            (Command::Ran { runs, .. }, Response::Ran(ran)) => {
                for (r, counted) in runs.iter().zip(ran) {
                    self.landed(&r.request.key);
                    self.wake(&r.request.key, counted.then_some(r.value.as_slice()));
                }
            }
            (Command::Cancel { .. }, Response::Cancelled(keys)) => {
                for k in keys {
                    self.landed(k);
                    self.wake(k, None);
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
                self.wake_all();
                self.schedule.notify_one();
                self.nodes_changed.notify_one();
            }
            (Command::RegisterNode { .. } | Command::SetNodeRole { .. }, _) => {
                self.schedule.notify_one();
                self.nodes_changed.notify_one();
            }
            (Command::Forget { .. }, _) => self.wake_all(),
            (Command::Park { parked: true, .. }, _) => self.schedule.notify_one(),
            _ => {}
        }
    }
}

/// A place on a node held by an assignment on its way to the log.
pub struct Reservation<'a> {
    hub: &'a Hub,
    node: NodeId,
}

impl<'a> Reservation<'a> {
    /// A guard again for a place kept earlier (see [`keep`](Self::keep)) on `node`.
    pub fn adopt(hub: &'a Hub, node: NodeId) -> Self {
        Reservation { hub, node }
    }

    /// Keeps the place held past the guard: the holder gives it back with [`Hub::release`].
    pub fn keep(self) -> NodeId {
        let node = self.node;
        std::mem::forget(self);
        node
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.hub.release(self.node);
    }
}

impl ApplyObserver for Hub {
    fn applied(&self, batch: &[(u64, &Command, &Response)]) {
        for (_, c, r) in batch {
            self.on(c, r);
        }
    }

    fn snapshot_installed(&self) {
        self.wake_all();
        self.schedule.notify_one();
        self.nodes_changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;

    fn hub() -> Hub {
        Hub::new(Arc::new(RwLock::new(Default::default())))
    }

    #[test]
    fn a_reported_value_reaches_the_child_calls_waiting_for_it_once() {
        let hub = hub();
        let key = RequestKey([7; 32]);
        let mut a = hub.wait_reported(key);
        let mut b = hub.wait_reported(key);
        let mut other = hub.wait_reported(RequestKey([8; 32]));
        hub.value_reported(&key, b"42", 2, 5);
        for rx in [&mut a, &mut b] {
            let (value, node, ms) = rx.try_recv().expect("the reported value");
            assert_eq!((&value[..], node, ms), (&b"42"[..], 2, 5));
        }
        assert!(
            other.try_recv().is_err(),
            "another key's caller stays waiting"
        );
        // Reported once: a caller registering later waits for the log (or a new report).
        let mut late = hub.wait_reported(key);
        assert!(late.try_recv().is_err());
    }

    #[test]
    fn waiting_for_a_reported_value_ends_with_the_request_or_the_leadership() {
        let hub = hub();
        let key = RequestKey([7; 32]);
        let mut finished = hub.wait_reported(key);
        hub.wake(&key, None);
        assert_eq!(
            finished.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "finished in the log: no report will come"
        );
        let mut deposed = hub.wait_reported(key);
        hub.wake_all();
        assert_eq!(
            deposed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
        assert!(hub.reported.lock().expect("reported").is_empty());
    }

    /// The state of one node (2) running `noop(1)` as `attempt`, the request's key, and a hub
    /// over it with node 2's Work stream open.
    fn running_there(
        attempt: u32,
    ) -> (
        Hub,
        RequestKey,
        mpsc::UnboundedReceiver<Result<pb::WorkItem, tonic::Status>>,
    ) {
        use mozen_model::{NodeInfo, NodeRole, NodeState, RetryPolicy};
        use mozen_store::{Assignment, ClusterState, NewRequest};
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
        let new = NewRequest {
            key: RequestKey::of("noop", b"1"),
            function: "noop".into(),
            args: b"1".to_vec(),
            parent: None,
            priority: 0,
            retry: RetryPolicy::default(),
            no_cache: false,
        };
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
        let hub = Hub::new(Arc::new(std::sync::RwLock::new(st)));
        let (tx, rx) = mpsc::unbounded_channel();
        hub.streams
            .lock()
            .unwrap()
            .insert(2, Stream { conn: 1, tx });
        // It flew to node 2 and was written down there (as attempt 1).
        hub.flights.lock().unwrap().insert(
            key,
            crate::express::Flight {
                request: new,
                node: 2,
                started: Instant::now(),
                written: true,
                landing: false,
                calls: false,
            },
        );
        (hub, key, rx)
    }

    fn assigned(hub: &Hub, key: RequestKey, attempt: u32) {
        let cmd = Command::Assign {
            assignments: vec![mozen_store::Assignment {
                key,
                node: 2,
                attempt,
            }],
            at: 3,
        };
        hub.on(&cmd, &Response::Assigned(vec![AssignReply::Started]));
    }

    #[test]
    fn a_flight_written_down_where_it_runs_is_not_sent_again() {
        let (hub, key, mut rx) = running_there(1);
        assigned(&hub, key, 1);
        assert!(rx.try_recv().is_err(), "it runs there already as attempt 0");
        assert!(hub.flights.lock().unwrap().contains_key(&key));
    }

    #[test]
    fn a_later_attempt_of_a_written_down_flight_is_sent_and_ends_the_flight() {
        // The written-down run was lost (its worker never ran it) and re-queued: the log's
        // next attempt must reach the worker, however often it lands on the same node.
        let (hub, key, mut rx) = running_there(2);
        assigned(&hub, key, 2);
        match rx.try_recv() {
            Ok(Ok(pb::WorkItem {
                item: Some(pb::work_item::Item::Assign(a)),
            })) => assert_eq!((a.key, a.attempt), (key.0.to_vec(), 2)),
            other => panic!("expected attempt 2 sent to node 2, got {other:?}"),
        }
        assert!(
            !hub.flights.lock().unwrap().contains_key(&key),
            "the flight is the log's now"
        );
    }
}
