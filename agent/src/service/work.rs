//! The workers' audience: join, heartbeats, the Work stream that carries assignments and
//! cancellations, completions, parking. Everything here is the leader's: each handler takes
//! the [`Leadership`] first. The leader's own worker calls [`open_work`],
//! [`complete_reported`] and [`park_request`] directly, without a gRPC round trip.
//!
//! Only credentials with the worker role get here (the guard's table); each request names
//! nodes, and a caller speaks only for the nodes its [`Speaker`] allows. Outcomes are
//! further judged by [`crate::provenance`]: only the node holding the attempt reports it.

use super::{Res, Service, propose_status};
use crate::agent::Agent;
use crate::context::now_ms;
use crate::leadership::{Leadership, assignment_item};
use crate::provenance::{Reason, Verdict, judge};
use crate::security::Speaker;
use mozen_model::{Code, NodeInfo, NodeState, RequestKey, RequestState};
use mozen_proto as pb;
use mozen_proto::status::status;
use mozen_store::Command;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

/// A worker's Work stream, as the service hands it out.
pub(crate) type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkItem, Status>> + Send>>;

pub(super) async fn join(s: &Service, r: Request<pb::JoinRequest>) -> Res<pb::JoinReply> {
    let leadership = s.leadership()?;
    let speaker = Speaker::of(&r);
    let r = r.into_inner();
    speaker.check("join", r.id)?;
    if r.id == 0 || r.slots == 0 {
        return Err(status(
            Code::BadArguments,
            "join needs a positive id and slots",
        ));
    }
    let role = s.agent.role_of(r.id);
    let node = NodeInfo {
        id: r.id,
        name: r.name,
        addr: r.addr,
        cpus: r.cpus,
        memory_bytes: r.memory_bytes,
        slots: r.slots,
        state: NodeState::Active,
        role,
        labels: r.labels.into_iter().collect(),
    };
    let at = now_ms();
    leadership.heard_from(r.id);
    s.propose(Command::Batch(vec![
        Command::RegisterNode { node, at },
        Command::SetNodeRole { id: r.id, role, at },
    ]))
    .await?;
    Ok(Response::new(pb::JoinReply {
        leader_id: s.agent.me(),
        role: role.as_str().into(),
    }))
}

pub(super) async fn heartbeat(
    s: &Service,
    r: Request<pb::HeartbeatRequest>,
) -> Res<pb::HeartbeatReply> {
    let leadership = s.leadership()?;
    let speaker = Speaker::of(&r);
    let r = r.into_inner();
    speaker.check("heartbeat", r.node_id)?;
    let known = s
        .agent
        .sm
        .shared()
        .read()
        .expect("state")
        .node(r.node_id)
        .is_some();
    if !known {
        return Err(status(
            Code::UnknownNode,
            format_args!("node {} is not in the node table", r.node_id),
        ));
    }
    {
        let mut l = leadership.liveness.lock().expect("liveness");
        l.last_seen.insert(r.node_id, Instant::now());
        if r.leaving {
            l.leaving.insert(r.node_id);
        } else {
            l.leaving.remove(&r.node_id);
        }
    }
    let at = now_ms();
    if !r.hand_back.is_empty() {
        let keys: Vec<RequestKey> = r
            .hand_back
            .iter()
            .filter_map(|k| pb::convert::key_from_bytes(k))
            .collect();
        s.propose(Command::Requeue {
            node: r.node_id,
            keys: Some(keys),
            reason: "its agent shut down".into(),
            at,
        })
        .await?;
    } else if !r.leaving {
        let reported: Vec<RequestKey> = r
            .running
            .iter()
            .filter_map(|k| pb::convert::key_from_bytes(k))
            .collect();
        let grace = (s.agent.cfg.lease.as_millis() as u64).max(3000);
        let lost =
            crate::leadership::schedule::lost_assignments(&s.agent, r.node_id, &reported, grace);
        if !lost.is_empty() {
            tracing::info!(
                node = r.node_id,
                count = lost.len(),
                "re-queueing assignments the worker does not know"
            );
            s.propose(Command::Requeue {
                node: r.node_id,
                keys: Some(lost),
                reason: "assignment lost".into(),
                at,
            })
            .await?;
        }
    }
    Ok(Response::new(pb::HeartbeatReply {
        leader_id: s.agent.me(),
        term: leadership.term(),
    }))
}

pub(super) async fn work(s: &Service, r: Request<pb::WorkRequest>) -> Res<WorkStream> {
    let leadership = s.leadership()?;
    let node = r.get_ref().node_id;
    Speaker::of(&r).check("the Work stream", node)?;
    Ok(Response::new(open_work(&s.agent, &leadership, node)?))
}

pub(super) async fn complete(
    s: &Service,
    r: Request<pb::CompleteRequest>,
) -> Res<pb::CompleteReply> {
    let leadership = s.leadership()?;
    let speaker = Speaker::of(&r);
    complete_reported(&s.agent, &leadership, r.into_inner().completions, &speaker).await?;
    Ok(Response::new(pb::CompleteReply {}))
}

pub(super) async fn park(s: &Service, r: Request<pb::ParkRequest>) -> Res<pb::ParkReply> {
    s.leadership()?;
    let speaker = Speaker::of(&r);
    park_request(&s.agent, r.into_inner(), &speaker).await?;
    Ok(Response::new(pb::ParkReply {}))
}

/// Unregisters a worker's stream when tonic drops it.
struct StreamGuard {
    leadership: Weak<Leadership>,
    node: u64,
    conn: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let Some(l) = self.leadership.upgrade() else {
            return;
        };
        let mut s = l.streams.lock().expect("streams");
        if s.get(&self.node).is_some_and(|st| st.conn == self.conn) {
            s.remove(&self.node);
            drop(s);
            l.orphan(self.node);
        }
    }
}

fn async_stream_with_guard<S>(
    inner: S,
    guard: StreamGuard,
) -> impl Stream<Item = Result<pb::WorkItem, Status>> + Send
where
    S: Stream<Item = Result<pb::WorkItem, Status>> + Send + Unpin,
{
    futures::stream::unfold((inner, guard), |(mut inner, guard)| async move {
        use futures::StreamExt;
        inner.next().await.map(|item| (item, (inner, guard)))
    })
}

/// Opens node `node`'s Work stream on this agent, the leader: registers it with the
/// leadership and replays what the state says runs there. The worker of the leader itself
/// uses it directly, without a gRPC round trip.
pub(crate) fn open_work(
    agent: &Agent,
    leadership: &Arc<Leadership>,
    node: u64,
) -> Result<WorkStream, Status> {
    let state = agent.sm.shared();
    if state.read().expect("state").node(node).is_none() {
        return Err(status(
            Code::UnknownNode,
            format_args!("node {node} is not in the node table",),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = agent.next_conn();
    {
        // Register first, then replay what already runs there: an assignment applied in
        // between is sent twice and the worker ignores the repeat.
        leadership.streams.lock().expect("streams").insert(
            node,
            crate::leadership::Stream {
                conn,
                tx: tx.clone(),
            },
        );
        leadership.heard_from(node);
        let state = state.read().expect("state");
        for req in state.running_on(node) {
            if let RequestState::Running { attempt, .. } = req.state {
                let _ = tx.send(Ok(assignment_item(req.key, req, attempt)));
            }
        }
    }
    leadership.schedule.notify_one();
    let out = UnboundedReceiverStream::new(rx);
    // Unregister when the worker goes away (the stream is dropped).
    let guard = StreamGuard {
        leadership: Arc::downgrade(leadership),
        node,
        conn,
    };
    let s = async_stream_with_guard(out, guard);
    Ok(Box::pin(s))
}

/// How long a new leader's `Complete` waits for its state to hold earlier terms' entries.
const STATE_CURRENT_WAIT: Duration = Duration::from_secs(5);

/// Commits outcomes reported by a worker (through gRPC, or directly by the leader's own),
/// once [`provenance`](crate::provenance) says `speaker` reports them for the nodes holding
/// them: a refused one refuses the whole report with `MZ-FORBIDDEN` before anything is
/// handed on or proposed; stale ones are dropped.
pub(crate) async fn complete_reported(
    agent: &Agent,
    leadership: &Leadership,
    reported: Vec<pb::Completion>,
    speaker: &Speaker,
) -> Result<(), Status> {
    let mut completions = Vec::with_capacity(reported.len());
    for c in reported {
        let Some(key) = pb::convert::key_from_bytes(&c.key) else {
            return Err(status(
                Code::BadArguments,
                "completion key must be 32 bytes",
            ));
        };
        let outcome = match (c.value, c.error) {
            (Some(v), None) => agent.cfg.limits.check_result(c.node, v),
            (_, Some(e)) => mozen_model::Outcome::Error((&e).into()),
            (None, None) => mozen_model::Outcome::Value(b"null".to_vec()),
        };
        completions.push(mozen_store::Completion {
            key,
            node: c.node,
            attempt: c.attempt,
            outcome,
            duration_ms: c.duration_ms,
        });
    }
    let completions = provenance(agent, leadership, completions, speaker).await?;
    // Child calls waiting on these values go on now; the values are committed below.
    for c in &completions {
        if let mozen_model::Outcome::Value(v) = &c.outcome {
            leadership.value_reported(&c.key, v, c.node, c.duration_ms);
        }
    }
    let (express, completions): (Vec<_>, Vec<_>) =
        completions.into_iter().partition(|c| c.attempt == 0);
    // An express run this leader does not hold counts for what an earlier leader wrote down,
    // which this leader's state must show before it decides: else the run would be dropped
    // and its worker, acknowledged, would forget it while the log shows it running there
    // (later re-queued as lost, an attempt spent).
    if leadership.any_stray(&express)
        && !crate::context::await_state_current(&agent.raft, STATE_CURRENT_WAIT).await
    {
        return Err(status(
            Code::NotReady,
            "this leader has not yet applied what earlier leaders committed; \
             report again",
        ));
    }
    let mut cmds = Vec::new();
    if !express.is_empty() {
        let (landed, durations) = leadership.land(agent, express);
        leadership.record_durations(durations.iter().map(|(f, ms)| (f.as_str(), *ms)));
        cmds = landed;
    }
    {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        let runs: Vec<_> = completions
            .iter()
            .filter(|c| matches!(c.outcome, mozen_model::Outcome::Value(_)))
            // A parent's run time is mostly waiting on its children (its slot lent): it says
            // nothing about how short its function is.
            .filter(|c| state.children(&c.key).is_empty())
            .filter_map(|c| Some((state.request(&c.key)?, c.duration_ms)))
            .collect();
        leadership.record_durations(runs.iter().map(|(r, ms)| (r.function.as_str(), *ms)));
    }
    if !completions.is_empty() {
        cmds.push(Command::Complete {
            completions,
            at: now_ms(),
        });
    }
    let cmd = match cmds.len() {
        0 => return Ok(()),
        1 => cmds.pop().expect("one"),
        _ => Command::Batch(cmds),
    };
    agent
        .propose(cmd)
        .await
        .map_err(|e| propose_status(agent, e))?;
    Ok(())
}

/// Commits that a running request parks or resumes (through gRPC, or directly by the leader's
/// own worker), when `speaker` speaks for the node holding that attempt (else refused as a
/// completion would be; a stale park is dropped).
pub(crate) async fn park_request(
    agent: &Agent,
    r: pb::ParkRequest,
    speaker: &Speaker,
) -> Result<(), Status> {
    let Some(key) = pb::convert::key_from_bytes(&r.key) else {
        return Err(status(Code::BadArguments, "park key must be 32 bytes"));
    };
    let verdict = |agent: &Agent| {
        if !speaker.may_speak_for(r.node) {
            return Verdict::Refused(Reason::Node);
        }
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        judge(state.request(&key).as_deref(), r.node, r.attempt)
    };
    let mut v = verdict(agent);
    if matches!(v, Verdict::Refused(Reason::Attempt))
        && crate::context::await_state_current(&agent.raft, STATE_CURRENT_WAIT).await
    {
        v = verdict(agent);
    }
    match v {
        Verdict::Holds => {}
        Verdict::Stale => return Ok(()),
        Verdict::Refused(reason) => {
            return Err(refuse(
                agent, speaker, reason, "park", &key, r.node, r.attempt,
            ));
        }
    }
    agent
        .propose(Command::Park {
            key,
            node: r.node,
            attempt: r.attempt,
            parked: r.parked,
            at: now_ms(),
        })
        .await
        .map_err(|e| propose_status(agent, e))?;
    Ok(())
}

/// The completions `speaker` may report, as [`crate::provenance`] judges them against this
/// leader's state and express flights: stale ones dropped; any refused one refuses them all.
/// A verdict of "no such attempt" is given only once this leader's state holds what earlier
/// leaders committed (an assignment of theirs may not be applied here yet).
async fn provenance(
    agent: &Agent,
    leadership: &Leadership,
    completions: Vec<mozen_store::Completion>,
    speaker: &Speaker,
) -> Result<Vec<mozen_store::Completion>, Status> {
    let verdicts = |cs: &[mozen_store::Completion]| -> Vec<Verdict> {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        cs.iter()
            .map(|c| {
                if !speaker.may_speak_for(c.node) {
                    return Verdict::Refused(Reason::Node);
                }
                if c.attempt > 0 {
                    return judge(state.request(&c.key).as_deref(), c.node, c.attempt);
                }
                // An express run (attempt 0): the flight names its node; a flight of an
                // earlier leader counts if the log shows it written down on that node.
                match leadership.flight_node(&c.key) {
                    Some(n) if n == c.node => Verdict::Holds,
                    Some(_) => Verdict::Refused(Reason::Attempt),
                    None => match state.request(&c.key).map(|r| r.state) {
                        Some(RequestState::Running { node, .. }) if node == c.node => {
                            Verdict::Holds
                        }
                        Some(RequestState::Running { .. }) => Verdict::Refused(Reason::Attempt),
                        // Not written down: its caller sent the call again; dropped.
                        _ => Verdict::Stale,
                    },
                }
            })
            .collect()
    };
    // An express run this leader does not fly is judged by what earlier leaders wrote down,
    // which this leader's state must hold first (else it would be dropped as not written).
    let strays = completions
        .iter()
        .any(|c| c.attempt == 0 && leadership.flight_node(&c.key).is_none());
    if strays && !crate::context::await_state_current(&agent.raft, STATE_CURRENT_WAIT).await {
        return Err(status(
            Code::NotReady,
            "this leader has not yet applied what earlier leaders committed; report again",
        ));
    }
    let mut v = verdicts(&completions);
    if v.contains(&Verdict::Refused(Reason::Attempt))
        && crate::context::await_state_current(&agent.raft, STATE_CURRENT_WAIT).await
    {
        v = verdicts(&completions);
    }
    if let Some((c, reason)) = completions.iter().zip(&v).find_map(|(c, v)| match v {
        Verdict::Refused(r) => Some((c, *r)),
        _ => None,
    }) {
        return Err(refuse(
            agent,
            speaker,
            reason,
            "completion",
            &c.key,
            c.node,
            c.attempt,
        ));
    }
    Ok(completions
        .into_iter()
        .zip(v)
        .filter(|(_, v)| *v == Verdict::Holds)
        .map(|(c, _)| c)
        .collect())
}

/// Counts a refused outcome, proposes its event when one is due, and returns the refusal.
fn refuse(
    agent: &Agent,
    speaker: &Speaker,
    reason: Reason,
    what: &str,
    key: &RequestKey,
    node: u64,
    attempt: u32,
) -> Status {
    let detail = format!(
        "{what} of request {} for node {node} attempt {attempt}: {}{}",
        key.short(),
        speaker.describe(),
        match reason {
            Reason::Node => ", not that node",
            Reason::Attempt => "; that node does not hold that attempt",
        }
    );
    if let Some(message) = agent.refusals.refused(reason, &speaker.name, &detail) {
        let cmd = Command::Event {
            kind: crate::provenance::EVENT_KIND.into(),
            node: Some(node),
            message,
            at: now_ms(),
        };
        let proposer = agent.ctx.clone();
        agent.tasks.spawn(async move {
            if let Err(e) = proposer.propose(cmd).await {
                tracing::warn!("recording a refused completion: {e}");
            }
        });
    }
    status(Code::Forbidden, detail)
}
