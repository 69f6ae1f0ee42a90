//! Express calls: a short call whose caller waits runs before anything is written down.
//!
//! The usual journey of a call takes two commits: its submission (with its assignment), then
//! its completion. For a function known to be short, called by a client or a worker that
//! waits for the value, the leader instead sends the request to a worker at once (attempt 0)
//! and keeps it in memory as a *flight*; the completion is then written down as one
//! [`Command::Ran`] fact (submitted, run there, done with this value), and the caller is
//! answered once that fact is committed. One commit per call instead of two, and one fact
//! instead of three.
//!
//! What is not written down is only what its caller still holds: if the leader dies, the
//! caller's call breaks and it sends it again to the next leader (clients and workers do),
//! where it runs again (functions are pure). Whatever lasts is written down the usual way:
//! a flight still running after [`WRITE_DOWN_AFTER`] is submitted and assigned in the log
//! (then node losses re-queue it as any request); a flight whose worker's stream breaks is
//! submitted to the queue; a failure is written down as a failed attempt, retried or final
//! as for any request, with its error chain; a flight that calls another is written down
//! before its child starts, so that the log always knows a child's parent. A detached
//! submission (`Submit`) is never express.
//!
//! A call that may be express but finds no place free (and nothing queued in the log) is
//! *held*: it waits in leader memory, in queue order (priority, then arrival), and flies as
//! soon as a place frees ([`Leadership::fly_held`], run before each scheduling pass, so held calls go
//! before anything queued in the log after them). While calls are held, new calls of any kind
//! queue behind them. Like a flight, a held call is its caller's until it lands: on a leader
//! change the caller sends it again. At most [`HELD_LIMIT`] calls are held; past that calls
//! take the usual way. A held call that is cancelled is written down (submitted) first.

use super::schedule::preferred_node;
use super::{Leadership, Nodes, PLAN_LIMIT, Reservation};
use crate::context::{Context, now_ms};
use mozen_model::{NodeId, Outcome, RequestKey, RequestState};
use mozen_proto as pb;
use mozen_scheduler::{Candidate, plan_on};
use mozen_store::{Assignment, Command, Completion, NewRequest, Run};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// A flight running longer than this is written down (submitted and assigned).
pub const WRITE_DOWN_AFTER: Duration = Duration::from_millis(20);

/// Most calls held in leader memory at once; past that calls are queued in the log.
pub const HELD_LIMIT: usize = 100_000;

/// Express calls waiting in leader memory for a place, in queue order.
#[derive(Default)]
pub struct Held {
    order: BTreeMap<(Reverse<i32>, u64), NewRequest>,
    keys: HashMap<RequestKey, (Reverse<i32>, u64)>,
    seq: u64,
}

impl Held {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, key: &RequestKey) -> bool {
        self.keys.contains_key(key)
    }

    fn push(&mut self, new: NewRequest) {
        self.seq += 1;
        let at = (Reverse(new.priority), self.seq);
        self.keys.insert(new.key, at);
        self.order.insert(at, new);
    }

    fn remove(&mut self, key: &RequestKey) -> Option<NewRequest> {
        let at = self.keys.remove(key)?;
        self.order.remove(&at)
    }

    /// The function of each held call.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.order.values().map(|r| r.function.as_str())
    }

    fn clear(&mut self) {
        self.order.clear();
        self.keys.clear();
    }
}

/// A call running before it is written down.
pub struct Flight {
    pub request: NewRequest,
    pub node: NodeId,
    pub started: Instant,
    /// Submitted and assigned in the log; its place is counted there, not reserved.
    pub written: bool,
    /// Its value is on its way to the log; its place was given back.
    pub landing: bool,
    /// It called other requests: its run time, mostly waiting, says nothing about how short
    /// its function is.
    pub calls: bool,
}

impl Flight {
    /// `request` starting now on `node`, its place reserved.
    fn new(request: NewRequest, node: NodeId) -> Self {
        Flight {
            request,
            node,
            started: Instant::now(),
            written: false,
            landing: false,
            calls: false,
        }
    }

    /// Whether a place on its node is reserved for it.
    pub fn holds_place(&self) -> bool {
        !self.written && !self.landing
    }
}

/// What [`start`] did with a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Sent to a worker; wait for the key.
    Flying,
    /// The same call is already flying; wait for the key.
    Joined,
    /// Held in leader memory until a place frees; wait for the key.
    Held,
    /// Not express: take the usual way.
    No,
}

impl Leadership {
    /// Starts `new` as an express call when it may be one: express is on, the function is known
    /// to be short, the request is unknown to the state and the queue is empty (first come, first
    /// served), its parent (if any) runs or flies (written down first with [`Leadership::write_parent`]). It
    /// flies when a worker has a place for it now, else it is held (see [`Held`]).
    pub fn start_express(&self, agent: &Context, new: &NewRequest) -> Start {
        if !agent.cfg.express || new.no_cache || !self.is_short(&new.function) {
            return Start::No;
        }
        let parent_flies = {
            let mut flights = self.flights.lock().expect("flights");
            if flights.contains_key(&new.key) {
                return Start::Joined;
            }
            // The caller wrote a flying parent down first (`write_parent`).
            match new.parent.and_then(|p| flights.get_mut(&p)) {
                Some(p) => {
                    p.calls = true;
                    true
                }
                None => false,
            }
        };
        if let Some(p) = new.parent.filter(|_| !parent_flies) {
            let state = agent.sm.shared();
            let state = state.read().expect("state");
            if !matches!(state.request_state(&p), Some(RequestState::Running { .. })) {
                return Start::No;
            }
        }
        let Some((_, held)) = self.place_now(agent, new.key, &new.function, new.parent) else {
            return self.hold(agent, new);
        };
        let node = held.keep();
        {
            let mut flights = self.flights.lock().expect("flights");
            if flights.contains_key(&new.key) {
                drop(flights);
                self.release(node);
                return Start::Joined;
            }
            flights.insert(new.key, Flight::new(new.clone(), node));
        }
        if !self.send_work(node, assign_item(new)) {
            self.flights.lock().expect("flights").remove(&new.key);
            self.release(node);
            return Start::No;
        }
        Start::Flying
    }

    /// Holds `new` until a place frees, when nothing is queued in the log and it is unknown to
    /// the state (the usual way joins or answers known requests).
    fn hold(&self, agent: &Context, new: &NewRequest) -> Start {
        {
            let state = agent.sm.shared();
            let state = state.read().expect("state");
            if state.queue().next().is_some() || state.request(&new.key).is_some() {
                return Start::No;
            }
            let flights = self.flights.lock().expect("flights");
            let mut held = self.held.lock().expect("held");
            if flights.contains_key(&new.key) || held.contains(&new.key) {
                return Start::Joined;
            }
            if held.len() >= HELD_LIMIT {
                return Start::No;
            }
            held.push(new.clone());
        }
        // A place may have freed since this call found none.
        self.schedule.notify_one();
        Start::Held
    }

    /// Flies held calls, in queue order, into the places free now (run by the leader's scheduler
    /// before it plans the log's queue). A call whose worker cannot be reached is submitted to the
    /// queue.
    pub fn fly_held(&self, agent: &Context) {
        if self.held.lock().expect("held").is_empty() {
            return;
        }
        let mut sends = Vec::new();
        {
            let state = agent.sm.shared();
            let state = state.read().expect("state");
            let mut flights = self.flights.lock().expect("flights");
            let mut held = self.held.lock().expect("held");
            let mut reserved = self.reservations();
            let placed = self.with_eligible(|eligible| {
                let nodes = Nodes::new(&state, eligible, &reserved, true);
                // Planned as the queue is read: a pass costs what it places, not the held count.
                let candidates = held.order.values().map(|r| Candidate {
                    key: r.key,
                    preferred: preferred_node(&state, r.parent.as_slice()),
                    ready: true,
                    short: true,
                });
                plan_on(&nodes, candidates, PLAN_LIMIT)
            });
            for p in placed {
                let Some(new) = held.remove(&p.key) else {
                    continue;
                };
                self.reserve(&mut reserved, p.node).keep();
                sends.push((p.node, p.key, assign_item(&new)));
                flights.insert(new.key, Flight::new(new, p.node));
            }
        }
        let mut lost = Vec::new();
        for (node, key, item) in sends {
            if !self.send_work(node, item)
                && let Some(f) = self.flights.lock().expect("flights").remove(&key)
            {
                self.release(node);
                lost.push(f.request);
            }
        }
        if !lost.is_empty() {
            self.orphans.lock().expect("orphans").extend(lost);
            self.express.notify_one();
        }
    }

    /// Writes `parent` down if it flies and is not yet: a child call, express or not, needs its
    /// parent in the log.
    pub async fn write_parent(&self, agent: &Context, parent: Option<RequestKey>) {
        let Some(p) = parent else { return };
        let due = self
            .flights
            .lock()
            .expect("flights")
            .get(&p)
            .is_some_and(|f| !f.written);
        if due {
            self.write_down(agent, Some(&[p])).await;
        }
    }

    /// Whether any of the express completions `done` is of a run this leader does not hold.
    pub fn any_stray(&self, done: &[Completion]) -> bool {
        if done.is_empty() {
            return false;
        }
        let flights = self.flights.lock().expect("flights");
        done.iter().any(|c| !flights.contains_key(&c.key))
    }

    /// The node an express flight of `key` runs on, if one flies.
    pub fn flight_node(&self, key: &RequestKey) -> Option<NodeId> {
        self.flights
            .lock()
            .expect("flights")
            .get(key)
            .map(|f| f.node)
    }

    /// Whether `key` flies (runs here before being written down) or is held to fly.
    pub fn flies(&self, key: &RequestKey) -> bool {
        self.flights.lock().expect("flights").contains_key(key) || self.is_held(key)
    }

    /// Whether `key` is held in leader memory, waiting for a place.
    pub fn is_held(&self, key: &RequestKey) -> bool {
        self.held.lock().expect("held").contains(key)
    }

    /// Turns completions of express runs (attempt 0) into the facts that record them: a value
    /// becomes a `Ran`; a failure is recorded as an attempt 1 of the request on that node, written
    /// down with it if it was not yet, so that it fails or is retried as any attempt (with its
    /// error chain). A completion of a flight this leader does not hold (an earlier leader's)
    /// counts for the attempt the log shows running on that node, if an earlier leader wrote it
    /// down; else it is dropped: its caller sent the call again. Also returns (function,
    /// milliseconds) of each value of a request that called none.
    pub fn land(
        &self,
        agent: &Context,
        done: Vec<Completion>,
    ) -> (Vec<Command>, Vec<(String, u64)>) {
        let mut runs = Vec::new();
        let mut submits = Vec::new();
        let mut assignments = Vec::new();
        let mut complete = Vec::new();
        let mut durations = Vec::new();
        let mut strays = Vec::new();
        {
            let mut flights = self.flights.lock().expect("flights");
            for c in done {
                let Some(f) = flights.get_mut(&c.key) else {
                    strays.push(c);
                    continue;
                };
                if f.landing {
                    continue;
                }
                if f.holds_place() {
                    self.release(f.node);
                }
                match c.outcome {
                    Outcome::Value(value) => {
                        f.landing = true;
                        if !f.calls {
                            durations.push((f.request.function.clone(), c.duration_ms));
                        }
                        runs.push(Run {
                            request: f.request.clone(),
                            node: c.node,
                            duration_ms: c.duration_ms,
                            value,
                        });
                    }
                    outcome @ Outcome::Error(_) => {
                        let f = flights.remove(&c.key).expect("present");
                        if !f.written {
                            submits.push(f.request);
                            assignments.push(Assignment {
                                key: c.key,
                                node: f.node,
                                attempt: 1,
                            });
                        }
                        complete.push(Completion {
                            attempt: 1,
                            node: f.node,
                            outcome,
                            ..c
                        });
                    }
                }
            }
        }
        for c in strays {
            if let Some(attempt) = written_attempt(agent, &c.key, c.node) {
                complete.push(Completion { attempt, ..c });
            }
        }
        let at = now_ms();
        let mut cmds = Vec::new();
        // Each run holds arguments and a value: groups of bounded size, one entry each.
        let run_bytes = |r: &Run| r.request.args.len() + r.value.len() + 64;
        for runs in crate::proposer::chunk_by_bytes(runs, run_bytes) {
            cmds.push(Command::Ran { runs, at });
        }
        if !submits.is_empty() {
            cmds.push(Command::Submit {
                requests: submits,
                at,
            });
            cmds.push(Command::Assign { assignments, at });
        }
        if !complete.is_empty() {
            cmds.push(Command::Complete {
                completions: complete,
                at,
            });
        }
        self.schedule.notify_one();
        (cmds, durations)
    }

    /// Writes flights down: submitted and assigned to the node they run on (attempt 1), so that
    /// the log holds them from now on. `keys` None: every flight running longer than
    /// [`WRITE_DOWN_AFTER`]. The worker goes on with its run; its value is recorded by `Ran`.
    /// Held calls among `keys` are submitted to the queue.
    pub async fn write_down(&self, agent: &Context, keys: Option<&[RequestKey]>) {
        let now = Instant::now();
        let mut requests = Vec::new();
        let mut assignments = Vec::new();
        let mut held = Vec::new();
        if let Some(ks) = keys {
            let mut waiting = self.held.lock().expect("held");
            requests.extend(ks.iter().filter_map(|k| waiting.remove(k)));
        }
        {
            let mut flights = self.flights.lock().expect("flights");
            for (key, f) in flights.iter_mut() {
                let due = match keys {
                    Some(ks) => ks.contains(key),
                    None => now.duration_since(f.started) >= WRITE_DOWN_AFTER,
                };
                if !due || f.written || f.landing {
                    continue;
                }
                if f.holds_place() {
                    held.push(Reservation::adopt(self, f.node));
                }
                f.written = true;
                requests.push(f.request.clone());
                assignments.push(Assignment {
                    key: *key,
                    node: f.node,
                    attempt: 1,
                });
            }
        }
        if requests.is_empty() {
            return;
        }
        let at = now_ms();
        let mut cmds = vec![Command::Submit { requests, at }];
        if !assignments.is_empty() {
            cmds.push(Command::Assign { assignments, at });
        }
        // The state counts their places once this commits (or they went back to the queue). The
        // places are given back as `held` drops, also when a caller stops waiting (a child call
        // answered by its reported value meanwhile): they must not stay reserved for ever.
        if let Err(e) = agent.propose(Command::Batch(cmds)).await {
            warn!("writing express calls down: {e}");
        }
        drop(held);
    }

    /// Flights on `node`, whose Work stream ended, end: those not written down give their places
    /// back and are submitted to the queue (the node may be gone).
    pub fn orphan(&self, node: NodeId) {
        let mut lost = Vec::new();
        {
            let mut flights = self.flights.lock().expect("flights");
            // Written-down ones are the log's now: it re-queues them when the node is marked down.
            flights.retain(|_, f| {
                let keep = f.node != node || f.landing;
                if !keep && !f.written {
                    self.release(node);
                    lost.push(f.request.clone());
                }
                keep
            });
        }
        if lost.is_empty() {
            return;
        }
        self.orphans.lock().expect("orphans").extend(lost);
        self.express.notify_one();
    }

    /// Forgets every flight (leadership is lost): their callers send the calls again.
    pub(super) fn drop_flights(&self) {
        let gone: Vec<Flight> = self
            .flights
            .lock()
            .expect("flights")
            .drain()
            .map(|(_, f)| f)
            .collect();
        for f in gone.into_iter().filter(Flight::holds_place) {
            self.release(f.node);
        }
        self.held.lock().expect("held").clear();
        self.orphans.lock().expect("orphans").clear();
    }

    /// The leader's express housekeeping: writes down long flights and submits orphaned ones.
    pub(super) async fn express_loop(self: Arc<Self>, agent: Arc<Context>) {
        let tick = WRITE_DOWN_AFTER / 4;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.express.notified() => {}
                _ = self.token.cancelled() => return,
            }
            let orphans: Vec<NewRequest> =
                std::mem::take(&mut *self.orphans.lock().expect("orphans"));
            if !orphans.is_empty()
                && let Err(e) = agent
                    .propose(Command::Submit {
                        requests: orphans,
                        at: now_ms(),
                    })
                    .await
            {
                warn!("submitting express calls of a lost worker: {e}");
            }
            let due = {
                let flights = self.flights.lock().expect("flights");
                let now = Instant::now();
                flights.values().any(|f| {
                    !f.written && !f.landing && now.duration_since(f.started) >= WRITE_DOWN_AFTER
                })
            };
            if due {
                self.write_down(&agent, None).await;
            }
        }
    }
}

/// The express assignment (attempt 0) of `new`.
fn assign_item(new: &NewRequest) -> pb::WorkItem {
    pb::WorkItem {
        item: Some(pb::work_item::Item::Assign(pb::Assignment {
            key: new.key.0.to_vec(),
            function: new.function.clone(),
            args: new.args.clone(),
            attempt: 0,
        })),
    }
}

/// The attempt of `key` the log shows running on `node`: what an express run there (attempt
/// 0) stands for once it was written down.
pub fn written_attempt(agent: &Context, key: &RequestKey, node: NodeId) -> Option<u32> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    match state.request(key).map(|r| r.state) {
        Some(RequestState::Running {
            node: n, attempt, ..
        }) if n == node => Some(attempt),
        _ => None,
    }
}

/// Flights by key (leader memory).
pub type Flights = HashMap<RequestKey, Flight>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;

    #[test]
    fn places_of_a_write_down_are_given_back_when_its_caller_stops_waiting() {
        let hub = Leadership::new(
            1,
            Arc::new(RwLock::new(Default::default())),
            &tokio_util::sync::CancellationToken::new(),
        );
        {
            let mut reserved = hub.reservations();
            hub.reserve(&mut reserved, 1).keep();
            hub.reserve(&mut reserved, 1).keep();
        }
        let write_down = async {
            let _places = [Reservation::adopt(&hub, 1), Reservation::adopt(&hub, 1)];
            // The proposal never commits while the caller waits.
            std::future::pending::<()>().await;
        };
        // The caller stops waiting (a child call answered by its reported value): the
        // future is dropped mid-await.
        let mut fut = Box::pin(write_down);
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
        assert_eq!(hub.reservations().get(&1), Some(&0));
    }
}
