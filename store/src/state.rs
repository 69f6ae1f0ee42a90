//! The replicated state and its pure transition function.
//!
//! `ClusterState::apply` reads no clock, does no I/O and draws no random numbers: the same
//! commands in the same order give the same state on every voter. Result payloads do not stay
//! here: completing a request pushes an [`Effect`] that the storage layer writes to sled in the
//! same step, so a million memoized results do not have to fit in RAM.

use crate::command::*;
use crate::finished::{Finished, Profiles, packed};
use mozen_model::{
    LoadIndex, Millis, NodeId, NodeInfo, NodeLoad, NodeRole, NodeState, Outcome, Request,
    RequestKey, RequestState, RetryPolicy, TaskError, codes,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::owners::QueueKey;
pub use crate::owners::{Owners, UNKNOWN, Usage};

/// How many recent events the state keeps for the console and `mozen events`.
pub const EVENT_LOG_LEN: usize = 256;

/// Execution counters of one function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCounters {
    /// Requests enqueued (new work).
    pub submitted: u64,
    /// Attempts that produced a value.
    pub executions: u64,
    /// Submissions answered from the memo table.
    pub memo_hits: u64,
    /// Submissions that joined a request already queued or running.
    pub joined: u64,
    /// Attempts that ended in an error (each retry counts).
    pub failures: u64,
}

/// A replicated event: what an operator wants in the console's Events view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Millis,
    pub kind: String,
    pub node: Option<NodeId>,
    pub message: String,
}

/// A write the storage layer performs for a transition, in the same step as the transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    PutOutcome(RequestKey, Outcome),
    DeleteOutcome(RequestKey),
}

/// The whole replicated state but result payloads.
///
/// Encoded field by field as derived (`remote = "Self"`); the trait impls below add the
/// rebuild of the derived `loads` on decoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ClusterState {
    nodes: BTreeMap<NodeId, NodeInfo>,
    /// Queued and running requests.
    requests: BTreeMap<RequestKey, Request>,
    /// Finished requests (Done, Failed, Cancelled) as compact records; see `finished.rs`.
    #[serde(deserialize_with = "packed")]
    terminal: BTreeMap<RequestKey, Finished>,
    /// Function, priority and retry policy of the `terminal` records.
    profiles: Profiles,
    queue: BTreeSet<QueueKey>,
    running_by_node: BTreeMap<NodeId, BTreeSet<RequestKey>>,
    /// Running requests per node that hold a slot (not blocked on children).
    busy: BTreeMap<NodeId, u32>,
    children: BTreeMap<RequestKey, Vec<RequestKey>>,
    /// child -> (parent, parent's attempt) pairs blocked on that child right now.
    waiters: BTreeMap<RequestKey, Vec<(RequestKey, u32)>>,
    /// Completion order of terminal requests, oldest first (the eviction order): (position,
    /// key). An entry is current while the request's record holds that position
    /// (`Finished::finish_seq`); one whose request ran again or was forgotten is stale and
    /// skipped. Stale entries leave from the front as eviction passes them, and all at once
    /// when they outnumber the current ones (see `tidy_finished`). A deque rather than a
    /// B-tree: appends only, and half the memory.
    finished: VecDeque<(u64, RequestKey)>,
    counters: BTreeMap<String, FunctionCounters>,
    events: VecDeque<Event>,
    next_seq: u64,
    #[serde(skip)]
    effects: Vec<Effect>,
    /// Every node's load, ranked for the scheduler: derived from `nodes` and `busy`, kept up
    /// to date by the transitions that change them, not encoded, rebuilt on decoding.
    #[serde(skip)]
    loads: LoadIndex,
    /// Owner of each live request and each owner's queue: derived from the submissions this
    /// member applied, not encoded (see `owners.rs`); rebuilt on decoding with every queued
    /// request under the unknown owner.
    #[serde(skip)]
    owners: Owners,
}

impl Serialize for ClusterState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ClusterState::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for ClusterState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut state = ClusterState::deserialize(d)?;
        state.loads = state.rebuilt_loads();
        let live: Vec<(RequestKey, u64)> = state
            .requests
            .values()
            .map(|r| (r.key, r.args.len() as u64))
            .collect();
        for (key, bytes) in live {
            state.owners.add(key, Arc::from(UNKNOWN), bytes);
        }
        let queued: Vec<QueueKey> = state.queue.iter().copied().collect();
        for qk in queued {
            state.owners.enqueue(qk);
        }
        Ok(state)
    }
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drains the writes produced by the transitions applied so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Applies one command. Deterministic; never panics on bad or stale input.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::RegisterNode { node, at } => self.register_node(node, *at),
            Command::SetNodeState { id, state, at } => self.set_node_state(*id, *state, *at),
            Command::RemoveNode { id, at } => self.remove_node(*id, *at),
            Command::Submit { requests, at } => Response::Submitted(
                requests
                    .iter()
                    .map(|r| self.submit(r, *at, UNKNOWN))
                    .collect(),
            ),
            Command::Assign { assignments, at } => {
                Response::Assigned(assignments.iter().map(|a| self.assign(a, *at)).collect())
            }
            Command::Complete { completions, at } => {
                Response::Completed(completions.iter().map(|c| self.complete(c, *at)).collect())
            }
            Command::Requeue {
                node,
                keys,
                reason,
                at,
            } => {
                let (requeued, failed) = self.requeue(*node, keys.as_deref(), reason, *at);
                Response::Requeued { requeued, failed }
            }
            Command::Cancel { key, at } => self.cancel(*key, *at),
            Command::Forget { selector, .. } => Response::Forgotten(self.forget(selector)),
            Command::Batch(cmds) => Response::Batch(cmds.iter().map(|c| self.apply(c)).collect()),
            Command::SetNodeRole { id, role, at } => match self.nodes.get_mut(id) {
                Some(n) => {
                    let old = n.role;
                    n.role = *role;
                    if old != *role {
                        let msg = format!("node {id} is now a {}", role.as_str());
                        self.event(*at, "role", Some(*id), msg);
                    }
                    Response::Ok
                }
                None => unknown_node(*id),
            },
            Command::Event {
                kind,
                node,
                message,
                at,
            } => {
                self.event(*at, kind, *node, message.clone());
                Response::Ok
            }
            Command::Park {
                key,
                node,
                attempt,
                parked,
                ..
            } => {
                let current = self.requests.get(key).is_some_and(|r| {
                    matches!(r.state, RequestState::Running { node: n, attempt: a, .. }
                        if n == *node && a == *attempt)
                });
                if current {
                    self.set_waiting(*key, if *parked { 1 } else { -1 });
                }
                Response::Ok
            }
            Command::Memoize { memos, at } => {
                Response::Memoized(memos.iter().map(|m| self.memoize(m, *at)).collect())
            }
            Command::Ran { runs, at } => {
                Response::Ran(runs.iter().map(|r| self.ran(r, *at)).collect())
            }
            Command::SubmitFrom {
                client,
                requests,
                at,
            } => Response::Submitted(
                requests
                    .iter()
                    .map(|r| self.submit(r, *at, client))
                    .collect(),
            ),
            Command::CancelMany { keys, at } => {
                let mut cancelled = Vec::new();
                for k in keys {
                    if let Response::Cancelled(ks) = self.cancel(*k, *at) {
                        cancelled.extend(ks);
                    }
                }
                Response::Cancelled(cancelled)
            }
        }
    }

    // ----- nodes -----

    fn register_node(&mut self, node: &NodeInfo, at: Millis) -> Response {
        match self.nodes.get_mut(&node.id) {
            Some(existing) => {
                let state = match existing.state {
                    NodeState::Down => NodeState::Active,
                    s => s,
                };
                let role = existing.role;
                *existing = node.clone();
                existing.state = state;
                existing.role = role;
                self.refresh_load(node.id);
                self.event(
                    at,
                    "rejoined",
                    Some(node.id),
                    format!("node {} ({}) rejoined", node.id, node.addr),
                );
            }
            None => {
                let mut n = node.clone();
                n.state = NodeState::Active;
                self.nodes.insert(n.id, n);
                self.refresh_load(node.id);
                self.event(
                    at,
                    "joined",
                    Some(node.id),
                    format!("node {} ({}) joined", node.id, node.addr),
                );
            }
        }
        Response::Ok
    }

    fn set_node_state(&mut self, id: NodeId, to: NodeState, at: Millis) -> Response {
        let Some(node) = self.nodes.get(&id) else {
            return unknown_node(id);
        };
        let from = node.state;
        let running = self.running_by_node.get(&id).map_or(0, BTreeSet::len);
        let next = match (from, to) {
            (a, b) if a == b => return Response::Ok,
            (NodeState::Active, NodeState::Draining) if running == 0 => NodeState::Drained,
            (NodeState::Active, NodeState::Draining) => NodeState::Draining,
            (NodeState::Drained, NodeState::Draining) => return Response::Ok,
            (NodeState::Draining | NodeState::Drained, NodeState::Active) => NodeState::Active,
            (NodeState::Down, NodeState::Active) => NodeState::Active,
            (_, NodeState::Down) => NodeState::Down,
            (from, to) => {
                return Response::Rejected(Rejection::new(
                    reject::BAD_TRANSITION,
                    format!(
                        "node {id} cannot go from {} to {}",
                        from.as_str(),
                        to.as_str()
                    ),
                ));
            }
        };
        self.nodes.get_mut(&id).expect("checked above").state = next;
        self.refresh_load(id);
        let kind = match next {
            NodeState::Active if from == NodeState::Down => "up",
            NodeState::Active => "undrained",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
            NodeState::Down => "down",
        };
        self.event(
            at,
            kind,
            Some(id),
            format!("node {id} is {}", next.as_str()),
        );
        if next == NodeState::Down {
            self.requeue(id, None, "node is down", at);
        }
        Response::Ok
    }

    fn remove_node(&mut self, id: NodeId, at: Millis) -> Response {
        if !self.nodes.contains_key(&id) {
            return unknown_node(id);
        }
        self.requeue(id, None, "node was removed", at);
        self.nodes.remove(&id);
        self.running_by_node.remove(&id);
        self.busy.remove(&id);
        self.loads.remove(id);
        self.event(at, "removed", Some(id), format!("node {id} was removed"));
        Response::Ok
    }

    /// Moves a draining node to Drained once nothing runs there.
    fn settle_drain(&mut self, id: NodeId, at: Millis) {
        let idle = self.running_by_node.get(&id).is_none_or(BTreeSet::is_empty);
        if let Some(n) = self.nodes.get_mut(&id)
            && n.state == NodeState::Draining
            && idle
        {
            n.state = NodeState::Drained;
            self.refresh_load(id);
            self.event(at, "drained", Some(id), format!("node {id} is drained"));
        }
    }

    // ----- requests -----

    /// Submits `new` for client identity `client` ([`UNKNOWN`] when not named); a child call
    /// belongs to its parent's owner.
    fn submit(&mut self, new: &NewRequest, at: Millis, client: &str) -> SubmitReply {
        // A parent that is no longer running cannot wait; its call is stale.
        let parent_attempt = match new.parent {
            Some(p) => match self.requests.get(&p).map(|r| r.state) {
                Some(RequestState::Running { attempt, .. }) => Some((p, attempt)),
                _ => return SubmitReply::ParentGone,
            },
            None => None,
        };
        let existing = self.request_state(&new.key);
        let reply = match existing {
            Some(RequestState::Done) if !new.no_cache => {
                self.counter(&new.function).memo_hits += 1;
                SubmitReply::MemoHit
            }
            Some(RequestState::Queued | RequestState::Running { .. }) => {
                self.counter(&new.function).joined += 1;
                SubmitReply::Joined
            }
            other => {
                if other.is_some() {
                    // A finished request submitted again (no_cache, or it failed/was cancelled):
                    // run it anew. The old outcome stays readable until the new one replaces it.
                    self.unfinish(new.key);
                }
                let req = self.new_record(new, RequestState::Queued, at);
                let owner = match new.parent {
                    Some(p) => Arc::from(self.owners.owner(&p)),
                    None => Arc::from(client),
                };
                self.owners.add(req.key, owner, req.args.len() as u64);
                let qk = (Reverse(req.priority), req.seq, req.key);
                self.requests.insert(req.key, req);
                self.queue_insert(qk);
                self.counter(&new.function).submitted += 1;
                SubmitReply::Queued
            }
        };
        if let Some((parent, attempt)) = parent_attempt {
            self.link(parent, new.key);
            if reply != SubmitReply::MemoHit {
                self.waiters
                    .entry(new.key)
                    .or_default()
                    .push((parent, attempt));
                self.set_waiting(parent, 1);
            }
        }
        reply
    }

    /// Puts a queued request in the queue and its owner's.
    fn queue_insert(&mut self, qk: QueueKey) {
        self.queue.insert(qk);
        self.owners.enqueue(qk);
    }

    /// Takes a request out of the queue and its owner's.
    fn queue_remove(&mut self, qk: QueueKey) {
        self.queue.remove(&qk);
        self.owners.dequeue(&qk);
    }

    fn link(&mut self, parent: RequestKey, child: RequestKey) {
        let kids = self.children.entry(parent).or_default();
        if !kids.contains(&child) {
            kids.push(child);
        }
        if let Some(c) = self.requests.get_mut(&child) {
            if !c.parents.contains(&parent) {
                c.parents.push(parent);
            }
        } else if let Some(t) = self.terminal.get_mut(&child) {
            t.add_parent(parent);
        }
    }

    /// Changes how many children a running request waits on, keeping the node's busy count:
    /// a request holds a slot only while it waits on nothing.
    fn set_waiting(&mut self, key: RequestKey, delta: i32) {
        let Some(r) = self.requests.get_mut(&key) else {
            return;
        };
        let RequestState::Running { node, .. } = r.state else {
            return;
        };
        let before = r.waiting;
        r.waiting = if delta >= 0 {
            before + delta as u32
        } else {
            before.saturating_sub((-delta) as u32)
        };
        let after = r.waiting;
        let busy = self.busy.entry(node).or_default();
        if before == 0 && after > 0 {
            *busy = busy.saturating_sub(1);
        } else if before > 0 && after == 0 {
            *busy += 1;
        }
        self.refresh_load(node);
    }

    fn assign(&mut self, a: &Assignment, at: Millis) -> AssignReply {
        let Some(req) = self.requests.get(&a.key) else {
            if let Some(t) = self.terminal.get(&a.key) {
                return AssignReply::Rejected(Rejection::new(
                    reject::NOT_QUEUED,
                    format!("request {} is {}", a.key.short(), t.state.state().name()),
                ));
            }
            return AssignReply::Rejected(Rejection::new(
                reject::UNKNOWN_REQUEST,
                format!("no request {}", a.key),
            ));
        };
        if req.state != RequestState::Queued {
            return AssignReply::Rejected(Rejection::new(
                reject::NOT_QUEUED,
                format!("request {} is {}", a.key.short(), req.state.name()),
            ));
        }
        if a.attempt != req.attempts + 1 {
            return AssignReply::Rejected(Rejection::new(
                reject::STALE_ATTEMPT,
                format!(
                    "request {} expects attempt {}, got {}",
                    a.key.short(),
                    req.attempts + 1,
                    a.attempt
                ),
            ));
        }
        if req.not_before > at {
            return AssignReply::Rejected(Rejection::new(
                reject::NOT_YET,
                "retry backoff has not passed",
            ));
        }
        let Some(node) = self.nodes.get(&a.node) else {
            return AssignReply::Rejected(Rejection::new(
                reject::UNKNOWN_NODE,
                format!("no node {}", a.node),
            ));
        };
        if node.state != NodeState::Active {
            return AssignReply::Rejected(Rejection::new(
                reject::NODE_NOT_ACTIVE,
                format!("node {} is {}", a.node, node.state.as_str()),
            ));
        }
        // The scheduler fills slots, and queues short requests on top of them; this is the
        // hard bound on both.
        let busy = self.busy.get(&a.node).copied().unwrap_or(0);
        if busy >= mozen_model::max_assigned(node.slots) {
            return AssignReply::Rejected(Rejection::new(
                reject::NO_FREE_SLOT,
                format!(
                    "node {} holds {busy} requests, the most its {} slots and queue take",
                    a.node, node.slots
                ),
            ));
        }
        let req = &self.requests[&a.key];
        let qk = (Reverse(req.priority), req.seq, req.key);
        self.queue_remove(qk);
        let req = self.requests.get_mut(&a.key).expect("checked above");
        req.state = RequestState::Running {
            node: a.node,
            attempt: a.attempt,
            since: at,
        };
        req.attempts = a.attempt;
        req.updated = at;
        req.waiting = 0;
        req.last_node = Some(a.node);
        self.running_by_node
            .entry(a.node)
            .or_default()
            .insert(a.key);
        *self.busy.entry(a.node).or_default() += 1;
        self.refresh_load(a.node);
        AssignReply::Started
    }

    /// Takes a running request off its node (slot and index), leaving its state to the caller.
    /// A fresh live record of `new` in `state`, next in submission order.
    fn new_record(&mut self, new: &NewRequest, state: RequestState, at: Millis) -> Request {
        let seq = self.next_seq;
        self.next_seq += 1;
        Request {
            key: new.key,
            function: new.function.clone(),
            args: new.args.clone(),
            parents: Vec::new(),
            priority: new.priority,
            state,
            attempts: 0,
            failures: 0,
            created: at,
            updated: at,
            retry: new.retry,
            last_node: None,
            duration_ms: 0,
            waiting: 0,
            not_before: 0,
            seq,
        }
    }

    /// Records `m` as done with its value; false when a value was already memoized. A queued or
    /// running request of the same key finishes with it (its callers are woken; a later
    /// completion of the running attempt is stale), a failed or cancelled one is replaced.
    fn memoize(&mut self, m: &Memo, at: Millis) -> bool {
        match self.request_state(&m.key) {
            Some(RequestState::Done) => return false,
            Some(RequestState::Queued | RequestState::Running { .. }) => {
                let r = &self.requests[&m.key];
                let qk = (Reverse(r.priority), r.seq, m.key);
                self.queue_remove(qk);
                let node = self.stop_running(m.key);
                let r = self.requests.get_mut(&m.key).expect("live");
                r.state = RequestState::Done;
                r.updated = at;
                self.finish(m.key, Outcome::Value(m.value.clone()), at);
                if let Some(n) = node {
                    self.settle_drain(n, at);
                }
                return true;
            }
            Some(_) => {
                self.unfinish(m.key);
            }
            None => {}
        }
        let new = NewRequest {
            key: m.key,
            function: m.function.clone(),
            args: m.args.clone(),
            parent: None,
            priority: 0,
            retry: RetryPolicy::default(),
            no_cache: false,
        };
        let record = self.new_record(&new, RequestState::Done, at);
        self.requests.insert(m.key, record);
        self.finish(m.key, Outcome::Value(m.value.clone()), at);
        true
    }

    /// Records a request the leader ran before writing it down: submitted, run on `run.node`
    /// and done, linked to its parent (which may be recorded later, or be gone). False when
    /// it was already done. A queued or running record of it (written down because it took
    /// long, or submitted meanwhile) finishes with the value, as with `memoize`.
    fn ran(&mut self, run: &Run, at: Millis) -> bool {
        let new = &run.request;
        let key = new.key;
        match self.request_state(&key) {
            Some(RequestState::Done) => return false,
            Some(RequestState::Queued | RequestState::Running { .. }) => {
                let r = &self.requests[&key];
                let qk = (Reverse(r.priority), r.seq, key);
                self.queue_remove(qk);
                let node = self.stop_running(key);
                let r = self.requests.get_mut(&key).expect("live");
                r.state = RequestState::Done;
                r.updated = at;
                r.duration_ms = run.duration_ms;
                r.last_node = Some(run.node);
                r.attempts = r.attempts.max(1);
                let function = r.function.clone();
                self.counter(&function).executions += 1;
                if let Some(p) = new.parent {
                    self.link(p, key);
                }
                self.finish(key, Outcome::Value(run.value.clone()), at);
                if let Some(n) = node {
                    self.settle_drain(n, at);
                }
                return true;
            }
            Some(_) => {
                self.unfinish(key);
            }
            None => {}
        }
        let mut record = self.new_record(new, RequestState::Done, at);
        record.attempts = 1;
        record.last_node = Some(run.node);
        record.duration_ms = run.duration_ms;
        self.requests.insert(key, record);
        let c = self.counter(&new.function);
        c.submitted += 1;
        c.executions += 1;
        if let Some(p) = new.parent {
            self.link(p, key);
        }
        self.finish(key, Outcome::Value(run.value.clone()), at);
        true
    }

    fn stop_running(&mut self, key: RequestKey) -> Option<NodeId> {
        let r = self.requests.get_mut(&key)?;
        let RequestState::Running { node, .. } = r.state else {
            return None;
        };
        let held_slot = r.waiting == 0;
        r.waiting = 0;
        if let Some(set) = self.running_by_node.get_mut(&node) {
            set.remove(&key);
        }
        if held_slot && let Some(b) = self.busy.get_mut(&node) {
            *b = b.saturating_sub(1);
            self.refresh_load(node);
        }
        Some(node)
    }

    fn complete(&mut self, c: &Completion, at: Millis) -> CompleteReply {
        let Some(req) = self.requests.get(&c.key) else {
            return CompleteReply::Stale;
        };
        match req.state {
            RequestState::Running { node, attempt, .. }
                if node == c.node && attempt == c.attempt => {}
            _ => return CompleteReply::Stale,
        }
        let function = req.function.clone();
        self.stop_running(c.key);
        let req = self.requests.get_mut(&c.key).expect("checked above");
        req.updated = at;
        req.duration_ms = c.duration_ms;
        let reply = match &c.outcome {
            Outcome::Value(_) => {
                req.state = RequestState::Done;
                self.counter(&function).executions += 1;
                self.finish(c.key, c.outcome.clone(), at);
                CompleteReply::Finished
            }
            Outcome::Error(err) => {
                let retryable = err.code == codes::FUNCTION_FAILED;
                if retryable && req.failures < req.retry.retries && req.attempts < u32::MAX {
                    req.failures += 1;
                    let shift = (req.failures - 1).min(16);
                    req.not_before =
                        at.saturating_add(req.retry.backoff_ms.saturating_mul(1 << shift));
                    req.state = RequestState::Queued;
                    let qk = (Reverse(req.priority), req.seq, req.key);
                    self.queue_insert(qk);
                    self.counter(&function).failures += 1;
                    self.release_waiters(c.key);
                    CompleteReply::Retrying
                } else {
                    req.failures += 1;
                    req.state = RequestState::Failed;
                    self.counter(&function).failures += 1;
                    let msg = format!("{function} failed on node {}: {}", c.node, err.message);
                    self.event(at, "failure", Some(c.node), msg);
                    self.finish(c.key, c.outcome.clone(), at);
                    CompleteReply::Finished
                }
            }
        };
        self.settle_drain(c.node, at);
        reply
    }

    /// Records a terminal outcome: payload effect, eviction order, and waking blocked parents.
    /// The request, already in its terminal state, moves to a compact record.
    fn finish(&mut self, key: RequestKey, outcome: Outcome, _at: Millis) {
        self.effects.push(Effect::PutOutcome(key, outcome));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.owners.drop_key(&key);
        if let Some(r) = self.requests.remove(&key) {
            let profile = self.profiles.intern(&r);
            if let Some(record) = Finished::new(r, profile, seq) {
                self.terminal.insert(key, record);
                self.finished.push_back((seq, key));
            }
        }
        self.release_waiters(key);
    }

    /// Parents blocked on `child` stop waiting on it (it finished, or went back to the queue for
    /// a retry, in which case they wait on the resubmission they will make).
    fn release_waiters(&mut self, child: RequestKey) {
        if let Some(ws) = self.waiters.remove(&child) {
            for (parent, attempt) in ws {
                let current = matches!(
                    self.requests.get(&parent).map(|r| r.state),
                    Some(RequestState::Running { attempt: a, .. }) if a == attempt
                );
                if current {
                    self.set_waiting(parent, -1);
                }
            }
        }
    }

    /// Drops the record of a finished request (about to run again, or forgotten) and its place
    /// in the finished order.
    fn unfinish(&mut self, key: RequestKey) -> Option<Finished> {
        let record = self.terminal.remove(&key)?;
        self.tidy_finished();
        Some(record)
    }

    /// Whether an entry of the finished order is current (see `finished`).
    fn is_current(&self, &(seq, key): &(u64, RequestKey)) -> bool {
        self.terminal.get(&key).is_some_and(|t| t.finish_seq == seq)
    }

    /// Drops stale entries of the finished order: those at its front, and every one once they
    /// are more than the current ones (so the order never holds more than about twice the
    /// finished requests).
    fn tidy_finished(&mut self) {
        while let Some(front) = self.finished.front() {
            if self.is_current(front) {
                break;
            }
            self.finished.pop_front();
        }
        if self.finished.len() > 2 * self.terminal.len() + 64 {
            let terminal = &self.terminal;
            self.finished
                .retain(|(seq, key)| terminal.get(key).is_some_and(|t| t.finish_seq == *seq));
        }
        // A deque keeps its largest size: after a flood was cancelled and forgotten, give the
        // memory back (amortized: only when four times too large).
        if self.finished.capacity() > 4 * self.finished.len() + 1024 {
            self.finished.shrink_to(2 * self.finished.len());
        }
    }

    /// Current entries of the finished order, oldest first.
    fn finished_in_order(&self) -> impl Iterator<Item = (&RequestKey, &Finished)> {
        self.finished.iter().filter_map(|(seq, key)| {
            self.terminal
                .get_key_value(key)
                .filter(|(_, t)| t.finish_seq == *seq)
        })
    }

    fn requeue(
        &mut self,
        node: NodeId,
        keys: Option<&[RequestKey]>,
        reason: &str,
        at: Millis,
    ) -> (u32, u32) {
        let targets: Vec<RequestKey> = match keys {
            Some(ks) => ks
                .iter()
                .copied()
                .filter(|k| self.requests.get(k).and_then(|r| r.state.node()) == Some(node))
                .collect(),
            None => self
                .running_by_node
                .get(&node)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        let (mut requeued, mut failed) = (0, 0);
        for key in targets {
            self.stop_running(key);
            let req = self.requests.get_mut(&key).expect("indexed as running");
            req.updated = at;
            if req.attempts >= req.retry.max_attempts {
                req.state = RequestState::Failed;
                let function = req.function.clone();
                let mut err = TaskError::new(
                    codes::ATTEMPTS_EXHAUSTED,
                    format!(
                        "{function}: {} attempts used, the last lost because {reason}",
                        req.attempts
                    ),
                );
                err.node = Some(node);
                self.counter(&function).failures += 1;
                self.finish(key, Outcome::Error(err), at);
                failed += 1;
            } else {
                req.state = RequestState::Queued;
                let qk = (Reverse(req.priority), req.seq, req.key);
                self.queue_insert(qk);
                requeued += 1;
            }
        }
        if requeued + failed > 0 {
            let msg = format!(
                "{requeued} requests re-queued, {failed} failed from node {node}: {reason}"
            );
            self.event(at, "requeued", Some(node), msg);
        }
        self.settle_drain(node, at);
        (requeued, failed)
    }

    fn is_live(&self, key: &RequestKey) -> bool {
        self.requests
            .get(key)
            .is_some_and(|r| !r.state.is_terminal())
    }

    fn cancel(&mut self, key: RequestKey, at: Millis) -> Response {
        if !self.requests.contains_key(&key) && !self.terminal.contains_key(&key) {
            return Response::Rejected(Rejection::new(
                reject::UNKNOWN_REQUEST,
                format!("no request {key}"),
            ));
        }
        // Collect the subtree whose every live parent is itself being cancelled.
        let mut set: BTreeSet<RequestKey> = BTreeSet::from([key]);
        let mut frontier = vec![key];
        while let Some(k) = frontier.pop() {
            for child in self.children.get(&k).cloned().unwrap_or_default() {
                if set.contains(&child) || !self.is_live(&child) {
                    continue;
                }
                let parents = &self.requests[&child].parents;
                let needed_elsewhere = parents.iter().any(|p| !set.contains(p) && self.is_live(p));
                if !needed_elsewhere {
                    set.insert(child);
                    frontier.push(child);
                }
            }
        }
        let mut cancelled = Vec::new();
        for k in set {
            let Some(r) = self.requests.get(&k) else {
                continue;
            };
            if r.state.is_terminal() {
                continue;
            }
            let node = r.state.node();
            if r.state == RequestState::Queued {
                let qk = (Reverse(r.priority), r.seq, k);
                self.queue_remove(qk);
            }
            self.stop_running(k);
            let r = self.requests.get_mut(&k).expect("present");
            r.state = RequestState::Cancelled;
            r.updated = at;
            let err = TaskError::new(codes::CANCELLED, format!("{} was cancelled", r.function));
            self.finish(k, Outcome::Error(err), at);
            if let Some(n) = node {
                self.settle_drain(n, at);
            }
            cancelled.push(k);
        }
        Response::Cancelled(cancelled)
    }

    fn forget(&mut self, sel: &ForgetSelector) -> u64 {
        let keys: Vec<RequestKey> = match sel {
            ForgetSelector::Keys(ks) => ks.clone(),
            ForgetSelector::Function(f) => self
                .finished_in_order()
                .filter(|(_, r)| {
                    self.profiles
                        .get(r.profile)
                        .is_some_and(|p| &p.function == f)
                })
                .map(|(k, _)| *k)
                .collect(),
            ForgetSelector::OlderThan(t) => self
                .finished_in_order()
                .filter(|(_, r)| r.updated < *t)
                .map(|(k, _)| *k)
                .collect(),
            ForgetSelector::Oldest(n) => self
                .finished_in_order()
                .take(*n as usize)
                .map(|(k, _)| *k)
                .collect(),
        };
        let mut n = 0;
        for k in keys {
            let Some(r) = self.unfinish(k) else {
                continue;
            };
            for p in &r.parents {
                if let Some(kids) = self.children.get_mut(p) {
                    kids.retain(|c| *c != k);
                }
            }
            // Children keep their own records; only the link to the forgotten parent goes.
            if let Some(kids) = self.children.remove(&k) {
                for c in kids {
                    if let Some(cr) = self.requests.get_mut(&c) {
                        cr.parents.retain(|p| *p != k);
                    } else if let Some(t) = self.terminal.get_mut(&c) {
                        t.remove_parent(&k);
                    }
                }
            }
            self.effects.push(Effect::DeleteOutcome(k));
            n += 1;
        }
        n
    }

    fn counter(&mut self, function: &str) -> &mut FunctionCounters {
        if !self.counters.contains_key(function) {
            self.counters
                .insert(function.to_string(), FunctionCounters::default());
        }
        self.counters.get_mut(function).expect("inserted above")
    }

    fn event(&mut self, at: Millis, kind: &str, node: Option<NodeId>, message: String) {
        if self.events.len() == EVENT_LOG_LEN {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at,
            kind: kind.to_string(),
            node,
            message,
        });
    }

    // ----- scheduler loads -----

    /// The scheduler's view of node `id`, from the node table and the busy count.
    fn load_of(&self, n: &NodeInfo) -> NodeLoad {
        NodeLoad {
            id: n.id,
            state: n.state,
            slots: n.slots,
            busy: self.busy_slots(n.id),
            queue: mozen_model::max_assigned(n.slots) - n.slots,
            score: n.score(),
        }
    }

    /// Brings node `id`'s entry in `loads` up to date after its record or busy count changed.
    fn refresh_load(&mut self, id: NodeId) {
        match self.nodes.get(&id) {
            Some(n) => {
                let load = self.load_of(n);
                self.loads.set(load);
            }
            None => self.loads.remove(id),
        }
    }

    /// `loads` computed from scratch.
    fn rebuilt_loads(&self) -> LoadIndex {
        self.nodes.values().map(|n| self.load_of(n)).collect()
    }

    // ----- read API -----

    /// Every registered node's load (state, slots, busy slots, local queue places, score),
    /// with the nodes that have room ranked as the scheduler prefers them. Kept up to date by
    /// `apply`, so a scheduling pass need not visit every node.
    pub fn loads(&self) -> &LoadIndex {
        &self.loads
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// The request under `key`: borrowed while it is queued or running, rebuilt from its
    /// compact record once finished.
    pub fn request(&self, key: &RequestKey) -> Option<Cow<'_, Request>> {
        if let Some(r) = self.requests.get(key) {
            return Some(Cow::Borrowed(r));
        }
        self.terminal
            .get(key)
            .and_then(|t| self.rebuild(key, t))
            .map(Cow::Owned)
    }

    /// The state of the request under `key`, without rebuilding a finished one.
    pub fn request_state(&self, key: &RequestKey) -> Option<RequestState> {
        match self.requests.get(key) {
            Some(r) => Some(r.state),
            None => self.terminal.get(key).map(|t| t.state.state()),
        }
    }

    /// What a reply to a caller says of the request under `key`: its state, the node it runs
    /// or last ran on, and its run time; without rebuilding a finished one.
    pub fn reply_fields(&self, key: &RequestKey) -> Option<(RequestState, Option<NodeId>, u64)> {
        match self.requests.get(key) {
            Some(r) => Some((r.state, r.state.node().or(r.last_node), r.duration_ms)),
            None => self
                .terminal
                .get(key)
                .map(|t| (t.state.state(), t.last_node, t.duration_ms)),
        }
    }

    fn rebuild(&self, key: &RequestKey, t: &Finished) -> Option<Request> {
        self.profiles.get(t.profile).map(|p| t.to_request(*key, p))
    }

    /// Every request: the queued and running ones, then the finished ones (rebuilt one at a
    /// time as the iterator is advanced), each part in key order.
    pub fn requests(&self) -> impl Iterator<Item = Cow<'_, Request>> {
        self.requests.values().map(Cow::Borrowed).chain(
            self.terminal
                .iter()
                .filter_map(|(k, t)| self.rebuild(k, t).map(Cow::Owned)),
        )
    }

    /// The `n` most recently updated requests, newest first (ties by key). Rebuilds only
    /// those `n`.
    pub fn recent(&self, n: usize) -> Vec<Cow<'_, Request>> {
        let live = self.requests.iter().map(|(k, r)| (r.updated, *k));
        let done = self.terminal.iter().map(|(k, t)| (t.updated, *k));
        let mut all: Vec<(Millis, RequestKey)> = live.chain(done).collect();
        let by_recency =
            |a: &(Millis, RequestKey), b: &(Millis, RequestKey)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, by_recency);
        }
        all.truncate(n);
        all.sort_by(by_recency);
        all.iter().filter_map(|(_, k)| self.request(k)).collect()
    }

    pub fn request_count(&self) -> usize {
        self.requests.len() + self.terminal.len()
    }

    pub fn children(&self, key: &RequestKey) -> &[RequestKey] {
        self.children.get(key).map_or(&[], Vec::as_slice)
    }

    /// Queued requests in scheduling order (priority, then FIFO).
    pub fn queue(&self) -> impl Iterator<Item = &Request> {
        self.queue
            .iter()
            .filter_map(|(_, _, k)| self.requests.get(k))
    }

    /// Queued requests after queue position (priority, seq), in the order they will run
    /// (all of them for `None`).
    pub fn queue_after(&self, after: Option<(i32, u64)>) -> impl Iterator<Item = &Request> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |(priority, seq)| {
            Bound::Excluded((Reverse(priority), seq, RequestKey([0xff; 32])))
        });
        self.queue
            .range((from, Bound::Unbounded))
            .filter_map(|(_, _, k)| self.requests.get(k))
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Queued and running requests, by key.
    pub fn live(&self) -> impl Iterator<Item = &Request> {
        self.requests.values()
    }

    /// The request under `key` while it is queued or running.
    pub fn live_request(&self, key: &RequestKey) -> Option<&Request> {
        self.requests.get(key)
    }

    /// Queued requests in fair order (see [`Owners::fair`]): the order the scheduler serves.
    pub fn queue_fair(&self) -> impl Iterator<Item = &Request> {
        self.owners.fair().filter_map(|k| self.requests.get(&k))
    }

    /// Owners of live requests and what each has outstanding (see `owners.rs`).
    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    pub fn running_on(&self, node: NodeId) -> impl Iterator<Item = &Request> {
        self.running_by_node
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.requests.get(k))
    }

    pub fn running_count(&self, node: NodeId) -> usize {
        self.running_by_node.get(&node).map_or(0, BTreeSet::len)
    }

    /// Slots in use on a node: running requests not blocked on children.
    pub fn busy_slots(&self, node: NodeId) -> u32 {
        self.busy.get(&node).copied().unwrap_or(0)
    }

    pub fn counters(&self) -> &BTreeMap<String, FunctionCounters> {
        &self.counters
    }

    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events.iter()
    }

    /// Memoized (terminal) results held, oldest first.
    pub fn finished_len(&self) -> usize {
        self.terminal.len()
    }

    /// Counts requests by state name, for metrics.
    pub fn state_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for r in self.requests.values() {
            *m.entry(r.state.name()).or_default() += 1;
        }
        for t in self.terminal.values() {
            *m.entry(t.state.state().name()).or_default() += 1;
        }
        m
    }

    /// Checks the internal indexes against the request records. Used by tests; returns the
    /// first inconsistency found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut running: BTreeMap<NodeId, BTreeSet<RequestKey>> = BTreeMap::new();
        let mut busy: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut queued = 0;
        for r in self.requests.values() {
            match r.state {
                RequestState::Running { node, .. } => {
                    running.entry(node).or_default().insert(r.key);
                    if r.waiting == 0 {
                        *busy.entry(node).or_default() += 1;
                    }
                }
                RequestState::Queued => {
                    queued += 1;
                    if !self.queue.contains(&(Reverse(r.priority), r.seq, r.key)) {
                        return Err(format!(
                            "queued request {} missing from the queue",
                            r.key.short()
                        ));
                    }
                }
                _ => {}
            }
        }
        for (k, t) in &self.terminal {
            if self.requests.contains_key(k) {
                return Err(format!("request {} is both live and finished", k.short()));
            }
            if self.profiles.get(t.profile).is_none() {
                return Err(format!("finished request {} has no profile", k.short()));
            }
        }
        if !self.finished.iter().is_sorted_by(|a, b| a.0 < b.0) {
            return Err("the finished order is not sorted".into());
        }
        let current = self.finished_in_order().count();
        if current != self.terminal.len() {
            return Err(format!(
                "finished order holds {current} current entries for {} finished requests",
                self.terminal.len()
            ));
        }
        if self.finished.front().is_some_and(|f| !self.is_current(f)) {
            return Err("the finished order starts with a stale entry".into());
        }
        if queued != self.queue.len() {
            return Err(format!(
                "queue holds {} entries for {} queued requests",
                self.queue.len(),
                queued
            ));
        }
        for (node, keys) in &self.running_by_node {
            if !keys.is_empty() && running.get(node) != Some(keys) {
                return Err(format!(
                    "running index of node {node} disagrees with records"
                ));
            }
        }
        for (node, n) in &busy {
            if self.busy.get(node).copied().unwrap_or(0) != *n {
                return Err(format!(
                    "busy count of node {node} is {:?}, records say {n}",
                    self.busy.get(node)
                ));
            }
            // busy may exceed slots for a moment: a parent whose children finished resumes
            // at once, even if its slot was lent to other work meanwhile (it never waits twice).
        }
        if self.loads != self.rebuilt_loads() {
            return Err("the scheduler's node loads disagree with the node table".into());
        }
        self.check_owners()
    }

    /// The owner index agrees with the queue and the records (see `owners.rs`).
    fn check_owners(&self) -> Result<(), String> {
        if self.owners.of.len() != self.requests.len() {
            return Err(format!(
                "owners known for {} requests; {} are live",
                self.owners.of.len(),
                self.requests.len()
            ));
        }
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        for (k, (owner, bytes)) in &self.owners.of {
            let Some(r) = self.requests.get(k) else {
                return Err(format!("owner kept for {k}, which is not live"));
            };
            if r.args.len() as u64 != *bytes {
                return Err(format!("owner index counts {bytes} bytes for {k}"));
            }
            let u = usage.entry(owner).or_default();
            u.requests += 1;
            u.bytes += bytes;
        }
        let listed: BTreeMap<&str, Usage> = self.owners.usage().collect();
        if listed != usage {
            return Err(format!("owners' usage {listed:?}, records say {usage:?}"));
        }
        let total = usage.values().fold(Usage::default(), |a, u| Usage {
            requests: a.requests + u.requests,
            bytes: a.bytes + u.bytes,
        });
        if total != self.owners.total() {
            return Err(format!(
                "total usage {:?}, records say {total:?}",
                self.owners.total()
            ));
        }
        let mut keys = 0;
        for (owner, q) in &self.owners.queued {
            if q.is_empty() {
                return Err(format!("owner '{owner}' is listed with nothing queued"));
            }
            for qk in q {
                if !self.queue.contains(qk) {
                    return Err(format!("owner '{owner}' queues {} out of the queue", qk.2));
                }
                if self.owners.owner(&qk.2) != &**owner {
                    return Err(format!("request {} is queued under the wrong owner", qk.2));
                }
            }
            keys += q.len();
        }
        if keys != self.queue.len() {
            return Err(format!(
                "owners queue {keys} requests; the queue holds {}",
                self.queue.len()
            ));
        }
        Ok(())
    }

    /// A digest of the encoded state, to compare voters: blake3 of its postcard encoding.
    ///
    /// The encoding is streamed into the hasher through a 64 KiB buffer instead of being built
    /// whole first: no allocation the size of the state, and blake3 gets large inputs.
    pub fn digest(&self) -> [u8; 32] {
        let out = std::io::BufWriter::with_capacity(64 << 10, blake3::Hasher::new());
        let out = postcard::to_io(self, out).expect("state encodes");
        let hasher = out.into_inner().expect("hashing does not fail");
        *hasher.finalize().as_bytes()
    }

    /// Role of a node as recorded in the table.
    pub fn role(&self, id: NodeId) -> Option<NodeRole> {
        self.nodes.get(&id).map(|n| n.role)
    }
}

fn unknown_node(id: NodeId) -> Response {
    Response::Rejected(Rejection::new(
        reject::UNKNOWN_NODE,
        format!("no node {id} in the node table"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> RequestKey {
        RequestKey([n; 32])
    }

    fn node(id: NodeId, slots: u32) -> NodeInfo {
        NodeInfo {
            id,
            name: format!("n{id}"),
            addr: format!("h:{id}"),
            cpus: 1,
            memory_bytes: 1 << 30,
            slots,
            state: NodeState::Active,
            role: NodeRole::Voter,
            labels: BTreeMap::new(),
        }
    }

    fn submit(n: u8, parent: Option<RequestKey>, retries: u32) -> Command {
        Command::Submit {
            requests: vec![NewRequest {
                key: key(n),
                function: "f".into(),
                args: vec![n],
                parent,
                priority: 0,
                retry: RetryPolicy {
                    retries,
                    backoff_ms: 0,
                    max_attempts: 2,
                },
                no_cache: false,
            }],
            at: 1,
        }
    }

    fn assign(n: u8, node: NodeId, attempt: u32) -> Command {
        Command::Assign {
            assignments: vec![Assignment {
                key: key(n),
                node,
                attempt,
            }],
            at: 2,
        }
    }

    fn complete(n: u8, node: NodeId, attempt: u32, outcome: Outcome) -> Command {
        Command::Complete {
            completions: vec![Completion {
                key: key(n),
                node,
                attempt,
                outcome,
                duration_ms: 1,
            }],
            at: 3,
        }
    }

    fn cluster(slots: u32) -> ClusterState {
        let mut st = ClusterState::new();
        st.apply(&Command::RegisterNode {
            node: node(1, slots),
            at: 0,
        });
        st
    }

    fn memo(n: u8, value: &[u8]) -> Command {
        Command::Memoize {
            memos: vec![Memo {
                key: key(n),
                function: "f".into(),
                args: b"[1]".to_vec(),
                value: value.to_vec(),
            }],
            at: 4,
        }
    }

    #[test]
    fn memoized_values_are_memo_hits_and_are_stored_once() {
        let mut st = cluster(2);
        assert_eq!(st.apply(&memo(1, b"7")), Response::Memoized(vec![true]));
        assert_eq!(
            st.take_effects(),
            vec![Effect::PutOutcome(key(1), Outcome::Value(b"7".to_vec()))]
        );
        assert_eq!(st.apply(&memo(1, b"7")), Response::Memoized(vec![false]));
        assert!(st.take_effects().is_empty());
        assert_eq!(
            st.apply(&submit(1, None, 0)),
            Response::Submitted(vec![SubmitReply::MemoHit])
        );
        assert_eq!(st.request_state(&key(1)), Some(RequestState::Done));
    }

    #[test]
    fn memoizing_a_running_request_finishes_it_and_frees_its_slot() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        assert_eq!(st.busy_slots(1), 1);
        assert_eq!(st.apply(&memo(1, b"7")), Response::Memoized(vec![true]));
        assert_eq!(st.busy_slots(1), 0);
        assert_eq!(st.request_state(&key(1)), Some(RequestState::Done));
        // The running attempt's own completion comes too late to change anything.
        let late = st.apply(&complete(1, 1, 1, Outcome::Value(b"8".to_vec())));
        assert_eq!(late, Response::Completed(vec![CompleteReply::Stale]));
        // A queued one leaves the queue.
        st.apply(&submit(2, None, 0));
        assert_eq!(st.queue().count(), 1);
        st.apply(&memo(2, b"1"));
        assert_eq!(st.queue().count(), 0);
    }

    /// The state machine's own check, behind the leader's (agent/src/provenance.rs): only the
    /// running attempt on its node finishes a request; a completion naming another node or an
    /// attempt that never ran changes nothing and stores no outcome.
    #[test]
    fn a_completion_of_another_node_or_attempt_changes_nothing() {
        let mut st = cluster(2);
        st.apply(&Command::RegisterNode {
            node: node(2, 2),
            at: 0,
        });
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        let _ = st.take_effects();
        for (node, attempt) in [(2, 1), (1, 7), (9, 1), (1, 0)] {
            let forged = st.apply(&complete(1, node, attempt, Outcome::Value(b"666".to_vec())));
            assert_eq!(
                forged,
                Response::Completed(vec![CompleteReply::Stale]),
                "node {node} attempt {attempt}"
            );
            assert!(st.take_effects().is_empty(), "no outcome stored");
            assert!(matches!(
                st.request_state(&key(1)),
                Some(RequestState::Running {
                    node: 1,
                    attempt: 1,
                    ..
                })
            ));
        }
        let real = st.apply(&complete(1, 1, 1, Outcome::Value(b"7".to_vec())));
        assert_eq!(real, Response::Completed(vec![CompleteReply::Finished]));
        assert_eq!(
            st.take_effects(),
            vec![Effect::PutOutcome(key(1), Outcome::Value(b"7".to_vec()))]
        );
    }

    fn ran(n: u8, parent: Option<RequestKey>, value: &[u8]) -> Command {
        let Command::Submit { mut requests, .. } = submit(n, parent, 0) else {
            unreachable!()
        };
        Command::Ran {
            runs: vec![Run {
                request: requests.remove(0),
                node: 1,
                duration_ms: 2,
                value: value.to_vec(),
            }],
            at: 5,
        }
    }

    #[test]
    fn a_run_recorded_afterwards_is_done_linked_and_counted_once() {
        let mut st = cluster(2);
        st.apply(&submit(9, None, 0));
        st.apply(&assign(9, 1, 1));
        assert_eq!(
            st.apply(&ran(1, Some(key(9)), b"7")),
            Response::Ran(vec![true])
        );
        assert_eq!(
            st.take_effects(),
            vec![Effect::PutOutcome(key(1), Outcome::Value(b"7".to_vec()))]
        );
        let r = st.request(&key(1)).expect("recorded");
        assert_eq!(r.state, RequestState::Done);
        assert_eq!((r.attempts, r.last_node, r.duration_ms), (1, Some(1), 2));
        assert_eq!(r.parents, vec![key(9)]);
        assert_eq!(st.children(&key(9)), &[key(1)]);
        // The parent never lent its slot: it did not wait on a written-down child.
        assert_eq!(st.busy_slots(1), 1);
        let c = &st.counters()["f"];
        assert_eq!(
            (c.submitted, c.executions),
            (2, 1),
            "the parent and the run"
        );
        // Recorded again (a completion repeated after a leader change): nothing changes.
        assert_eq!(st.apply(&ran(1, None, b"7")), Response::Ran(vec![false]));
        assert!(st.take_effects().is_empty());
        assert_eq!(st.counters()["f"].executions, 1);
        assert_eq!(
            st.apply(&submit(1, None, 0)),
            Response::Submitted(vec![SubmitReply::MemoHit])
        );
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn a_run_finishes_the_written_down_attempt_and_frees_its_slot() {
        let mut st = cluster(1);
        // Written down while it ran (it took long): submitted and assigned.
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        assert_eq!(st.busy_slots(1), 1);
        assert_eq!(st.apply(&ran(1, None, b"7")), Response::Ran(vec![true]));
        assert_eq!(st.busy_slots(1), 0);
        assert_eq!(st.request_state(&key(1)), Some(RequestState::Done));
        assert_eq!(st.counters()["f"].executions, 1);
        let late = st.apply(&complete(1, 1, 1, Outcome::Value(b"7".to_vec())));
        assert_eq!(late, Response::Completed(vec![CompleteReply::Stale]));
        // A parent recorded after its child keeps the link.
        assert_eq!(
            st.apply(&ran(2, Some(key(3)), b"1")),
            Response::Ran(vec![true])
        );
        assert_eq!(st.apply(&ran(3, None, b"2")), Response::Ran(vec![true]));
        assert_eq!(st.children(&key(3)), &[key(2)]);
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn completed_request_is_memoized_and_its_result_leaves_state() {
        let mut st = cluster(2);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        let value = Outcome::Value(b"42".to_vec());
        let r = st.apply(&complete(1, 1, 1, value.clone()));
        assert_eq!(r, Response::Completed(vec![CompleteReply::Finished]));
        assert_eq!(st.take_effects(), vec![Effect::PutOutcome(key(1), value)]);
        assert_eq!(
            st.apply(&submit(1, None, 0)),
            Response::Submitted(vec![SubmitReply::MemoHit])
        );
        assert_eq!(st.counters()["f"].memo_hits, 1);
        assert_eq!(st.counters()["f"].executions, 1);
    }

    #[test]
    fn finished_request_reads_back_as_it_was() {
        let mut st = cluster(2);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        st.apply(&submit(2, Some(key(1)), 0));
        st.apply(&assign(2, 1, 1));
        let mut want = st.request(&key(2)).expect("running").into_owned();
        st.apply(&complete(2, 1, 1, Outcome::Value(vec![7])));
        want.state = RequestState::Done;
        want.updated = 3;
        want.duration_ms = 1;
        want.waiting = 0;
        assert_eq!(st.request(&key(2)).as_deref(), Some(&want));
        assert_eq!(st.request_state(&key(2)), Some(RequestState::Done));
        assert_eq!(
            st.reply_fields(&key(2)),
            Some((RequestState::Done, want.last_node, 1))
        );
        assert_eq!(
            st.reply_fields(&key(1)),
            Some((st.request(&key(1)).unwrap().state, Some(1), 0)),
            "a running request replies with the node it runs on"
        );
        assert_eq!(st.recent(1).first().map(|r| r.key), Some(key(2)));
        // A memo hit from another parent links it to the finished record too.
        st.apply(&submit(3, None, 0));
        st.apply(&assign(3, 1, 1));
        st.apply(&submit(2, Some(key(3)), 0));
        assert_eq!(
            st.request(&key(2)).map(|r| r.parents.clone()),
            Some(vec![key(1), key(3)])
        );
        assert_eq!(st.state_counts()["done"], 1);
        st.check_invariants().expect("invariants");
        st.take_effects();
        let back: ClusterState =
            postcard::from_bytes(&postcard::to_allocvec(&st).expect("encodes")).expect("decodes");
        assert_eq!(back, st);
        assert_eq!(
            back.request(&key(2)).as_deref(),
            Some(&*st.request(&key(2)).expect("kept"))
        );
    }

    #[test]
    fn function_failure_is_retried_then_final() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 1));
        st.apply(&assign(1, 1, 1));
        let fail = Outcome::Error(TaskError::new(codes::FUNCTION_FAILED, "no"));
        assert_eq!(
            st.apply(&complete(1, 1, 1, fail.clone())),
            Response::Completed(vec![CompleteReply::Retrying])
        );
        assert!(st.take_effects().is_empty());
        assert_eq!(st.queue_len(), 1);
        // The retry may start once its backoff (0 ms) after the failure at 3 has passed.
        let Command::Assign { assignments, .. } = assign(1, 1, 2) else {
            unreachable!()
        };
        st.apply(&Command::Assign { assignments, at: 3 });
        assert_eq!(
            st.apply(&complete(1, 1, 2, fail)),
            Response::Completed(vec![CompleteReply::Finished])
        );
        assert_eq!(
            st.request(&key(1)).map(|r| r.state),
            Some(RequestState::Failed)
        );
        assert_eq!(st.counters()["f"].failures, 2);
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn node_down_requeues_its_running_requests() {
        let mut st = cluster(2);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        st.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Down,
            at: 5,
        });
        assert_eq!(
            st.request(&key(1)).map(|r| r.state),
            Some(RequestState::Queued)
        );
        assert_eq!(st.running_count(1), 0);
        assert_eq!(st.busy_slots(1), 0);
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn parked_request_holds_no_slot_and_stale_parks_change_nothing() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        let park = |attempt, parked| Command::Park {
            key: key(1),
            node: 1,
            attempt,
            parked,
            at: 9,
        };
        st.apply(&park(2, true));
        assert_eq!(st.busy_slots(1), 1, "another attempt's park is stale");
        st.apply(&park(1, true));
        assert_eq!(st.busy_slots(1), 0, "parked: the slot is free");
        st.check_invariants().expect("invariants");
        st.apply(&park(1, false));
        assert_eq!(st.busy_slots(1), 1, "resumed: the slot is held again");
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn waiting_parent_lends_its_slot_until_the_child_finishes() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        assert_eq!(st.busy_slots(1), 1);
        st.apply(&submit(2, Some(key(1)), 0));
        assert_eq!(st.busy_slots(1), 0, "the parent waits on its child");
        st.apply(&assign(2, 1, 1));
        st.apply(&complete(2, 1, 1, Outcome::Value(vec![])));
        assert_eq!(st.busy_slots(1), 1, "the parent runs again");
        assert_eq!(st.children(&key(1)), &[key(2)]);
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn forget_drops_terminal_requests_and_their_results() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        st.apply(&complete(1, 1, 1, Outcome::Value(vec![1])));
        st.take_effects();
        let r = st.apply(&Command::Forget {
            selector: ForgetSelector::Oldest(10),
            at: 9,
        });
        assert_eq!(r, Response::Forgotten(1));
        assert_eq!(st.take_effects(), vec![Effect::DeleteOutcome(key(1))]);
        assert_eq!(st.request_count(), 0);
        assert_eq!(st.finished_len(), 0);
    }

    #[test]
    fn eviction_follows_the_latest_completion_of_a_request_run_again() {
        let mut st = cluster(3);
        for n in 1..=3 {
            st.apply(&submit(n, None, 0));
            st.apply(&assign(n, 1, 1));
            st.apply(&complete(n, 1, 1, Outcome::Value(vec![n])));
        }
        // 2 runs again (no cache) and finishes last.
        let Command::Submit { mut requests, at } = submit(2, None, 0) else {
            unreachable!()
        };
        requests[0].no_cache = true;
        st.apply(&Command::Submit { requests, at });
        assert_eq!(st.finished_len(), 2);
        st.apply(&assign(2, 1, 1));
        st.apply(&complete(2, 1, 1, Outcome::Value(vec![9])));
        assert_eq!(st.finished_len(), 3);
        st.check_invariants().expect("invariants");
        st.take_effects();
        st.apply(&Command::Forget {
            selector: ForgetSelector::Oldest(2),
            at: 9,
        });
        assert_eq!(
            st.take_effects(),
            vec![Effect::DeleteOutcome(key(1)), Effect::DeleteOutcome(key(3))]
        );
        assert_eq!(st.finished_len(), 1);
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn snapshot_encoding_skips_pending_effects() {
        let mut st = cluster(1);
        st.apply(&submit(1, None, 0));
        st.apply(&assign(1, 1, 1));
        st.apply(&complete(1, 1, 1, Outcome::Value(vec![1])));
        let with_effects = st.digest();
        st.take_effects();
        assert_eq!(st.digest(), with_effects);
        let back: ClusterState =
            postcard::from_bytes(&postcard::to_allocvec(&st).expect("encodes")).expect("decodes");
        assert_eq!(back, st);
    }

    fn submit_from(client: &str, n: u8, parent: Option<RequestKey>) -> Command {
        let Command::Submit { requests, at } = submit(n, parent, 0) else {
            unreachable!()
        };
        Command::SubmitFrom {
            client: client.into(),
            requests,
            at,
        }
    }

    #[test]
    fn submit_from_records_owners_and_children_inherit_them() {
        let mut st = cluster(1);
        st.apply(&submit_from("a", 1, None));
        st.apply(&submit_from("b", 2, None));
        st.apply(&submit(3, None, 0));
        let one = Usage {
            requests: 1,
            bytes: 1,
        };
        assert_eq!(st.owners().usage_of("a"), one);
        assert_eq!(st.owners().usage_of("b"), one);
        assert_eq!(st.owners().usage_of(UNKNOWN), one);
        assert_eq!(st.owners().total().bytes, 3);
        st.check_invariants().expect("invariants");
        st.apply(&assign(1, 1, 1));
        assert_eq!(st.owners().queued_by("a"), 0);
        assert_eq!(st.owners().usage_of("a"), one, "running still counts");
        assert_eq!(st.owners().owner(&key(1)), "a");
        // A child call sent by a node is its root caller's.
        st.apply(&submit_from("node-1", 4, Some(key(1))));
        assert_eq!(st.owners().owner(&key(4)), "a");
        assert_eq!(st.owners().usage_of("a").requests, 2);
        assert_eq!(st.owners().queued_by("a"), 1);
        assert_eq!(st.owners().usage_of("node-1"), Usage::default());
        st.check_invariants().expect("invariants");
        // Joining does not change the owner.
        st.apply(&submit_from("b", 4, None));
        assert_eq!(st.owners().owner(&key(4)), "a");
        st.apply(&complete(1, 1, 1, Outcome::Value(vec![1])));
        st.check_invariants().expect("invariants");
        assert_eq!(st.owners().owner(&key(1)), UNKNOWN, "finished: not live");
        st.apply(&memo(9, b"1"));
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn fair_queue_alternates_clients() {
        let mut st = cluster(1);
        for n in 1..=4 {
            st.apply(&submit_from("flood", n, None));
        }
        st.apply(&submit_from("other", 9, None));
        let order: Vec<_> = st.queue_fair().map(|r| r.key).collect();
        assert_eq!(order, vec![key(1), key(9), key(2), key(3), key(4)]);
        let fifo: Vec<_> = st.queue().map(|r| r.key).collect();
        assert_eq!(fifo, vec![key(1), key(2), key(3), key(4), key(9)]);
    }

    #[test]
    fn cancel_many_cancels_each_and_skips_unknown_keys() {
        let mut st = cluster(1);
        for n in 1..=5 {
            st.apply(&submit_from("a", n, None));
        }
        st.apply(&assign(1, 1, 1));
        st.apply(&submit_from("a", 6, Some(key(1))));
        let r = st.apply(&Command::CancelMany {
            keys: vec![key(1), key(2), key(3), key(77)],
            at: 5,
        });
        let Response::Cancelled(mut keys) = r else {
            panic!("{r:?}")
        };
        keys.sort();
        assert_eq!(keys, vec![key(1), key(2), key(3), key(6)], "with the child");
        assert_eq!(st.queue_len(), 2);
        assert_eq!(st.owners().queued_by("a"), 2);
        assert_eq!(st.owners().usage_of("a").requests, 2);
        assert_eq!(st.busy_slots(1), 0);
        st.check_invariants().expect("invariants");
        st.apply(&Command::CancelMany {
            keys: vec![key(4), key(5)],
            at: 6,
        });
        assert_eq!(st.queue_len(), 0);
        assert_eq!(st.owners().total(), Usage::default());
        assert!(st.owners().usage().next().is_none());
        st.check_invariants().expect("invariants");
    }

    #[test]
    fn owners_are_unknown_after_a_snapshot_and_apply_stays_deterministic() {
        let mut st = cluster(1);
        st.apply(&submit_from("a", 1, None));
        st.apply(&submit_from("b", 2, None));
        let back: ClusterState =
            postcard::from_bytes(&postcard::to_allocvec(&st).expect("encodes")).expect("decodes");
        back.check_invariants().expect("invariants after decoding");
        assert_eq!(back.owners().queued_by(UNKNOWN), 2);
        assert_eq!(back.owners().usage_of(UNKNOWN).bytes, 2);
        assert_eq!(back.digest(), st.digest(), "owners are not encoded");
        let mut again = cluster(1);
        again.apply(&submit_from("a", 1, None));
        again.apply(&submit_from("b", 2, None));
        assert_eq!(again, st);
    }
}
