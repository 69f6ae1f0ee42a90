//! The commands of `mozen`: the flags as typed ([`Cli`]), and [`run`], which carries one out
//! against the cluster and prints the answer. A failure is a [`Fail`]: its exit code (1 at
//! run time, 2 for usage) and the message to print.

use clap::{Parser, Subcommand};
use mozen_client::batch::{self, JobError, JobSpec};
use mozen_client::{CallOptions, Client, ClientError, split_addrs};
use mozen_model::{Code, NodeOp, TaskError};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::time::Duration;

/// The flags of `mozen`, as typed.
#[derive(Parser)]
#[command(
    name = "mozen",
    version,
    about = "Submit and inspect work on a Mozen cluster"
)]
pub struct Cli {
    /// Agents to talk to, HOST:PORT[,HOST:PORT...]; the leader is found from any of them.
    #[arg(
        long,
        global = true,
        env = "MOZEN_ADDR",
        default_value = "127.0.0.1:7070"
    )]
    addr: String,
    #[command(flatten)]
    security: mozen_client::ClientArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Leader, term, commit and applied index, members and their roles.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The node table.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Node operations.
    Node {
        #[command(subcommand)]
        op: NodeCmd,
    },
    /// Calls a function and prints its result.
    Call {
        function: String,
        /// One JSON value (a bare word is taken as a string).
        args: Option<String>,
        /// Run again even when a memoized result exists.
        #[arg(long)]
        no_cache: bool,
        /// Give up waiting after this long, e.g. 30s (the request keeps running).
        #[arg(long)]
        timeout: Option<String>,
        /// Extra runs when the function fails.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        json: bool,
    },
    /// Submits a request and prints its key without waiting.
    Submit {
        function: String,
        args: Option<String>,
        #[arg(long)]
        no_cache: bool,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        json: bool,
    },
    /// Shows a request by key.
    Get {
        key: String,
        /// Wait until it finishes.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Prints the request tree under a key.
    Tree {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a request and the descendants nothing else needs; or, with --function or
    /// --client (or several keys), every queued or running request that matches (bulk cancel:
    /// only your own requests unless you are an operator).
    Cancel {
        /// Request keys (hex); with more than one, a bulk cancel of them all.
        keys: Vec<String>,
        /// Bulk: every live request of this function.
        #[arg(long)]
        function: Option<String>,
        /// Bulk: every live request of this client identity.
        #[arg(long)]
        client: Option<String>,
    },
    /// Drops memoized results.
    Forget {
        key: Option<String>,
        #[arg(long)]
        function: Option<String>,
        /// Everything that finished longer ago than this, e.g. 1h.
        #[arg(long)]
        older_than: Option<String>,
    },
    /// Functions with their executions, memo hits and failures.
    Functions {
        #[arg(long)]
        json: bool,
    },
    /// Queued requests by priority and function.
    Queue {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Runs a batch job file: validate, slice, map, reduce; prints the reduced result.
    Run {
        job: std::path::PathBuf,
        /// Write the result (or with --json the report) to this file instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Print the whole report (counts, skipped slices, throughput) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measures a batch job and estimates its time locally and on the cluster.
    Plan {
        job: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Starts the agents a hosts file lists, waits until the cluster is healthy, prints it.
    Up {
        hosts: std::path::PathBuf,
        /// How long to wait for a healthy cluster, e.g. 60s.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Drains and stops the agents of a hosts file: workers first, voters last.
    Down {
        hosts: std::path::PathBuf,
        /// How long to wait for each drain and each stop, e.g. 2m.
        #[arg(long, default_value = "2m")]
        timeout: String,
    },
    /// Runs a local cluster under injected faults and checks what it acknowledged.
    Chaos(crate::chaos::cli::ChaosArgs),
    /// Starts fresh local clusters, runs the benchmark workloads, prints median/min/max.
    Bench(crate::bench::BenchArgs),
    /// Recent cluster events.
    Events {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    Drain {
        id: u64,
    },
    Undrain {
        id: u64,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Demote {
        id: u64,
    },
    /// Expect a new agent: ID@HOST:PORT.
    Add {
        spec: String,
    },
}

/// Failure of a command: the exit code and what to print.
pub enum Fail {
    /// Exit code 2.
    Usage(String),
    /// Exit code 1.
    Runtime(String),
}

impl From<JobError> for Fail {
    fn from(e: JobError) -> Self {
        if e.is_usage() {
            Fail::Usage(e.to_string())
        } else {
            Fail::Runtime(e.to_string())
        }
    }
}

impl From<crate::elastic::ElasticError> for Fail {
    fn from(e: crate::elastic::ElasticError) -> Self {
        if e.is_usage() {
            Fail::Usage(e.to_string())
        } else {
            Fail::Runtime(e.to_string())
        }
    }
}

impl From<crate::chaos::ChaosError> for Fail {
    fn from(e: crate::chaos::ChaosError) -> Self {
        match e {
            crate::chaos::ChaosError::Usage(m) => Fail::Usage(m),
            e => Fail::Runtime(e.to_string()),
        }
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        Fail::Runtime(e.to_string())
    }
}

/// Fails `mozen status` when the answering agent is quarantined or its corruption checks
/// found voters whose states differ (see docs/operations.md, "Corruption checks").
fn state_health(s: &pb::RaftStatus) -> Result<(), Fail> {
    let mut problems = Vec::new();
    if !s.quarantined.is_empty() {
        problems.push(format!(
            "{}: node {} (the agent answering) is quarantined: {}; repair its data dir with `mozen-agent repair`",
            Code::Corrupt,
            s.node_id, s.quarantined
        ));
    }
    for m in s
        .mismatches
        .iter()
        .filter(|m| m.node_id != s.node_id || s.quarantined.is_empty())
    {
        let others: Vec<String> = m.others.iter().map(|o| o.to_string()).collect();
        problems.push(if m.outvoted {
            format!(
                "{}: voter {}'s state differs at log index {} from the one a majority holds (voters {}); it is quarantined: repair its data dir with `mozen-agent repair`",
                Code::Corrupt,
                m.node_id,
                m.index,
                others.join(", ")
            )
        } else {
            format!(
                "{}: voter {}'s state differs at log index {} from voter(s) {} and no state has a majority; check these members' data dirs",
                Code::StateConflict,
                m.node_id,
                m.index,
                others.join(", ")
            )
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Fail::Runtime(problems.join("\nmozen: ")))
    }
}

fn parse_args(function: &str, args: Option<&str>) -> Result<Value, Fail> {
    match args {
        None => Ok(Value::Null),
        Some(s) => match serde_json::from_str(s) {
            Ok(v) => Ok(v),
            // A bare word is a string, as a shell user would expect: `mozen call fail boom`.
            Err(_) if !s.trim_start().starts_with(['[', '{', '"']) => {
                Ok(Value::String(s.to_string()))
            }
            Err(e) => Err(Fail::Usage(format!(
                "arguments of {function} '{s}' are not one JSON value: {e}"
            ))),
        },
    }
}

fn duration(flag: &str, s: &str) -> Result<Duration, Fail> {
    humantime::parse_duration(s)
        .map_err(|e| Fail::Usage(format!("--{flag} '{s}': {e} (examples: 500ms, 30s, 2m)")))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn task_error_json(e: &pb::TaskError) -> Value {
    json!({
        "code": e.code, "message": e.message, "node": e.node,
        "chain": e.chain.iter().map(|l| json!({"key": l.key, "function": l.function, "args": l.args, "node": l.node})).collect::<Vec<_>>(),
    })
}

fn request_json(r: &pb::RequestInfo) -> Value {
    json!({
        "key": r.key, "function": r.function, "args": serde_json::from_str::<Value>(&r.args_json).unwrap_or(Value::Null),
        "state": r.state, "node": r.node, "attempts": r.attempts, "priority": r.priority,
        "created_ms": r.created_ms, "updated_ms": r.updated_ms, "duration_ms": r.duration_ms,
        "error": r.error, "parents": r.parents, "children": r.children,
    })
}

fn reply_json(r: &pb::CallReply) -> Value {
    json!({
        "key": r.key, "cached": r.cached, "node": r.node, "duration_ms": r.duration_ms, "state": r.state,
        "result": r.result_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
        "error": r.error.as_ref().map(task_error_json),
    })
}

fn age(ms: i64) -> String {
    if ms < 0 {
        "-".into()
    } else if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}s", ms / 1000)
    }
}

fn gib(b: u64) -> String {
    format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64)
}

/// Carries out the command of `cli`, printing its answer on stdout.
pub async fn run(cli: Cli) -> Result<(), Fail> {
    let addrs = split_addrs(&cli.addr);
    if addrs.is_empty() {
        return Err(Fail::Usage(format!(
            "--addr '{}': expected HOST:PORT[,HOST:PORT...]",
            cli.addr
        )));
    }
    let transport = cli.security.transport().map_err(Fail::Usage)?;
    let client = Client::with_transport(
        addrs,
        pb::DEFAULT_MAX_MESSAGE_BYTES,
        Duration::from_secs(10),
        transport.clone(),
    )?;
    match cli.cmd {
        Cmd::Status { json } => {
            let s = client
                .rpc(|mut c| async move { c.status(pb::StatusRequest {}).await })
                .await?;
            let role = |id: u64| {
                if Some(id) == s.leader_id {
                    "leader"
                } else {
                    "voter"
                }
            };
            if json {
                print_json(&json!({
                    "node_id": s.node_id, "leader_id": s.leader_id, "leader_addr": s.leader_addr, "term": s.term,
                    "last_log_index": s.last_log_index, "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index, "purged_index": s.purged_index, "log_entries": s.log_entries, "disk_bytes": s.disk_bytes,
                    "members": s.voters.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": role(m.id)}))
                        .chain(s.learners.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": "learner"}))).collect::<Vec<_>>(),
                    "server_state": s.server_state, "quarantined": s.quarantined,
                    "mismatches": s.mismatches.iter().map(|m| json!({"node": m.node_id, "index": m.index, "others": m.others, "outvoted": m.outvoted})).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "leader   {} ({})",
                    s.leader_id.map_or("none".into(), |l| l.to_string()),
                    s.leader_addr
                );
                println!("term     {}", s.term);
                println!(
                    "commit   {}   applied {}   last log {}   snapshot {}",
                    s.commit_index, s.applied_index, s.last_log_index, s.snapshot_index
                );
                println!("members");
                for m in &s.voters {
                    println!("  {:>4}  {:<22} {}", m.id, m.addr, role(m.id));
                }
                for m in &s.learners {
                    println!("  {:>4}  {:<22} learner", m.id, m.addr);
                }
                for m in &s.mismatches {
                    let what = if m.outvoted { "corrupt" } else { "conflict" };
                    println!(
                        "state    voter {} {what} at log index {} (others: {:?})",
                        m.node_id, m.index, m.others
                    );
                }
            }
            state_health(&s)?;
        }
        Cmd::Nodes { json } => {
            let r = client
                .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
                .await?;
            if json {
                print_json(&Value::Array(
                    r.nodes
                        .iter()
                        .map(|n| {
                            json!({"id": n.id, "name": n.name, "addr": n.addr, "role": if n.is_leader { "leader".to_string() } else { n.role.clone() },
                            "state": n.state, "cpus": n.cpus, "memory_bytes": n.memory_bytes, "score": n.score, "slots": n.slots,
                            "slots_used": n.busy_slots, "running": n.running, "heartbeat_age_ms": n.heartbeat_age_ms, "tasks_per_sec": n.tasks_per_sec})
                        })
                        .collect(),
                ));
            } else {
                println!(
                    "{:>4}  {:<12} {:<22} {:<8} {:<9} {:>4} {:>9} {:>8} {:>7} {:>7} {:>6}",
                    "ID",
                    "NAME",
                    "ADDRESS",
                    "ROLE",
                    "STATE",
                    "CPUS",
                    "MEMORY",
                    "SCORE",
                    "SLOTS",
                    "RUNNING",
                    "HB"
                );
                for n in &r.nodes {
                    let role = if n.is_leader {
                        "leader"
                    } else {
                        n.role.as_str()
                    };
                    println!(
                        "{:>4}  {:<12} {:<22} {:<8} {:<9} {:>4} {:>9} {:>8.1} {:>7} {:>7} {:>6}",
                        n.id,
                        n.name,
                        n.addr,
                        role,
                        n.state,
                        n.cpus,
                        gib(n.memory_bytes),
                        n.score,
                        format!("{}/{}", n.busy_slots, n.slots),
                        n.running,
                        age(n.heartbeat_age_ms)
                    );
                }
            }
        }
        Cmd::Node { op } => {
            let msg = match op {
                NodeCmd::Add { spec } => {
                    let peers = mozen_model::flags::parse_peers(&spec)
                        .map_err(|e| Fail::Usage(e.to_string().replace("--peers", "node add")))?;
                    let [p] = peers.as_slice() else {
                        return Err(Fail::Usage(format!(
                            "node add '{spec}': expected one ID@HOST:PORT"
                        )));
                    };
                    let req = pb::AddNodeRequest {
                        node_id: p.id,
                        addr: p.addr.clone(),
                    };
                    client
                        .rpc(|mut c| {
                            let r = req.clone();
                            async move { c.add_node(r).await }
                        })
                        .await?
                        .message
                }
                other => {
                    let (id, op) = match other {
                        NodeCmd::Drain { id } => (id, NodeOp::Drain),
                        NodeCmd::Undrain { id } => (id, NodeOp::Undrain),
                        NodeCmd::Remove { id } => (id, NodeOp::Remove),
                        NodeCmd::Promote { id } => (id, NodeOp::Promote),
                        NodeCmd::Demote { id } => (id, NodeOp::Demote),
                        NodeCmd::Add { .. } => unreachable!("handled above"),
                    };
                    client.node_op(id, op).await?
                }
            };
            println!("{msg}");
        }
        Cmd::Call {
            function,
            args,
            no_cache,
            timeout,
            retries,
            priority,
            json,
        } => {
            let args = parse_args(&function, args.as_deref())?;
            let timeout = timeout.map(|t| duration("timeout", &t)).transpose()?;
            let opts = CallOptions {
                no_cache,
                timeout,
                retries,
                priority,
                ..Default::default()
            };
            match client.call_json(&function, args, &opts).await {
                Ok(r) => {
                    if json {
                        print_json(&reply_json(&r));
                    } else {
                        println!("{}", r.result_json.as_deref().unwrap_or("null"));
                    }
                }
                Err(ClientError::Task(e)) => return Err(Fail::Runtime(format_chain(&e))),
                Err(e) => return Err(e.into()),
            }
        }
        Cmd::Submit {
            function,
            args,
            no_cache,
            priority,
            json,
        } => {
            let args = parse_args(&function, args.as_deref())?;
            let opts = CallOptions {
                no_cache,
                priority,
                ..Default::default()
            };
            let req = mozen_client::call_request(&function, &args, &opts);
            let r = client
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.submit(r).await }
                })
                .await?;
            if json {
                print_json(&json!({"key": r.key, "disposition": r.disposition}));
            } else {
                println!("{}", r.key);
            }
        }
        Cmd::Get { key, wait, json } => {
            let mut r;
            loop {
                let req = pb::GetRequest {
                    key: key.clone(),
                    wait,
                    timeout_ms: 0,
                };
                r = client
                    .rpc(|mut c| {
                        let r = req.clone();
                        async move { c.get(r).await }
                    })
                    .await?;
                if !wait || matches!(r.state.as_str(), "done" | "failed" | "cancelled") {
                    break;
                }
            }
            if json {
                print_json(&reply_json(&r));
            } else {
                match (&r.result_json, &r.error) {
                    (Some(v), _) => println!("{v}"),
                    (_, Some(e)) => return Err(Fail::Runtime(format_chain(&TaskError::from(e)))),
                    _ => println!("{}", r.state),
                }
            }
        }
        Cmd::Tree { key, json } => {
            let req = pb::TreeRequest {
                key,
                ..Default::default()
            };
            let r = client
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.tree(r).await }
                })
                .await?;
            if json {
                print_json(&Value::Array(
                    r.entries
                        .iter()
                        .map(|e| json!({"depth": e.depth, "shared": e.shared, "repeated": e.repeated, "request": e.request.as_ref().map(request_json)}))
                        .collect(),
                ));
            } else {
                for e in &r.entries {
                    let Some(q) = &e.request else { continue };
                    let mut line = format!(
                        "{}{}({}) {}",
                        "  ".repeat(e.depth as usize),
                        q.function,
                        q.args_json,
                        q.state
                    );
                    if let Some(n) = q.node {
                        line.push_str(&format!(" node {n}"));
                    }
                    if q.duration_ms > 0 {
                        line.push_str(&format!(" {}ms", q.duration_ms));
                    }
                    if !q.error.is_empty() {
                        line.push_str(&format!(" error: {}", q.error));
                    }
                    if e.shared {
                        line.push_str(" [shared]");
                    }
                    if e.repeated {
                        line.push_str(" [see above]");
                    }
                    line.push_str(&format!(" {}", &q.key[..12.min(q.key.len())]));
                    println!("{line}");
                }
            }
        }
        Cmd::Cancel {
            mut keys,
            function,
            client: owner,
        } => {
            let bulk = function.is_some() || owner.is_some() || keys.len() > 1;
            if !bulk && keys.is_empty() {
                return Err(Fail::Usage(
                    "cancel needs a key, several keys, --function or --client".into(),
                ));
            }
            let req = if bulk {
                pb::CancelRequest {
                    keys,
                    function: function.unwrap_or_default(),
                    client: owner.unwrap_or_default(),
                    ..Default::default()
                }
            } else {
                pb::CancelRequest {
                    key: keys.remove(0),
                    ..Default::default()
                }
            };
            let started = std::time::Instant::now();
            let r = client
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.cancel(r).await }
                })
                .await?;
            let count = r.count.max(r.cancelled.len() as u64);
            println!(
                "cancelled {count} request(s) in {:.2}s",
                started.elapsed().as_secs_f64()
            );
            for k in &r.cancelled {
                println!("  {k}");
            }
            if count > r.cancelled.len() as u64 {
                println!("  ... and {} more", count - r.cancelled.len() as u64);
            }
        }
        Cmd::Forget {
            key,
            function,
            older_than,
        } => {
            let older_than_ms = older_than
                .map(|d| duration("older-than", &d))
                .transpose()?
                .map_or(0, |d| d.as_millis() as u64);
            if key.is_none() && function.is_none() && older_than_ms == 0 {
                return Err(Fail::Usage(
                    "forget needs a KEY, --function NAME or --older-than DURATION".into(),
                ));
            }
            let req = pb::ForgetRequest {
                key: key.unwrap_or_default(),
                function: function.unwrap_or_default(),
                older_than_ms,
            };
            let r = client
                .rpc(|mut c| {
                    let r = req.clone();
                    async move { c.forget(r).await }
                })
                .await?;
            println!("forgot {} result(s)", r.forgotten);
        }
        Cmd::Functions { json } => {
            let functions = client.functions().await?;
            if json {
                print_json(&Value::Array(
                    functions
                        .iter()
                        .map(|f| json!({"name": f.name, "submitted": f.submitted, "executions": f.executions, "memo_hits": f.memo_hits, "joined": f.joined, "failures": f.failures, "registered": f.registered, "shape": f.shape, "origin": f.origin}))
                        .collect(),
                ));
            } else {
                println!(
                    "{:<16} {:>10} {:>10} {:>10} {:>8}  {:<8} ARGUMENTS",
                    "FUNCTION", "EXECUTIONS", "MEMO HITS", "FAILURES", "JOINED", "ORIGIN"
                );
                for f in &functions {
                    println!(
                        "{:<16} {:>10} {:>10} {:>10} {:>8}  {:<8} {}",
                        f.name,
                        f.executions,
                        f.memo_hits,
                        f.failures,
                        f.joined,
                        if f.origin.is_empty() { "-" } else { &f.origin },
                        f.shape
                    );
                }
            }
        }
        Cmd::Queue { limit, json } => {
            let r = client
                .rpc(|mut c| async move {
                    c.queue(pb::QueueRequest {
                        limit,
                        ..Default::default()
                    })
                    .await
                })
                .await?;
            let s = r.summary.unwrap_or_default();
            if json {
                print_json(&json!({
                    "queued": s.queued, "running": s.running, "done": s.done, "failed": s.failed, "throughput": s.throughput,
                    "groups": s.groups.iter().map(|g| json!({"function": g.function, "priority": g.priority, "count": g.count, "oldest_age_ms": g.oldest_age_ms})).collect::<Vec<_>>(),
                    "head": r.head.iter().map(request_json).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "queued {}  running {}  done {}  failed {}  {:.1} tasks/s",
                    s.queued, s.running, s.done, s.failed, s.throughput
                );
                for g in &s.groups {
                    println!(
                        "  prio {:>3}  {:<16} {:>8}  oldest {}",
                        g.priority,
                        g.function,
                        g.count,
                        age(g.oldest_age_ms as i64)
                    );
                }
            }
        }
        Cmd::Run { job, output, json } => {
            let spec = JobSpec::load(&job).map_err(JobError::from)?;
            let prepared = batch::prepare(spec, Some(&client)).await?;
            let display = crate::progress::Display::new();
            let report = batch::run(&prepared, &client, &|p| display.update(p)).await;
            display.finish();
            let report = report?;
            let text = if json {
                serde_json::to_string_pretty(&report)
            } else {
                serde_json::to_string_pretty(&report.result)
            }
            .unwrap_or_default();
            eprintln!(
                "{}: {} slices ({} ran, {} memo hits, {} skipped), {:.1} MB in {:.1}s, {:.1} MB/s",
                report.name,
                report.slices,
                report.executed,
                report.memo_hits,
                report.skipped.len(),
                report.bytes as f64 / 1e6,
                report.elapsed_ms as f64 / 1e3,
                report.mb_per_s
            );
            for s in &report.skipped {
                eprintln!("skipped {}: {}", s.slice, s.error);
            }
            match output {
                Some(path) => std::fs::write(&path, text + "\n").map_err(|e| {
                    Fail::Runtime(format!("--output {}: cannot write: {e}", path.display()))
                })?,
                None => println!("{text}"),
            }
        }
        Cmd::Plan { job, json } => {
            let spec = JobSpec::load(&job).map_err(JobError::from)?;
            let prepared = batch::prepare(spec, Some(&client)).await?;
            let plan = batch::plan::plan(&prepared, &client).await?;
            if json {
                print_json(&serde_json::to_value(&plan).unwrap_or_default());
            } else {
                println!("{plan}");
            }
        }
        Cmd::Up { hosts, timeout } => crate::elastic::up(&hosts, &timeout, transport).await?,
        Cmd::Down { hosts, timeout } => crate::elastic::down(&hosts, &timeout, transport).await?,
        Cmd::Chaos(args) => args.run().await?,
        Cmd::Bench(args) => crate::bench::cli(args).await.map_err(|e| {
            if e.is_usage() {
                Fail::Usage(e.to_string())
            } else {
                Fail::Runtime(e.to_string())
            }
        })?,
        Cmd::Events { limit, json } => {
            let events = client.events(limit as usize).await?;
            if json {
                print_json(&Value::Array(events.iter().map(|e| json!({"at_ms": e.at_ms, "kind": e.kind, "node": e.node, "message": e.message})).collect()));
            } else {
                for e in &events {
                    println!("{} {:<10} {}", e.at_ms, e.kind, e.message);
                }
            }
        }
    }
    Ok(())
}

fn format_chain(e: &TaskError) -> String {
    e.to_string()
}
