//! Prometheus text exposition (`--metrics HOST:PORT`): the figures of the console for
//! operators who already run Prometheus and Grafana. See docs/operations.md for each metric.

use crate::agent::Agent;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = agent.shutdown.cancelled() => return,
        };
        let Ok((mut sock, _)) = conn else { continue };
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = sock.read(&mut buf).await;
            let body = render(&agent);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

/// Renders all metrics in the Prometheus text format.
pub fn render(agent: &Agent) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let status = crate::view::raft_status(agent);
    let mut fit = crate::paging::Fit::new(usize::MAX);
    let (queue, _, _) = crate::view::queue(agent, 0, None, &mut fit);
    let (functions, _) = crate::view::functions(agent, None, METRIC_FUNCTIONS, &mut fit);
    let nodes = match agent.leadership() {
        Ok(l) => crate::view::nodes(agent, &l),
        Err(_) => Vec::new(),
    };
    let by_state: Vec<(String, f64)> = {
        let state = agent.sm.shared();
        let state = state.read().expect("state");
        state
            .state_counts()
            .into_iter()
            .map(|(s, n)| (format!("{{state=\"{s}\"}}"), n as f64))
            .collect()
    };
    metric(
        "mozen_requests",
        "Requests in the replicated state by state.",
        "gauge",
        by_state,
    );
    metric(
        "mozen_queue_depth",
        "Queued requests.",
        "gauge",
        vec![(String::new(), queue.queued as f64)],
    );
    let f = |sel: fn(&mozen_proto::FunctionStats) -> u64| -> Vec<(String, f64)> {
        functions
            .iter()
            .map(|s| (format!("{{function=\"{}\"}}", s.name), sel(s) as f64))
            .collect()
    };
    metric(
        "mozen_function_submitted_total",
        "Requests enqueued per function.",
        "counter",
        f(|s| s.submitted),
    );
    metric(
        "mozen_function_executions_total",
        "Successful executions per function.",
        "counter",
        f(|s| s.executions),
    );
    metric(
        "mozen_function_memo_hits_total",
        "Calls answered from the memo table per function.",
        "counter",
        f(|s| s.memo_hits),
    );
    metric(
        "mozen_function_failures_total",
        "Failed attempts per function.",
        "counter",
        f(|s| s.failures),
    );
    let n = |sel: fn(&mozen_proto::Node) -> f64| -> Vec<(String, f64)> {
        nodes
            .iter()
            .map(|x| (format!("{{node=\"{}\",name=\"{}\"}}", x.id, x.name), sel(x)))
            .collect()
    };
    metric(
        "mozen_node_slots",
        "Worker slots per node.",
        "gauge",
        n(|x| f64::from(x.slots)),
    );
    metric(
        "mozen_node_slots_used",
        "Slots in use per node.",
        "gauge",
        n(|x| f64::from(x.busy_slots)),
    );
    metric(
        "mozen_node_heartbeat_age_seconds",
        "Seconds since the leader heard from the node.",
        "gauge",
        n(|x| x.heartbeat_age_ms as f64 / 1000.0),
    );
    metric(
        "mozen_node_up",
        "1 when the node is not Down.",
        "gauge",
        n(|x| if x.state == "down" { 0.0 } else { 1.0 }),
    );
    metric(
        "mozen_raft_term",
        "Current Raft term.",
        "gauge",
        vec![(String::new(), status.term as f64)],
    );
    metric(
        "mozen_raft_commit_index",
        "Raft commit index.",
        "gauge",
        vec![(String::new(), status.commit_index as f64)],
    );
    metric(
        "mozen_raft_applied_index",
        "Raft applied index.",
        "gauge",
        vec![(String::new(), status.applied_index as f64)],
    );
    metric(
        "mozen_raft_is_leader",
        "1 on the leader.",
        "gauge",
        vec![(String::new(), if agent.is_leader() { 1.0 } else { 0.0 })],
    );
    integrity(agent, &mut metric);
    metric(
        "mozen_refused_completions_total",
        "Completions, early child values and parks refused by this agent while it led: from a caller not allowed to speak for the node (reason node) or for an attempt that node does not hold (reason attempt).",
        "counter",
        agent
            .refusals
            .counts()
            .into_iter()
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.as_str()), n as f64))
            .collect(),
    );
    suspicions(agent, &mut metric);
    metric(
        "mozen_function_thread_holds_total",
        "Runs of functions that held a work thread without awaiting past the watchdog's threshold.",
        "counter",
        vec![(
            String::new(),
            agent.functions.watchdog().map_or(0, |d| d.holds()) as f64,
        )],
    );
    o
}

/// The corruption checks' figures (see [`crate::integrity`]).
/// Liveness misjudgements counted by this agent's current leadership (zero on an agent that
/// does not lead; a new leadership counts from zero, which Prometheus reads as a reset).
fn suspicions(agent: &Agent, metric: &mut impl FnMut(&str, &str, &str, Vec<(String, f64)>)) {
    let (back, rerun) = agent.hub.leadership().map_or((0, 0), |l| {
        let l = l.liveness.lock().expect("liveness");
        (l.false_suspicions, l.reexecuted_after_false_suspicion)
    });
    metric(
        "mozen_false_suspicions_total",
        "Nodes marked down that were heard from again, counted by this agent while it leads.",
        "counter",
        vec![(String::new(), back as f64)],
    );
    metric(
        "mozen_reexecutions_after_false_suspicion_total",
        "Requests re-queued from nodes later heard from again (each may have run twice).",
        "counter",
        vec![(String::new(), rerun as f64)],
    );
}

fn integrity(agent: &Agent, metric: &mut impl FnMut(&str, &str, &str, Vec<(String, f64)>)) {
    let i = &agent.integrity;
    metric(
        "mozen_quarantined",
        "1 when this agent quarantined itself: its state differs from the majority's.",
        "gauge",
        vec![(String::new(), if i.is_quarantined() { 1.0 } else { 0.0 })],
    );
    metric(
        "mozen_state_mismatch",
        "1 per voter whose state checkpoint differs from other voters' (kind corrupt: outvoted by a majority; conflict: no majority).",
        "gauge",
        i.mismatches()
            .iter()
            .map(|m| {
                let kind = if m.outvoted { "corrupt" } else { "conflict" };
                (format!("{{node=\"{}\",kind=\"{kind}\"}}", m.node), 1.0)
            })
            .collect(),
    );
    metric(
        "mozen_corruption_checks_total",
        "Comparisons of state checkpoints with the other voters.",
        "counter",
        vec![(String::new(), i.checks() as f64)],
    );
    let newest = agent.sm.checkpoints().list().last().map_or(0, |c| c.index);
    metric(
        "mozen_state_checkpoint_index",
        "Log index of this agent's newest state checkpoint.",
        "gauge",
        vec![(String::new(), newest as f64)],
    );
}

/// Most functions given their own series (by name): names are chosen by callers, so their
/// number is bounded here rather than by what callers send.
const METRIC_FUNCTIONS: usize = 1000;
