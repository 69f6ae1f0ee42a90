//! Running a job on a cluster: validate, slice, submit the maps, reduce as a tree of requests.
//!
//! Every map and reduce is an ordinary memoized request: a map's key is the content hash of
//! (function, file, file hash, line range), and a reduce's key is that of the values it
//! combines, so running a job again after a crash or an edit redoes only what changed.

use super::builtins::SliceArgs;
use super::cost::CostModel;
use super::input::{InputFile, SliceRef, cut};
use super::spec::{ErrorPolicy, JobSpec, SliceLines, SpecError};
use crate::client::{CallOptions, Client, ClientError};
use crate::functions::{Ctx, Functions};
use futures::StreamExt;
use mozen_model::{RequestKey, TaskError, canonical_args};
use mozen_proto as pb;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// An input file cannot be used.
    #[error("MZ-BAD-INPUT: {0}")]
    Input(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A slice failed and the error policy stops the job.
    #[error("MZ-JOB-FAILED: slice {slice} failed under policy {policy}: {}", show_chain(.error))]
    Slice {
        slice: String,
        policy: &'static str,
        error: TaskError,
    },
    /// A reduce request failed (reduces are not skipped).
    #[error("MZ-JOB-FAILED: reduce {function} failed: {}", show_chain(.error))]
    Reduce { function: String, error: TaskError },
}

impl JobError {
    /// Usage errors (a bad job) exit with 2, the rest with 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, JobError::Spec(_) | JobError::Input(_))
    }
}

/// A task error with its chain; arguments are cut short (a shipped slice is long).
pub fn show_chain(e: &TaskError) -> String {
    let mut out = format!("{}: {}", e.code, e.message);
    if let Some(n) = e.node {
        out.push_str(&format!(" (on node {n})"));
    }
    for (i, link) in e.chain.iter().enumerate() {
        let verb = if i == 0 { "in" } else { "called from" };
        let mut args = link.args.clone();
        if args.chars().count() > 120 {
            args = args.chars().take(117).collect::<String>() + "...";
        }
        out.push_str(&format!("\n  {verb} {}({args})", link.function));
        if let Some(n) = link.node {
            out.push_str(&format!(" on node {n}"));
        }
        out.push_str(&format!(" [{}]", link.key.short()));
    }
    out
}

/// Where a running job is, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Progress {
    pub slices: u64,
    pub done: u64,
    pub failed: u64,
    pub memo_hits: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Reduce requests finished.
    pub reduces: u64,
}

/// A slice left out under `policy = "skip"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// `file:first-last`.
    pub slice: String,
    pub key: String,
    pub error: String,
}

/// The outcome of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub name: String,
    pub result: Value,
    pub files: usize,
    pub lines: u64,
    pub bytes: u64,
    pub lines_per_slice: u64,
    pub slices: u64,
    /// Maps that ran (not memo hits).
    pub executed: u64,
    pub memo_hits: u64,
    pub reduces: u64,
    pub skipped: Vec<Skipped>,
    pub elapsed_ms: u64,
    pub mb_per_s: f64,
}

/// A validated job: its files read and indexed, its functions known to exist.
pub struct Prepared {
    pub spec: JobSpec,
    pub files: Vec<InputFile>,
}

impl Prepared {
    pub fn lines(&self) -> u64 {
        self.files.iter().map(InputFile::lines).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }

    /// The first `lines` lines of the first non-empty file, as a map argument.
    pub fn sample(&self, lines: u64) -> Option<SliceArgs> {
        let f = self.files.iter().find(|f| f.lines() > 0)?;
        Some(f.slice([0, lines.min(f.lines())], true, &self.spec.map_args))
    }
}

/// Checks everything about a job that can be checked without running it: the spec, its files,
/// and (with a client) that the cluster has its functions.
pub async fn prepare(spec: JobSpec, client: Option<&Client>) -> Result<Prepared, JobError> {
    let paths = spec.expand_files()?;
    if let Some(client) = client {
        let known = client
            .rpc(|mut c| async move { c.functions(pb::FunctionsRequest {}).await })
            .await?;
        let names: Vec<&str> = known
            .functions
            .iter()
            .filter(|f| f.registered)
            .map(|f| f.name.as_str())
            .collect();
        for (field, name) in [
            ("process.function", &spec.map),
            ("reduce.function", &spec.reduce),
        ] {
            if !names.contains(&name.as_str()) {
                return Err(spec
                    .error_at(
                        field,
                        format!(
                            "{field}: the cluster has no function named '{name}' (it has: {})",
                            names.join(", ")
                        ),
                    )
                    .into());
            }
        }
    }
    let files = paths
        .into_iter()
        .map(|p| InputFile::read(p, spec.ship))
        .collect::<Result<Vec<_>, _>>()
        .map_err(JobError::Input)?;
    Ok(Prepared { spec, files })
}

/// Runs `function` on `args` in this process with the agent's built-ins (no cluster).
pub async fn run_local(
    functions: &Functions,
    function: &str,
    args: Value,
) -> Result<Value, TaskError> {
    struct NoCluster;
    impl crate::functions::ClusterCaller for NoCluster {
        fn call_child(
            &self,
            _parent: RequestKey,
            function: String,
            _args: Value,
        ) -> futures::future::BoxFuture<'static, Result<Value, TaskError>> {
            Box::pin(async move {
                Err(crate::functions::fail(format!(
                    "{function}: a local run cannot call the cluster"
                )))
            })
        }
    }
    let key = RequestKey::of(function, &canonical_args(&args));
    let ctx = Ctx::new(key, 0, 1, Default::default(), Arc::new(NoCluster));
    functions.run(function, ctx, args).await
}

/// Measures the job's costs: the map's per-line cost on a sample slice (locally when this
/// process has the function, else on the cluster), the cluster's per-request overhead and
/// request rate, and its free workers.
pub async fn measure(job: &Prepared, client: &Client) -> Result<CostModel, JobError> {
    let sample_lines = 20_000.min(job.lines()).max(1);
    let sample = job.sample(sample_lines);
    let local = Functions::with_builtins(false);
    let per_line = match sample {
        None => 0.0,
        Some(s) => {
            let lines = s.lines[1] - s.lines[0];
            let args = serde_json::to_value(&s).unwrap_or(Value::Null);
            let t = Instant::now();
            if local.contains(&job.spec.map) {
                run_local(&local, &job.spec.map, args)
                    .await
                    .map_err(|e| JobError::Slice {
                        slice: s.label(),
                        policy: "plan",
                        error: e,
                    })?;
                t.elapsed().as_secs_f64() / lines.max(1) as f64
            } else {
                let opts = CallOptions {
                    no_cache: true,
                    ..Default::default()
                };
                client.call_json(&job.spec.map, args, &opts).await?;
                t.elapsed().as_secs_f64() / lines.max(1) as f64
            }
        }
    };
    let (overhead, max_rate) = request_costs(client).await?;
    let workers = free_workers(client).await?;
    Ok(CostModel {
        per_line,
        overhead,
        max_rate,
        workers,
    })
}

/// Median round trip of a fresh `noop` request, and the rate of 64 concurrent ones.
async fn request_costs(client: &Client) -> Result<(f64, f64), JobError> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string();
    let mut times = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        client
            .call::<_, Value>("noop", json!(["mozen-plan", nonce, "seq", i]))
            .await?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let n = 64;
    let t = Instant::now();
    let calls =
        (0..n).map(|i| client.call::<_, Value>("noop", json!(["mozen-plan", nonce, "burst", i])));
    for r in futures::future::join_all(calls).await {
        r?;
    }
    Ok((times[2], n as f64 / t.elapsed().as_secs_f64()))
}

/// Free slots of active nodes; nodes on the same host share that host's cores.
pub async fn free_workers(client: &Client) -> Result<usize, JobError> {
    let nodes = client
        .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
        .await?
        .nodes;
    let mut hosts: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for n in nodes.iter().filter(|n| n.state == "active") {
        let host = n
            .addr
            .rsplit_once(':')
            .map_or(n.addr.as_str(), |(h, _)| h)
            .to_string();
        let e = hosts.entry(host).or_default();
        e.0 = e.0.max(n.cpus);
        e.1 += n.slots.saturating_sub(n.busy_slots);
    }
    Ok(hosts
        .values()
        .map(|(cpus, free)| (*cpus).min(*free) as usize)
        .sum::<usize>()
        .max(1))
}

/// Lines per slice for this job: fixed in the spec, or from the cost model.
pub async fn lines_per_slice(job: &Prepared, client: &Client) -> Result<u64, JobError> {
    match job.spec.lines {
        SliceLines::Fixed(n) => Ok(n),
        SliceLines::Auto => {
            let m = measure(job, client).await?;
            Ok(m.slice_lines(job.lines(), m.workers))
        }
    }
}

/// Runs a prepared job on the cluster; `progress` sees every change.
pub async fn run(
    job: &Prepared,
    client: &Client,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<JobReport, JobError> {
    let start = Instant::now();
    let spec = &job.spec;
    let per_slice = lines_per_slice(job, client).await?;
    let slices = cut(&job.files, per_slice);
    let concurrency = free_workers(client).await?.max(1) * 2 + 2;
    let retries = match spec.policy {
        ErrorPolicy::Fail => 0,
        _ => spec.retries,
    };
    let opts = CallOptions {
        retries,
        backoff_ms: 50,
        ..Default::default()
    };
    let mut p = Progress {
        slices: slices.len() as u64,
        bytes_total: job.bytes(),
        ..Default::default()
    };
    progress(&p);
    let call = |s: SliceRef| {
        let f = &job.files[s.file];
        let args = f.slice(s.lines, spec.ship, &spec.map_args);
        let label = args.label();
        let bytes = f.slice_bytes(s.lines);
        let opts = opts.clone();
        async move {
            let v = serde_json::to_value(&args).unwrap_or(Value::Null);
            let key = RequestKey::of(&spec.map, &canonical_args(&v)).to_hex();
            let r = client.call_json(&spec.map, v, &opts).await;
            (label, key, bytes, r)
        }
    };
    let mut results: Vec<Option<Value>> = vec![None; slices.len()];
    let mut skipped = Vec::new();
    let mut executed = 0;
    let mut stream = futures::stream::iter(slices.iter().copied().map(call).enumerate())
        .map(|(i, fut)| async move { (i, fut.await) })
        .buffer_unordered(concurrency);
    while let Some((i, (label, key, bytes, r))) = stream.next().await {
        p.done += 1;
        p.bytes_done += bytes;
        match r {
            Ok(reply) => {
                if reply.cached {
                    p.memo_hits += 1;
                } else {
                    executed += 1;
                }
                let text = reply.result_json.as_deref().unwrap_or("null");
                results[i] = Some(serde_json::from_str(text).map_err(|e| {
                    ClientError::Codec(format!(
                        "{}: result of {label} does not decode: {e}",
                        spec.map
                    ))
                })?);
            }
            Err(ClientError::Task(error)) => {
                p.failed += 1;
                if spec.policy == ErrorPolicy::Skip {
                    skipped.push(Skipped {
                        slice: label,
                        key,
                        error: show_chain(&error),
                    });
                } else {
                    progress(&p);
                    return Err(JobError::Slice {
                        slice: label,
                        policy: spec.policy.name(),
                        error,
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        progress(&p);
    }
    drop(stream);
    skipped.sort_by(|a, b| a.slice.cmp(&b.slice));
    // The reduce tree: slice order is fixed, so each level's groups (and their keys) repeat
    // from one run to the next.
    let mut level: Vec<Value> = results.into_iter().flatten().collect();
    let mut first = true;
    while first || level.len() > 1 {
        first = false;
        let groups: Vec<Value> = level
            .chunks(spec.fan_in.max(2))
            .map(|c| Value::Array(c.to_vec()))
            .collect();
        let groups = if groups.is_empty() {
            vec![json!([])]
        } else {
            groups
        };
        let calls = groups
            .into_iter()
            .map(|g| client.call_json(&spec.reduce, g, &opts));
        let mut next = Vec::new();
        for r in futures::stream::iter(calls)
            .buffered(concurrency)
            .collect::<Vec<_>>()
            .await
        {
            match r {
                Ok(reply) => {
                    p.reduces += 1;
                    let text = reply.result_json.as_deref().unwrap_or("null");
                    next.push(serde_json::from_str(text).map_err(|e| {
                        ClientError::Codec(format!("{}: result does not decode: {e}", spec.reduce))
                    })?);
                }
                Err(ClientError::Task(error)) => {
                    return Err(JobError::Reduce {
                        function: spec.reduce.clone(),
                        error,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        progress(&p);
        level = next;
    }
    let elapsed = start.elapsed();
    Ok(JobReport {
        name: spec.name.clone(),
        result: level.pop().unwrap_or(Value::Null),
        files: job.files.len(),
        lines: job.lines(),
        bytes: job.bytes(),
        lines_per_slice: per_slice,
        slices: p.slices,
        executed,
        memo_hits: p.memo_hits,
        reduces: p.reduces,
        skipped,
        elapsed_ms: elapsed.as_millis() as u64,
        mb_per_s: mb_per_s(job.bytes(), elapsed),
    })
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs the job in this process, one slice after another, with the built-in functions: the
/// baseline a cluster run is compared with.
pub async fn run_local_job(
    job: &Prepared,
    lines_per_slice: u64,
) -> Result<(Value, Duration), JobError> {
    let functions = Functions::with_builtins(false);
    let start = Instant::now();
    let mut values = Vec::new();
    for s in cut(&job.files, lines_per_slice) {
        let args = job.files[s.file].slice(s.lines, true, &job.spec.map_args);
        let label = args.label();
        let v = serde_json::to_value(&args).unwrap_or(Value::Null);
        values.push(
            run_local(&functions, &job.spec.map, v)
                .await
                .map_err(|error| JobError::Slice {
                    slice: label,
                    policy: "local",
                    error,
                })?,
        );
    }
    let result = run_local(&functions, &job.spec.reduce, Value::Array(values))
        .await
        .map_err(|error| JobError::Reduce {
            function: job.spec.reduce.clone(),
            error,
        })?;
    Ok((result, start.elapsed()))
}
