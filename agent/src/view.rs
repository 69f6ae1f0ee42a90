//! Read views of the applied state as wire messages (status, nodes, queue, trees, events).

use crate::agent::Agent;
use crate::context::now_ms;
use crate::leadership::Leadership;
use crate::paging::{self, Fit};
use mozen_model::{Code, Request, RequestKey, RequestState, SHOWN_ARGS_BYTES, quote_bytes};
use mozen_proto as pb;
use mozen_store::ClusterState;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

pub fn raft_status(agent: &Agent) -> pb::RaftStatus {
    let m = agent.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    let member = |id: &u64| pb::Member {
        id: *id,
        addr: mem.get_node(id).map(|n| n.addr.clone()).unwrap_or_default(),
    };
    let leader_addr = agent.leader().map(|(_, a)| a).unwrap_or_default();
    let last_log = m.last_log_index.unwrap_or(0);
    let quarantine = agent.integrity.quarantine();
    pb::RaftStatus {
        node_id: agent.me(),
        leader_id: crate::context::current_leader(&m, agent.me()),
        leader_addr,
        term: m.current_term,
        last_log_index: last_log,
        commit_index: commit_index(&m).max(m.last_applied.map_or(0, |l| l.index)),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        voters: mem.voter_ids().map(|id| member(&id)).collect(),
        learners: mem.learner_ids().map(|id| member(&id)).collect(),
        server_state: if quarantine.is_some() {
            "corrupt".into()
        } else if m.state.is_leader() && !crate::context::leads(&m, agent.me()) {
            "stepped-down".into()
        } else {
            format!("{:?}", m.state).to_lowercase()
        },
        log_entries: agent.log.log_len(),
        disk_bytes: agent.log.disk_size(),
        mismatches: agent
            .integrity
            .mismatches()
            .into_iter()
            .map(|m| pb::StateMismatch {
                node_id: m.node,
                index: m.index,
                others: m.others,
                outvoted: m.outvoted,
            })
            .collect(),
        quarantined: quarantine.map(|q| q.reason.clone()).unwrap_or_default(),
    }
}

/// This agent's applied index with a digest of its state at that index, and its checkpoints.
pub fn state_digest(agent: &Agent) -> pb::StateDigestReply {
    let (applied_index, digest) = agent.sm.digest();
    pb::StateDigestReply {
        applied_index,
        digest: digest.to_vec(),
        ..crate::checks::checkpoints_reply(agent)
    }
}

/// On the leader: the highest index a majority of voters hold. Elsewhere: 0 (callers take the
/// applied index, which trails the commit index by at most a few entries).
fn commit_index(m: &openraft::RaftMetrics<u64, mozen_store::RaftNode>) -> u64 {
    let Some(rep) = &m.replication else { return 0 };
    let mut matched: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| {
            if id == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                rep.get(&id).and_then(|l| l.as_ref()).map_or(0, |l| l.index)
            }
        })
        .collect();
    if matched.is_empty() {
        return 0;
    }
    matched.sort_unstable();
    matched[(matched.len() - 1) / 2]
}

/// The node table with the leader's view of each node (heartbeat age, running express calls,
/// throughput): a read only the leader can answer.
pub fn nodes(agent: &Agent, leadership: &Leadership) -> Vec<pb::Node> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let leader = agent.raft.metrics().borrow().current_leader;
    // Express calls running before they are written down (only the leader has any).
    let mut flying: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for f in leadership.flights.lock().expect("flights").values() {
        if !f.written && !f.landing {
            *flying.entry(f.node).or_default() += 1;
        }
    }
    let l = leadership.liveness.lock().expect("liveness");
    let now = Instant::now();
    state
        .nodes()
        .map(|n| {
            let mut p = pb::Node::from_info(n);
            p.is_leader = leader == Some(n.id);
            p.busy_slots = state.busy_slots(n.id);
            p.running = state.running_count(n.id) as u32 + flying.get(&n.id).copied().unwrap_or(0);
            p.heartbeat_age_ms = l
                .last_seen
                .get(&n.id)
                .map_or(-1, |t| now.duration_since(*t).as_millis() as i64);
            p.tasks_per_sec = l.rates.get(&n.id).copied().unwrap_or(0.0);
            p
        })
        .collect()
}

pub fn request_info(state: &ClusterState, r: &Request, error: String) -> pb::RequestInfo {
    pb::RequestInfo {
        key: r.key.to_hex(),
        function: r.function.clone(),
        args_json: quote_bytes(&r.args, SHOWN_ARGS_BYTES),
        args_bytes: r.args.len() as u64,
        args_cut: r.args.len() > SHOWN_ARGS_BYTES,
        state: r.state.name().into(),
        node: r.state.node().or(r.last_node),
        attempts: r.attempts,
        priority: r.priority,
        created_ms: r.created,
        updated_ms: r.updated,
        duration_ms: r.duration_ms,
        error,
        parents: r.parents.len() as u32,
        children: state.children(&r.key).len() as u32,
        state_enum: pb::RequestState::from(&r.state).into(),
    }
}

fn error_of(agent: &Agent, r: &Request) -> String {
    if matches!(r.state, RequestState::Failed | RequestState::Cancelled)
        && let Ok(Some(mozen_model::Outcome::Error(e))) = agent.sm.outcome(&r.key)
    {
        return format!("{}: {}", e.code, e.message);
    }
    String::new()
}

/// What to list of a request tree (see [`tree`]).
pub struct TreePage {
    pub max: usize,
    pub max_depth: u32,
    pub with_args: bool,
    /// Entries already read (from the page token).
    pub skip: usize,
}

/// Depth-first request tree from `root`: after the first `page.skip` entries, at most
/// `page.max` more that fit `fit`, `page.max_depth` levels below the root, arguments left
/// out unless `page.with_args`. Shared children (several parents) are marked; a child seen
/// before is listed once more as `repeated`, without its subtree. Also returns the token of
/// the next page when entries remain.
pub fn tree(
    agent: &Agent,
    root: RequestKey,
    page: &TreePage,
    fit: &mut Fit,
) -> Result<(Vec<pb::TreeEntry>, String), String> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    if state.request(&root).is_none() {
        return Err(format!("{}: no request {root}", Code::UnknownRequest));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, 0u32)];
    let mut walked = 0usize;
    while let Some((k, depth)) = stack.pop() {
        let Some(r) = state.request(&k) else { continue };
        let repeated = !seen.insert(k);
        if !repeated && depth < page.max_depth {
            for c in state.children(&k).iter().rev() {
                stack.push((*c, depth + 1));
            }
        }
        walked += 1;
        if walked <= page.skip {
            continue;
        }
        let mut info = request_info(&state, &r, error_of(agent, &r));
        if !page.with_args {
            info.args_json.clear();
        }
        let entry = pb::TreeEntry {
            depth,
            request: Some(info),
            shared: r.parents.len() > 1,
            repeated,
        };
        if out.len() >= page.max || !fit.take(&entry) {
            return Ok((out, paging::next_tree_token(walked - 1)));
        }
        out.push(entry);
    }
    Ok((out, String::new()))
}

/// Every function the cluster counted or some agent registered, by name: after `after`, at
/// most `limit` that fit `fit`, and the token of the next page when more remain.
pub fn functions(
    agent: &Agent,
    after: Option<&str>,
    limit: usize,
    fit: &mut Fit,
) -> (Vec<pb::FunctionStats>, String) {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let mut out: BTreeMap<String, pb::FunctionStats> = BTreeMap::new();
    for (name, c) in state.counters() {
        out.insert(
            name.clone(),
            pb::FunctionStats {
                name: name.clone(),
                submitted: c.submitted,
                executions: c.executions,
                memo_hits: c.memo_hits,
                joined: c.joined,
                failures: c.failures,
                ..Default::default()
            },
        );
    }
    drop(state);
    for (name, shape, origin) in agent.functions.list() {
        let f = out.entry(name.clone()).or_insert(pb::FunctionStats {
            name,
            ..Default::default()
        });
        f.registered = true;
        f.shape = shape;
        f.origin = origin.into();
    }
    let mut page = Vec::new();
    let from = after.map_or(std::ops::Bound::Unbounded, |a| {
        std::ops::Bound::Excluded(a.to_string())
    });
    for (_, f) in out.range::<String, _>((from, std::ops::Bound::Unbounded)) {
        if page.len() >= limit || !fit.take(f) {
            // When not even this one fits, the next page starts after it: no page loops.
            let token = paging::next_functions_token(&page.last().unwrap_or(f).name);
            return (page, token);
        }
        page.push(f.clone());
    }
    (page, String::new())
}

/// The queue's summary, and its requests after position `after` (priority, seq) in the
/// order they will run: at most `limit` that fit `fit`, with the token of the next page when
/// more remain.
pub fn queue(
    agent: &Agent,
    limit: usize,
    after: Option<(i32, u64)>,
    fit: &mut Fit,
) -> (pb::QueueSummary, Vec<pb::RequestInfo>, String) {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let now = now_ms();
    let mut groups: BTreeMap<(i32, String), (u64, u64)> = BTreeMap::new();
    for r in state.queue() {
        let g = groups.entry((-r.priority, r.function.clone())).or_default();
        g.0 += 1;
        g.1 = g.1.max(now.saturating_sub(r.created));
    }
    let mut head: Vec<pb::RequestInfo> = Vec::new();
    let mut next = String::new();
    let mut last = None;
    for r in state.queue_after(after) {
        let info = request_info(&state, r, String::new());
        if head.len() >= limit || !fit.take(&info) {
            if let Some((p, seq)) = last.or(after) {
                next = paging::next_queue_token(p, seq);
            } else if head.is_empty() && limit > 0 {
                // The first queued request alone does not fit: name the page after it.
                next = paging::next_queue_token(r.priority, r.seq);
            }
            break;
        }
        last = Some((r.priority, r.seq));
        head.push(info);
    }
    let counts = state.state_counts();
    // Throughput and the express calls held for a place are leader memory (none elsewhere).
    let leadership = agent.hub.leadership();
    let throughput: f64 = leadership.as_ref().map_or(0.0, |l| {
        l.liveness.lock().expect("liveness").rates.values().sum()
    });
    let held = leadership
        .as_ref()
        .map_or(0, |l| l.held.lock().expect("held").len());
    let summary = pb::QueueSummary {
        queued: (state.queue_len() + held) as u64,
        running: counts.get("running").copied().unwrap_or(0),
        groups: groups
            .into_iter()
            .map(|((p, f), (count, oldest))| pb::QueueGroup {
                function: f,
                priority: -p,
                count,
                oldest_age_ms: oldest,
            })
            .collect(),
        throughput,
        done: counts.get("done").copied().unwrap_or(0),
        failed: counts.get("failed").copied().unwrap_or(0),
    };
    (summary, head, next)
}

/// The newest events older than `before` (see [`paging::events_token`]), oldest first: at most
/// `limit` that fit `fit`, and the token of the next (older) page when more remain.
pub fn events(
    agent: &Agent,
    limit: usize,
    before: Option<(u64, usize)>,
    fit: &mut Fit,
) -> (Vec<pb::Event>, String) {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let mut skip_at = before.map_or(0, |(_, n)| n);
    let mut page: Vec<pb::Event> = Vec::new();
    let mut next = String::new();
    for e in state.events().rev() {
        if let Some((at, _)) = before {
            if e.at > at {
                continue;
            }
            if e.at == at && skip_at > 0 {
                skip_at -= 1;
                continue;
            }
        }
        let event = pb::Event {
            at_ms: e.at,
            kind: e.kind.clone(),
            node: e.node,
            message: e.message.clone(),
        };
        if page.len() >= limit || !fit.take(&event) {
            // Older events remain: the next page starts below the oldest one read.
            let oldest = page.last().map_or(e.at, |o| o.at_ms);
            let mut n = page.iter().filter(|o| o.at_ms == oldest).count();
            if let Some((at, done)) = before
                && at == oldest
            {
                n += done;
            }
            if page.is_empty() {
                // This one alone does not fit: step over it.
                n += 1;
            }
            next = paging::next_events_token(oldest, n);
            break;
        }
        page.push(event);
    }
    page.reverse();
    (page, next)
}

/// Recently updated requests, newest first, as many of `n` as fit `fit`.
pub fn recent_requests(agent: &Agent, n: usize, fit: &mut Fit) -> Vec<pb::RequestInfo> {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    state
        .recent(n)
        .iter()
        .map(|r| request_info(&state, r, String::new()))
        .take_while(|info| fit.take(info))
        .collect()
}

/// Most requests a Watch update carries.
pub const WATCH_REQUESTS_MAX: usize = 1000;
/// Most functions a Watch update carries.
const WATCH_FUNCTIONS_MAX: usize = 1000;
/// Events a Watch update carries.
const WATCH_EVENTS: usize = 100;

/// One update of the console's feed, its lists within `budget` bytes together.
pub fn cluster_update(
    agent: &Agent,
    leadership: &Leadership,
    requests: usize,
    budget: usize,
) -> pb::ClusterUpdate {
    let mut fit = Fit::new(budget);
    let (queue, _, _) = queue(agent, 0, None, &mut fit);
    let nodes = nodes(agent, leadership);
    let (events, _) = events(agent, WATCH_EVENTS, None, &mut fit);
    let (functions, _) = functions(agent, None, WATCH_FUNCTIONS_MAX, &mut fit);
    let requests = recent_requests(agent, requests.min(WATCH_REQUESTS_MAX), &mut fit);
    pb::ClusterUpdate {
        now_ms: now_ms(),
        raft: Some(raft_status(agent)),
        nodes,
        queue: Some(queue),
        requests,
        events,
        functions,
        truncated: fit.cut,
    }
}
