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

use crate::node::{Agent, now_ms};
use mozen_model::{NodeId, Outcome, RequestKey, RequestState};
use mozen_proto as pb;
use mozen_store::{Assignment, Command, Completion, NewRequest, Run};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A flight running longer than this is written down (submitted and assigned).
pub const WRITE_DOWN_AFTER: Duration = Duration::from_millis(20);

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
    /// Not express: take the usual way.
    No,
}

/// Starts `new` as an express call when it may be one: express is on, the function is known
/// to be short, the request is unknown to the state and the queue is empty (first come, first
/// served), its parent (if any) runs or flies (written down first with [`write_parent`]), and
/// a worker has a place for it now.
pub fn start(agent: &Agent, new: &NewRequest) -> Start {
    let hub = &agent.hub;
    if !agent.cfg.express || new.no_cache || !hub.is_short(&new.function) {
        return Start::No;
    }
    let parent_flies = {
        let mut flights = hub.flights.lock().expect("flights");
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
        if !matches!(
            state.request(&p).map(|r| r.state),
            Some(RequestState::Running { .. })
        ) {
            return Start::No;
        }
    }
    let Some((_, held)) = crate::leader::place_now(agent, new.key, &new.function, new.parent)
    else {
        return Start::No;
    };
    let node = held.keep();
    {
        let mut flights = hub.flights.lock().expect("flights");
        if flights.contains_key(&new.key) {
            drop(flights);
            hub.release(node);
            return Start::Joined;
        }
        flights.insert(
            new.key,
            Flight {
                request: new.clone(),
                node,
                started: Instant::now(),
                written: false,
                landing: false,
                calls: false,
            },
        );
    }
    let item = pb::WorkItem {
        item: Some(pb::work_item::Item::Assign(pb::Assignment {
            key: new.key.0.to_vec(),
            function: new.function.clone(),
            args: new.args.clone(),
            attempt: 0,
        })),
    };
    if !hub.send_work(node, item) {
        hub.flights.lock().expect("flights").remove(&new.key);
        hub.release(node);
        return Start::No;
    }
    Start::Flying
}

/// Writes `parent` down if it flies and is not yet: a child call, express or not, needs its
/// parent in the log.
pub async fn write_parent(agent: &Agent, parent: Option<RequestKey>) {
    let Some(p) = parent else { return };
    let due = agent
        .hub
        .flights
        .lock()
        .expect("flights")
        .get(&p)
        .is_some_and(|f| !f.written);
    if due {
        write_down(agent, Some(&[p])).await;
    }
}

/// Whether `key` flies (runs here before being written down).
pub fn flies(agent: &Agent, key: &RequestKey) -> bool {
    agent.hub.flights.lock().expect("flights").contains_key(key)
}

/// Turns completions of express runs (attempt 0) into the facts that record them: a value
/// becomes a `Ran`; a failure is recorded as an attempt 1 of the request on that node, written
/// down with it if it was not yet, so that it fails or is retried as any attempt (with its
/// error chain). Completions of flights this leader does not hold (an earlier leader's) are
/// dropped: their callers sent the calls again. Also returns (function, milliseconds) of each
/// value of a request that called none.
pub fn land(agent: &Agent, done: Vec<Completion>) -> (Vec<Command>, Vec<(String, u64)>) {
    let hub = &agent.hub;
    let mut runs = Vec::new();
    let mut submits = Vec::new();
    let mut assignments = Vec::new();
    let mut failed = Vec::new();
    let mut durations = Vec::new();
    {
        let mut flights = hub.flights.lock().expect("flights");
        for c in done {
            let Some(f) = flights.get_mut(&c.key) else {
                continue;
            };
            if f.landing {
                continue;
            }
            if f.holds_place() {
                hub.release(f.node);
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
                    failed.push(Completion {
                        attempt: 1,
                        node: f.node,
                        outcome,
                        ..c
                    });
                }
            }
        }
    }
    let at = now_ms();
    let mut cmds = Vec::new();
    if !runs.is_empty() {
        cmds.push(Command::Ran { runs, at });
    }
    if !submits.is_empty() {
        cmds.push(Command::Submit {
            requests: submits,
            at,
        });
        cmds.push(Command::Assign { assignments, at });
    }
    if !failed.is_empty() {
        cmds.push(Command::Complete {
            completions: failed,
            at,
        });
    }
    hub.schedule.notify_one();
    (cmds, durations)
}

/// Writes flights down: submitted and assigned to the node they run on (attempt 1), so that
/// the log holds them from now on. `keys` None: every flight running longer than
/// [`WRITE_DOWN_AFTER`]. The worker goes on with its run; its value is recorded by `Ran`.
pub async fn write_down(agent: &Agent, keys: Option<&[RequestKey]>) {
    let hub = &agent.hub;
    let now = Instant::now();
    let mut requests = Vec::new();
    let mut assignments = Vec::new();
    let mut held = Vec::new();
    {
        let mut flights = hub.flights.lock().expect("flights");
        for (key, f) in flights.iter_mut() {
            let due = match keys {
                Some(ks) => ks.contains(key),
                None => now.duration_since(f.started) >= WRITE_DOWN_AFTER,
            };
            if !due || f.written || f.landing {
                continue;
            }
            if f.holds_place() {
                held.push(f.node);
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
    let cmd = Command::Batch(vec![
        Command::Submit { requests, at },
        Command::Assign { assignments, at },
    ]);
    if let Err(e) = agent.propose(cmd).await {
        warn!("writing express calls down: {e}");
    }
    // The state counts their places now (or they went back to the queue).
    for node in held {
        hub.release(node);
    }
}

/// Flights on `node`, whose Work stream ended, end: those not written down give their places
/// back and are submitted to the queue (the node may be gone).
pub fn orphan(hub: &crate::hub::Hub, node: NodeId) {
    let mut lost = Vec::new();
    {
        let mut flights = hub.flights.lock().expect("flights");
        // Written-down ones are the log's now: it re-queues them when the node is marked down.
        flights.retain(|_, f| {
            let keep = f.node != node || f.landing;
            if !keep && !f.written {
                hub.release(node);
                lost.push(f.request.clone());
            }
            keep
        });
    }
    if lost.is_empty() {
        return;
    }
    hub.orphans.lock().expect("orphans").extend(lost);
    hub.express.notify_one();
}

/// Forgets every flight (leadership is lost): their callers send the calls again.
pub fn drop_all(hub: &crate::hub::Hub) {
    let gone: Vec<Flight> = hub
        .flights
        .lock()
        .expect("flights")
        .drain()
        .map(|(_, f)| f)
        .collect();
    for f in gone.into_iter().filter(Flight::holds_place) {
        hub.release(f.node);
    }
    hub.orphans.lock().expect("orphans").clear();
}

/// The leader's express housekeeping: writes down long flights and submits orphaned ones.
pub async fn run(agent: std::sync::Arc<Agent>, token: CancellationToken) {
    let tick = WRITE_DOWN_AFTER / 4;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = agent.hub.express.notified() => {}
            _ = token.cancelled() => return,
        }
        let orphans: Vec<NewRequest> =
            std::mem::take(&mut *agent.hub.orphans.lock().expect("orphans"));
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
            let flights = agent.hub.flights.lock().expect("flights");
            let now = Instant::now();
            flights.values().any(|f| {
                !f.written && !f.landing && now.duration_since(f.started) >= WRITE_DOWN_AFTER
            })
        };
        if due {
            write_down(&agent, None).await;
        }
    }
}

/// Flights by key (leader memory).
pub type Flights = HashMap<RequestKey, Flight>;
