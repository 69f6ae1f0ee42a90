//! The autoscaler: while this agent leads and its hosts file (`--hosts`) enables it, it starts
//! agents from the file's pools when the queue would take too long, and drains and stops
//! pool agents that have been idle.
//!
//! Every `interval` the leader measures, from the replicated state, how many requests are
//! queued and what they cost (the mean run time of recently finished requests of each
//! function, at least the time its running requests have already taken), and estimates the
//! queue's duration on the active slots with the batch cost model
//! ([`CostModel::requests_seconds`], the one `mozen plan` uses). Over the target, it starts as
//! many pool agents as [`CostModel::workers_within`] says are missing, up to each pool's `max`,
//! and waits for them to join before deciding again. With an empty queue, a pool agent that
//! ran nothing for `idle` is drained, then removed and stopped, never going below
//! `min_nodes` active nodes. Voters are never stopped: only pool agents are, and they join as
//! workers.
//!
//! Each decision is a replicated event (`scale-up`, `scale-down`, `autoscale`) with its reason,
//! shown by `mozen events` and the console. In dry-run mode the events say what would be done
//! and nothing is started or stopped. `mozen down` pauses the autoscaler and `mozen up`
//! resumes it, through events too, so that a new leader sees the same switch.
//!
//! The policy itself, [`decide`], is a pure function of an [`Observed`] snapshot.

use super::Leadership;
use crate::batch::cost::CostModel;
use crate::context::{Context, now_ms};
use crate::hosts::{Autoscale, HostsFile, Pool};
use crate::launch::{self, Target};
use mozen_model::{Code, NodeId, NodeOp, NodeRole, NodeState, RequestKey};
use mozen_store::Command;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Node operation that pauses the autoscaler (see [`crate::membership::node_op`]).
pub const PAUSE_OP: &str = NodeOp::AutoscalePause.as_str();
/// Node operation that resumes it.
pub const RESUME_OP: &str = NodeOp::AutoscaleResume.as_str();
/// Event kind of the switch and of failures.
pub const KIND: &str = "autoscale";
pub const KIND_UP: &str = "scale-up";
pub const KIND_DOWN: &str = "scale-down";

/// A node as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    /// Index of the pool the node belongs to.
    pub pool: Option<usize>,
    pub active: bool,
    pub voter: bool,
    pub busy: u32,
    pub slots: u32,
    /// Time since it last ran something (or since the leader first saw it).
    pub idle_for: Duration,
}

/// What the leader observes, every interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub queued: u64,
    /// Measured seconds per queued request, averaged over the queue (0: nothing measured).
    pub secs_each: f64,
    pub nodes: Vec<NodeView>,
    /// Agents started per pool that have not joined yet.
    pub pending: Vec<u32>,
}

/// One decision, with the reason recorded in its event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Start {
        pool: usize,
        count: u32,
        reason: String,
    },
    Stop {
        node: NodeId,
        reason: String,
    },
}

/// The model of a queue of independent requests: the autoscaler does not know a request's
/// overhead and rate limit, and for requests slow enough to scale for they do not matter.
fn queue_model(slots: u32) -> CostModel {
    CostModel {
        per_line: 0.0,
        overhead: 0.0,
        max_rate: f64::INFINITY,
        workers: slots as usize,
        bytes_per_line: 0.0,
        ship_per_byte: 0.0,
    }
}

/// Slots one agent of `pool` brings: its `slots`, else 3 per cpu, else the average of the
/// active nodes.
fn pool_slots(pool: &Pool, obs: &Observed) -> u32 {
    if let Some(s) = pool.capacity.slots {
        return s;
    }
    if let Some(c) = pool.capacity.cpus {
        return mozen_model::default_slots(c);
    }
    let active: Vec<u32> = obs
        .nodes
        .iter()
        .filter(|n| n.active)
        .map(|n| n.slots)
        .collect();
    (active.iter().sum::<u32>() / active.len().max(1) as u32).max(1)
}

/// The policy: what to start or stop given what is observed.
pub fn decide(policy: &Autoscale, pools: &[Pool], obs: &Observed) -> Vec<Decision> {
    let mut out = Vec::new();
    let active: Vec<&NodeView> = obs.nodes.iter().filter(|n| n.active).collect();
    let pending = |i: usize| obs.pending.get(i).copied().unwrap_or(0);
    let slots: u32 = active.iter().map(|n| n.slots).sum::<u32>()
        + (0..pools.len())
            .map(|i| pending(i) * pool_slots(&pools[i], obs))
            .sum::<u32>();
    let target = policy.target.as_secs_f64();
    if obs.queued > 0 && obs.secs_each > 0.0 {
        let model = queue_model(slots);
        let est = model.requests_seconds(obs.queued, obs.secs_each, slots as usize);
        if est <= target || (0..pools.len()).any(|i| pending(i) > 0) {
            // Fast enough, or agents already on their way: decide again once they joined.
            return out;
        }
        let need = model
            .workers_within(obs.queued, obs.secs_each, target)
            .unwrap_or(obs.queued as usize);
        let mut short = (need as i64 - slots as i64).max(0);
        for (i, pool) in pools.iter().enumerate() {
            if short <= 0 {
                break;
            }
            let have = obs.nodes.iter().filter(|n| n.pool == Some(i)).count() as u32 + pending(i);
            let room = pool.max.saturating_sub(have);
            let per = pool_slots(pool, obs) as i64;
            let count = (((short + per - 1) / per) as u32).min(room);
            if count == 0 {
                continue;
            }
            short -= count as i64 * per;
            out.push(Decision::Start {
                pool: i,
                count,
                reason: format!(
                    "{} queued request(s) of {:.1}s each would take {:.0}s on {} slot(s), over the {}s target; {} slot(s) would do it",
                    obs.queued,
                    obs.secs_each,
                    est,
                    slots,
                    target,
                    need
                ),
            });
        }
        return out;
    }
    if obs.queued > 0 {
        return out;
    }
    let mut remaining = active.len();
    let mut idle: Vec<&&NodeView> = active
        .iter()
        .filter(|n| n.pool.is_some() && !n.voter && n.busy == 0 && n.idle_for >= policy.idle)
        .collect();
    // The newest agents go first.
    idle.sort_by_key(|n| std::cmp::Reverse(n.id));
    for n in idle {
        if remaining <= policy.min_nodes {
            break;
        }
        remaining -= 1;
        out.push(Decision::Stop {
            node: n.id,
            reason: format!(
                "idle for {}s with an empty queue (idle limit {}s); {} active node(s) remain, floor {}",
                n.idle_for.as_secs(),
                policy.idle.as_secs(),
                remaining,
                policy.min_nodes
            ),
        });
    }
    out
}

/// Whether the latest switch event says paused.
fn paused(agent: &Context) -> bool {
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    state
        .events()
        .rev()
        .find(|e| {
            e.kind == KIND && (e.message.starts_with("paused") || e.message.starts_with("resumed"))
        })
        .is_some_and(|e| e.message.starts_with("paused"))
}

/// Records the pause or resume switch (the `autoscale-pause`/`-resume` node operations).
pub async fn switch(agent: &Context, op: NodeOp) -> String {
    let message = match op {
        NodeOp::AutoscalePause => {
            "paused: no agent is started or stopped until `mozen up` resumes it"
        }
        _ => "resumed",
    };
    event(agent, KIND, None, message.to_string()).await;
    format!(
        "autoscaler {}",
        message.split(':').next().unwrap_or(message)
    )
}

async fn event(agent: &Context, kind: &str, node: Option<NodeId>, message: String) {
    info!(kind, ?node, "{message}");
    if let Err(e) = agent
        .propose(Command::Event {
            kind: kind.into(),
            node,
            message,
            at: now_ms(),
        })
        .await
    {
        warn!("autoscale event: {e}");
    }
}

/// What the leader remembers between intervals (rebuilt after an election).
#[derive(Default)]
struct Memory {
    /// Running requests last seen: key -> function.
    running: HashMap<RequestKey, String>,
    /// Mean run time per function, seconds (exponentially weighted).
    cost: HashMap<String, f64>,
    last_busy: HashMap<NodeId, Instant>,
    /// Started, not joined yet: id -> (pool, when).
    pending: BTreeMap<NodeId, (usize, Instant)>,
    /// Drained by the autoscaler, to stop once drained.
    stopping: BTreeMap<NodeId, String>,
    /// Highest node id used, so a new agent never takes an id in use.
    high_id: NodeId,
    /// The last dry-run decisions, so that each is told once.
    last_dry: Vec<String>,
}

impl Leadership {
    /// Runs while this leadership lasts, when the hosts file enables autoscaling.
    pub(super) async fn autoscale_loop(self: Arc<Self>, agent: Arc<Context>) {
        run(agent, self).await
    }
}

async fn run(agent: Arc<Context>, l: Arc<Leadership>) {
    let Some(file) = agent.cfg.hosts.clone() else {
        return;
    };
    if !file.autoscale.enabled {
        return;
    }
    info!(
        dry_run = file.autoscale.dry_run,
        target = ?file.autoscale.target,
        idle = ?file.autoscale.idle,
        "autoscaler on"
    );
    // Ids of agents an earlier leader started may not be in the node table yet.
    let started = {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        state
            .events()
            .filter(|e| e.kind == KIND_UP)
            .filter_map(|e| e.node)
            .max()
            .unwrap_or(0)
    };
    let mut mem = Memory {
        high_id: file
            .hosts
            .iter()
            .map(|h| h.id)
            .max()
            .unwrap_or(0)
            .max(started),
        ..Default::default()
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(file.autoscale.interval) => {}
            _ = l.ended().cancelled() => return,
        }
        if agent.stopping.is_cancelled() {
            return;
        }
        let obs = observe(&agent, &l, &file, &mut mem);
        if paused(&agent) {
            continue;
        }
        finish_stops(&agent, &l, &file, &mut mem).await;
        expire_pending(&agent, &file, &mut mem).await;
        let decisions = decide(&file.autoscale, &file.pools, &obs);
        if file.autoscale.dry_run {
            for (kind, node, what) in dry_run(&file, &decisions, &mut mem.last_dry) {
                event(&agent, kind, node, what).await;
            }
            continue;
        }
        for d in decisions {
            act(&agent, &l, &file, &mut mem, d).await;
        }
    }
}

/// The events of a dry run: what would be done, told once until the decisions change.
fn dry_run(
    file: &HostsFile,
    decisions: &[Decision],
    last: &mut Vec<String>,
) -> Vec<(&'static str, Option<NodeId>, String)> {
    let told: Vec<String> = decisions.iter().map(|d| format!("{d:?}")).collect();
    if told == *last {
        return Vec::new();
    }
    *last = told;
    decisions
        .iter()
        .map(|d| {
            let (kind, node, what) = describe(file, d);
            (kind, node, format!("dry run: would {what}"))
        })
        .collect()
}

fn describe(file: &HostsFile, d: &Decision) -> (&'static str, Option<NodeId>, String) {
    match d {
        Decision::Start {
            pool,
            count,
            reason,
        } => (
            KIND_UP,
            None,
            format!(
                "start {count} agent(s) from pool \"{}\": {reason}",
                file.pools[*pool].pattern
            ),
        ),
        Decision::Stop { node, reason } => (
            KIND_DOWN,
            Some(*node),
            format!("drain and stop node {node}: {reason}"),
        ),
    }
}

fn observe(agent: &Context, l: &Leadership, file: &HostsFile, mem: &mut Memory) -> Observed {
    let now = Instant::now();
    let now_ms = now_ms();
    let state = agent.sm.shared();
    let state = state.read().expect("state");
    let (voters, _) = agent.membership();
    // Costs: requests that left the running set since last time, and the running ones.
    let mut running = HashMap::new();
    let mut floor: HashMap<&str, f64> = HashMap::new();
    let mut nodes = Vec::new();
    for n in state.nodes() {
        mem.high_id = mem.high_id.max(n.id);
        mem.pending.remove(&n.id);
        let mut count = 0;
        for r in state.running_on(n.id) {
            count += 1;
            running.insert(r.key, r.function.clone());
            if let mozen_model::RequestState::Running { since, .. } = r.state {
                let secs = now_ms.saturating_sub(since) as f64 / 1000.0;
                let f = floor.entry(r.function.as_str()).or_default();
                *f = f.max(secs);
            }
        }
        let seen = mem.last_busy.entry(n.id).or_insert(now);
        if count > 0 {
            *seen = now;
        }
        nodes.push(NodeView {
            id: n.id,
            pool: file.pools.iter().position(|p| p.matches(&n.name)),
            active: n.state == NodeState::Active && !mem.stopping.contains_key(&n.id),
            voter: voters.contains(&n.id) || n.role == NodeRole::Voter,
            busy: state.busy_slots(n.id),
            slots: n.slots,
            idle_for: now.duration_since(*seen),
        });
    }
    for (key, function) in mem.running.drain() {
        if running.contains_key(&key) {
            continue;
        }
        if let Some(r) = state.request(&key)
            && r.state == mozen_model::RequestState::Done
        {
            let d = r.duration_ms as f64 / 1000.0;
            mem.cost
                .entry(function)
                .and_modify(|c| *c = 0.7 * *c + 0.3 * d)
                .or_insert(d);
        }
    }
    mem.running = running;
    let mut by_function: HashMap<&str, u64> = HashMap::new();
    for r in state.queue() {
        *by_function.entry(r.function.as_str()).or_default() += 1;
    }
    // Calls the leader holds for a place wait as much as queued ones.
    let held = l.held.lock().expect("held");
    for function in held.functions() {
        *by_function.entry(function).or_default() += 1;
    }
    let queued: u64 = by_function.values().sum();
    let work: f64 = by_function
        .iter()
        .map(|(f, n)| {
            let measured = mem.cost.get(*f).copied().unwrap_or(0.0);
            *n as f64 * measured.max(floor.get(f).copied().unwrap_or(0.0))
        })
        .sum();
    let mut pending = vec![0u32; file.pools.len()];
    for (pool, _) in mem.pending.values() {
        pending[*pool] += 1;
    }
    Observed {
        queued,
        secs_each: if queued > 0 {
            work / queued as f64
        } else {
            0.0
        },
        nodes,
        pending,
    }
}

async fn act(
    agent: &Arc<Context>,
    l: &Leadership,
    file: &Arc<HostsFile>,
    mem: &mut Memory,
    d: Decision,
) {
    match d {
        Decision::Start {
            pool,
            count,
            reason,
        } => {
            for _ in 0..count {
                mem.high_id += 1;
                let id = mem.high_id;
                mem.pending.insert(id, (pool, Instant::now()));
                // One event per agent, naming its id: a later leader starts above it.
                let name = file.pools[pool].instance_name(id);
                let pattern = &file.pools[pool].pattern;
                let message = format!("start {name} (node {id}) from pool \"{pattern}\": {reason}");
                event(agent, KIND_UP, Some(id), message).await;
                let (agent, file) = (agent.clone(), file.clone());
                l.spawn(async move {
                    let t = Target::pool(&file.pools[pool], id, "");
                    match launch::start(&file, &t).await {
                        Ok(addr) => info!(id, name = %t.name, ?addr, "pool agent started"),
                        Err(e) => {
                            event(
                                &agent,
                                KIND,
                                Some(id),
                                format!("starting {} failed: {e}", t.name),
                            )
                            .await
                        }
                    }
                });
            }
        }
        Decision::Stop { node, .. } => {
            let (kind, subject, what) = describe(file, &d);
            let name = {
                let state = agent.sm.shared();
                let state = state.read().expect("state");
                state.node(node).map(|n| n.name.clone()).unwrap_or_default()
            };
            event(agent, kind, subject, what).await;
            match crate::membership::node_op(agent, l, node, NodeOp::Drain).await {
                Ok(_) => {
                    mem.stopping.insert(node, name);
                }
                Err(e) => {
                    event(
                        agent,
                        KIND,
                        Some(node),
                        format!("draining node {node} failed: {e}"),
                    )
                    .await
                }
            }
        }
    }
}

/// Removes and stops the nodes drained for stopping once nothing runs there.
async fn finish_stops(
    agent: &Arc<Context>,
    l: &Leadership,
    file: &Arc<HostsFile>,
    mem: &mut Memory,
) {
    let ready: Vec<(NodeId, String, String)> = {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        mem.stopping
            .iter()
            .filter_map(|(id, name)| match state.node(*id) {
                Some(n) if matches!(n.state, NodeState::Drained | NodeState::Down) => {
                    Some((*id, name.clone(), n.addr.clone()))
                }
                Some(_) => None,
                None => Some((*id, name.clone(), String::new())),
            })
            .collect()
    };
    for (id, name, addr) in ready {
        mem.stopping.remove(&id);
        mem.last_busy.remove(&id);
        if let Err(e) = crate::membership::node_op(agent, l, id, NodeOp::Remove).await
            && e.code() != Code::UnknownNode
        {
            event(
                agent,
                KIND,
                Some(id),
                format!("removing node {id} failed: {e}"),
            )
            .await;
            continue;
        }
        let Some(pool) = file.pool_of(&name) else {
            continue;
        };
        let t = Target::pool(pool, id, &addr);
        match launch::stop(file, &t).await {
            Ok(()) => {
                event(
                    agent,
                    KIND_DOWN,
                    Some(id),
                    format!("stopped {name} (node {id}, {addr})"),
                )
                .await
            }
            Err(e) => {
                event(
                    agent,
                    KIND,
                    Some(id),
                    format!("stopping {name} failed: {e}"),
                )
                .await
            }
        }
    }
}

/// Gives up on started agents that did not join in time.
async fn expire_pending(agent: &Context, file: &HostsFile, mem: &mut Memory) {
    let late: Vec<(NodeId, usize)> = mem
        .pending
        .iter()
        .filter(|(_, (_, at))| at.elapsed() > file.autoscale.start_timeout)
        .map(|(id, (pool, _))| (*id, *pool))
        .collect();
    for (id, pool) in late {
        mem.pending.remove(&id);
        let name = file.pools[pool].instance_name(id);
        event(
            agent,
            KIND,
            Some(id),
            format!(
                "{name} (node {id}) did not join within {}s; no longer waiting for it",
                file.autoscale.start_timeout.as_secs()
            ),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(extra: &str) -> HostsFile {
        HostsFile::parse(
            &format!(
                r#"
[cluster]
voters = 1
[cluster.autoscale]
enabled = true
target = "10s"
idle = "30s"
min_nodes = 2
{extra}
[[hosts]]
name = "a1"
address = "127.0.0.1:7001"
launcher = "local"
[[hosts]]
name = "spare-*"
launcher = "command"
start = ["start", "{{name}}"]
stop = ["stop", "{{name}}"]
max = 3
slots = 4
"#
            ),
            Path::new("/x/hosts.toml"),
        )
        .unwrap()
    }

    fn node(id: NodeId, pool: Option<usize>, busy: u32, idle_s: u64) -> NodeView {
        NodeView {
            id,
            pool,
            active: true,
            voter: pool.is_none(),
            busy,
            slots: 4,
            idle_for: Duration::from_secs(idle_s),
        }
    }

    #[test]
    fn a_slow_backlog_starts_agents_up_to_the_pool_max() {
        let f = file("");
        // 40 requests of 2 s on 4 slots: 20 s, over the 10 s target; 8 slots do it.
        let obs = Observed {
            queued: 40,
            secs_each: 2.0,
            nodes: vec![node(1, None, 4, 0)],
            pending: vec![0],
        };
        let d = decide(&f.autoscale, &f.pools, &obs);
        assert_eq!(d.len(), 1);
        let Decision::Start {
            pool,
            count,
            reason,
        } = &d[0]
        else {
            panic!("{d:?}")
        };
        assert_eq!((*pool, *count), (0, 1));
        assert_eq!(
            reason,
            "40 queued request(s) of 2.0s each would take 20s on 4 slot(s), over the 10s target; 8 slot(s) would do it"
        );
        // A huge backlog is capped by max (3, one already running).
        let mut big = obs.clone();
        big.queued = 4000;
        big.nodes.push(node(5, Some(0), 4, 0));
        let d = decide(&f.autoscale, &f.pools, &big);
        assert!(matches!(d[..], [Decision::Start { count: 2, .. }]), "{d:?}");
        // Agents on their way: wait for them.
        let mut waiting = obs.clone();
        waiting.pending = vec![1];
        assert!(decide(&f.autoscale, &f.pools, &waiting).is_empty());
        // Nothing measured yet, or fast enough: nothing to do.
        let mut unknown = obs.clone();
        unknown.secs_each = 0.0;
        assert!(decide(&f.autoscale, &f.pools, &unknown).is_empty());
        let mut quick = obs;
        quick.secs_each = 0.5;
        assert!(decide(&f.autoscale, &f.pools, &quick).is_empty());
    }

    #[test]
    fn a_dry_run_tells_each_decision_once() {
        let f = file("dry_run = true");
        assert!(f.autoscale.dry_run);
        let stop = Decision::Stop {
            node: 7,
            reason: "idle".into(),
        };
        let mut last = Vec::new();
        let told = dry_run(&f, std::slice::from_ref(&stop), &mut last);
        assert_eq!(
            told,
            vec![(
                KIND_DOWN,
                Some(7),
                "dry run: would drain and stop node 7: idle".to_string()
            )]
        );
        assert!(dry_run(&f, std::slice::from_ref(&stop), &mut last).is_empty());
        assert!(dry_run(&f, &[], &mut last).is_empty());
        assert_eq!(dry_run(&f, &[stop], &mut last).len(), 1);
    }

    #[test]
    fn idle_pool_agents_stop_down_to_the_floor_and_voters_stay() {
        let f = file("");
        let obs = Observed {
            queued: 0,
            secs_each: 0.0,
            nodes: vec![
                node(1, None, 0, 100),
                node(5, Some(0), 0, 40),
                node(6, Some(0), 0, 40),
                node(7, Some(0), 0, 5),
                node(8, Some(0), 1, 100),
            ],
            pending: vec![0],
        };
        let d = decide(&f.autoscale, &f.pools, &obs);
        // 6 then 5 are idle long enough; 7 is not, 8 is busy. 5 active, floor 2: both go.
        assert_eq!(
            d.iter()
                .map(|d| match d {
                    Decision::Stop { node, .. } => *node,
                    _ => 0,
                })
                .collect::<Vec<_>>(),
            vec![6, 5]
        );
        let Decision::Stop { reason, .. } = &d[0] else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "idle for 40s with an empty queue (idle limit 30s); 4 active node(s) remain, floor 2"
        );
        // The floor holds.
        let few = Observed {
            nodes: vec![node(1, None, 0, 100), node(5, Some(0), 0, 100)],
            ..obs.clone()
        };
        assert!(decide(&f.autoscale, &f.pools, &few).is_empty());
        // A pool agent promoted to voter is never stopped.
        let mut voter = obs.clone();
        for n in &mut voter.nodes {
            n.voter = true;
        }
        assert!(decide(&f.autoscale, &f.pools, &voter).is_empty());
        // Queued work keeps everyone.
        let busy = Observed { queued: 3, ..obs };
        assert!(decide(&f.autoscale, &f.pools, &busy).is_empty());
    }
}
