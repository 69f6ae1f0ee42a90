//! The `scale` workload of `mozen bench`: the real scheduler (`mozen_scheduler::plan_on`) and
//! the real state machine (`ClusterState::apply`) driven in one process with 3, 50 and 500
//! registered nodes, without Raft, sled or the network (their costs are in W1 and the store's
//! benchmarks).
//!
//! It measures the daemon's own code, so it runs in an agent binary: `mozen-agent bench-scale
//! ASSIGNMENTS` ([`COMMAND`], hidden; any binary of [`crate::builder`]) prints the figures as
//! one JSON object, which `mozen bench` reads (the CLI does not compile the daemon).
//!
//! Every node is full and the queue is long; each round is what the leader does when a batch of
//! completions arrives: one `Complete` of [`ROUND`] running requests, one `Submit` of as many
//! new ones (the queue keeps its length), one pass of the leader's own scheduling code
//! ([`crate::leader::plan_pass`]: the state's ranked node loads, the queue in order with each
//! request's parent node as locality hint, `plan_on`), and one `Assign` of its placements.
//! Reported per node count: assignments per second of the whole loop, and the CPU time of the
//! scheduling pass per assignment.

use mozen_model::{NodeInfo, NodeRole, NodeState, Outcome as TaskOutcome, RequestKey, RetryPolicy};
use mozen_store::{Assignment, ClusterState, Command, Completion, NewRequest};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Node counts measured.
pub const NODES: [usize; 3] = [3, 50, 500];
/// Completions (and new submissions) per scheduling round.
pub const ROUND: usize = 16;
/// Queued requests kept waiting behind the running ones.
pub const QUEUED: usize = 2_000;
/// Slots of every simulated node (2 cpus x 3).
const SLOTS: u32 = 6;

/// One node count's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub nodes: usize,
    pub assignments: usize,
    pub assignments_per_s: f64,
    pub sched_cpu_us_per_assignment: f64,
    pub rounds: usize,
}

/// CPU time of the calling thread (Linux: `/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

struct Sim {
    state: ClusterState,
    running: VecDeque<Assignment>,
    next: u64,
    at: u64,
}

impl Sim {
    fn new(nodes: usize) -> Sim {
        let mut state = ClusterState::new();
        for id in 1..=nodes as u64 {
            state.apply(&Command::RegisterNode {
                node: NodeInfo {
                    id,
                    name: format!("node-{id}"),
                    addr: format!("10.0.{}.{}:7070", id / 250, id % 250),
                    cpus: 2,
                    memory_bytes: 4 << 30,
                    slots: SLOTS,
                    state: NodeState::Active,
                    role: if id <= 3 {
                        NodeRole::Voter
                    } else {
                        NodeRole::Worker
                    },
                    labels: Default::default(),
                },
                at: 0,
            });
        }
        Sim {
            state,
            running: VecDeque::new(),
            next: 0,
            at: 1,
        }
    }

    fn tick(&mut self) -> u64 {
        self.at += 1;
        self.at
    }

    fn submit(&mut self, n: usize) {
        let requests = (0..n)
            .map(|_| {
                self.next += 1;
                let args = format!("[\"scale\",{}]", self.next).into_bytes();
                NewRequest {
                    key: RequestKey::of("noop", &args),
                    function: "noop".into(),
                    args,
                    parent: None,
                    priority: 0,
                    retry: RetryPolicy::default(),
                    no_cache: false,
                }
            })
            .collect();
        let at = self.tick();
        self.state.apply(&Command::Submit { requests, at });
    }

    /// The leader's scheduling pass, every node eligible (all have an open stream here).
    fn schedule(&self) -> Vec<Assignment> {
        crate::leadership::plan_pass(
            &self.state,
            |_| true,
            &Default::default(),
            &Default::default(),
            self.at,
        )
    }

    fn assign(&mut self, assignments: Vec<Assignment>) {
        let at = self.tick();
        self.running.extend(assignments.iter().copied());
        self.state.apply(&Command::Assign { assignments, at });
    }

    fn complete(&mut self, n: usize) {
        let completions = self
            .running
            .drain(..n.min(self.running.len()))
            .map(|a| Completion {
                key: a.key,
                node: a.node,
                attempt: a.attempt,
                outcome: TaskOutcome::Value(b"1".to_vec()),
                duration_ms: 1,
            })
            .collect();
        let at = self.tick();
        self.state.apply(&Command::Complete { completions, at });
        // The storage would write these results to sled; here they are dropped.
        self.state.take_effects();
    }
}

/// Measures one node count until `assignments` placements were made after the fill.
pub fn measure(nodes: usize, assignments: usize) -> Result<Point, String> {
    let mut sim = Sim::new(nodes);
    let slots = nodes * SLOTS as usize;
    sim.submit(slots + QUEUED);
    let fill = sim.schedule();
    if fill.len() != slots {
        return Err(format!(
            "{nodes} nodes: the first pass placed {} of {slots} slots",
            fill.len()
        ));
    }
    sim.assign(fill);
    let round = ROUND.min(slots);
    let (mut placed, mut rounds) = (0usize, 0usize);
    let mut sched = Duration::ZERO;
    let cpu0 = thread_cpu();
    let start = Instant::now();
    while placed < assignments {
        sim.complete(round);
        sim.submit(round);
        let t = Instant::now();
        let a = sim.schedule();
        sched += t.elapsed();
        if a.len() != round {
            return Err(format!(
                "{nodes} nodes, round {rounds}: {round} slots freed but {} placed",
                a.len()
            ));
        }
        placed += a.len();
        rounds += 1;
        sim.assign(a);
    }
    let wall = start.elapsed();
    // The pass is timed by the clock; scale it by the share of the loop this thread was on a
    // CPU, so time spent preempted on a busy machine is not counted as scheduler work. The
    // kernel updates that CPU time at ticks, so short loops are left uncorrected.
    let on_cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) if wall >= Duration::from_millis(500) && b > a => {
            ((b - a).as_secs_f64() / wall.as_secs_f64()).min(1.0)
        }
        _ => 1.0,
    };
    sim.state.check_invariants()?;
    Ok(Point {
        nodes,
        assignments: placed,
        assignments_per_s: placed as f64 / wall.as_secs_f64().max(1e-9),
        sched_cpu_us_per_assignment: sched.as_secs_f64() * on_cpu / placed as f64 * 1e6,
        rounds,
    })
}

/// The first argument of the agent binary that runs this measurement instead of an agent.
pub const COMMAND: &str = "bench-scale";

/// Measures every node count until `assignments` placements each: the figures as
/// `{"metrics": [[name, value], ...], "detail": {...}}`, metrics in display order.
pub fn figures(assignments: usize) -> Result<Value, String> {
    let points = NODES
        .iter()
        .map(|&n| measure(n, assignments))
        .collect::<Result<Vec<_>, _>>()?;
    let mut metrics = Vec::new();
    for p in &points {
        metrics.push(json!([
            format!("assign_per_s_{}_nodes", p.nodes),
            p.assignments_per_s
        ]));
        metrics.push(json!([
            format!("sched_cpu_us_per_assign_{}_nodes", p.nodes),
            p.sched_cpu_us_per_assignment
        ]));
    }
    let ratio = points
        .last()
        .map_or(f64::NAN, |p| p.sched_cpu_us_per_assignment)
        / points
            .first()
            .map_or(f64::NAN, |p| p.sched_cpu_us_per_assignment);
    metrics.push(json!(["sched_cpu_ratio_500_vs_3", ratio]));
    let detail = json!({
        "harness": "in-process: the leader's plan_pass (mozen_scheduler::plan_on) + ClusterState::apply, no Raft/sled/network",
        "round": ROUND, "queued": QUEUED, "slots_per_node": SLOTS,
        "points": points.iter().map(|p| json!({"nodes": p.nodes, "assignments": p.assignments, "rounds": p.rounds,
            "assignments_per_s": p.assignments_per_s, "sched_cpu_us_per_assignment": p.sched_cpu_us_per_assignment})).collect::<Vec<_>>(),
    });
    Ok(json!({"metrics": metrics, "detail": detail}))
}

/// `mozen-agent bench-scale ASSIGNMENTS`: prints [`figures`] on stdout (exit 0), or the reason
/// it could not on stderr (exit 1; 2 for a bad argument).
pub fn main() -> ExitCode {
    let arg = std::env::args().nth(2).unwrap_or_default();
    let Ok(assignments) = arg.parse::<usize>() else {
        eprintln!("mozen-agent {COMMAND}: '{arg}': expected a number of assignments");
        return ExitCode::from(2);
    };
    match figures(assignments) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mozen-agent {COMMAND}: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_places_exactly_what_it_freed() {
        for nodes in [3, 50] {
            let p = measure(nodes, 200).unwrap();
            assert!(p.assignments >= 200);
            assert_eq!(p.assignments, p.rounds * ROUND.min(nodes * SLOTS as usize));
        }
    }
}
