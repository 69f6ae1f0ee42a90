//! Running a job on a cluster: validate, slice, submit the maps, reduce as a tree of requests.
//!
//! Every map and reduce is an ordinary memoized request: a map's key is the content hash of
//! (function, file, file hash, line range), and a reduce's key is that of the values it
//! combines, so running a job again after a crash or an edit redoes only what changed.

use super::builtins::{self, SliceArgs};
use super::cost::CostModel;
use super::input::{InputFile, SliceRef, cut};
pub use super::job::Skipped;
use super::job::{self, JobArgs, JobResult};
use super::spec::{ErrorPolicy, JobSpec, SliceLines, SpecError};
use crate::client::{CallOptions, Client};
use crate::error::ClientError;
use futures::StreamExt;
use mozen_model::{Code, RequestKey, TaskError, canonical_args};
use mozen_proto as pb;
use serde::Serialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// An input file cannot be used.
    #[error("{code}: {0}", code = Code::BadInput)]
    Input(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A slice failed and the error policy stops the job.
    #[error(
        "{}: slice {slice} failed under policy {policy}: {}",
        Code::JobFailed,
        show_chain(.error)
    )]
    Slice {
        slice: String,
        policy: &'static str,
        error: TaskError,
    },
    /// A reduce request failed (reduces are not skipped).
    #[error(
        "{}: reduce {function} failed: {}",
        Code::JobFailed,
        show_chain(.error)
    )]
    Reduce { function: String, error: TaskError },
    /// The job's root request failed: a slice under its error policy, a reduce, or the root.
    #[error("{}", show_chain(.0))]
    Failed(TaskError),
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
    /// Bytes of shipped slices stored in the cluster before the job started.
    pub uploaded: u64,
    /// The job's root request, once known.
    #[serde(skip)]
    pub root: Option<RequestKey>,
}

/// Attempts of a job's root (and, inherited, of its maps) counting re-queues after the loss
/// of an agent.
pub const ROOT_ATTEMPTS: u32 = 10;

/// The outcome of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub name: String,
    /// Key of the job's root request.
    pub root: String,
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
        let known = client.functions().await?;
        let names: Vec<&str> = known
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

/// Measures the job's costs: the map's per-line cost on a sample slice (locally when the map
/// is a batch built-in, else on the cluster), the cluster's per-request overhead and request
/// rate, and its free workers.
pub async fn measure(job: &Prepared, client: &Client) -> Result<CostModel, JobError> {
    let sample_lines = 20_000.min(job.lines()).max(1);
    let sample = job.sample(sample_lines);
    let per_line = match sample {
        None => 0.0,
        Some(s) => {
            let lines = s.lines[1] - s.lines[0];
            let args = serde_json::to_value(&s).unwrap_or(Value::Null);
            let t = Instant::now();
            match builtins::run_local(&job.spec.map, args.clone()).await {
                Some(ran) => {
                    ran.map_err(|e| JobError::Slice {
                        slice: s.label(),
                        policy: "plan",
                        error: e,
                    })?;
                }
                None => {
                    let opts = CallOptions {
                        no_cache: true,
                        ..Default::default()
                    };
                    client.call_json(&job.spec.map, args, &opts).await?;
                }
            }
            t.elapsed().as_secs_f64() / lines.max(1) as f64
        }
    };
    let (overhead, max_rate) = request_costs(client).await?;
    let workers = free_workers(client).await?;
    let ship_per_byte = if job.spec.ship {
        ship_cost(client).await?
    } else {
        0.0
    };
    Ok(CostModel {
        per_line,
        overhead,
        max_rate,
        workers,
        bytes_per_line: job.bytes() as f64 / job.lines().max(1) as f64,
        ship_per_byte,
    })
}

/// A value no earlier measurement used, so that its requests are not memo hits.
fn fresh_nonce() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// Bytes of the text shipped to measure the cost of shipping.
const SHIP_SAMPLE_BYTES: usize = 1 << 20;

/// Seconds per byte to store shipped text in the cluster: a fresh sample of
/// [`SHIP_SAMPLE_BYTES`] uploaded and then forgotten.
async fn ship_cost(client: &Client) -> Result<f64, JobError> {
    let nonce = fresh_nonce();
    let line = format!("mozen plan sample {nonce} of the cost of shipping input text\n");
    let text = line.repeat(SHIP_SAMPLE_BYTES / line.len());
    let t = Instant::now();
    let hash = job::blob_hash(&text);
    upload(
        client,
        &[(hash.clone(), Cow::Borrowed(text.as_str()))],
        &mut |_| {},
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let key = job::blob_key(&hash).to_hex();
    client
        .rpc(|mut c| {
            let k = key.clone();
            async move {
                c.forget(pb::ForgetRequest {
                    key: k,
                    ..Default::default()
                })
                .await
            }
        })
        .await?;
    Ok(secs / text.len() as f64)
}

/// Median round trip of a fresh `noop` request, and the rate of 64 concurrent ones.
async fn request_costs(client: &Client) -> Result<(f64, f64), JobError> {
    let nonce = fresh_nonce();
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

/// Most bytes of blobs sent in one `PutBlobs` request: the agent's largest log entry
/// (`mozen_agent::proposer::MAX_ENTRY_BYTES`; a test of the agent keeps the two equal).
pub const UPLOAD_BYTES: usize = 1 << 20;
/// How often a running job's progress is read from the cluster.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Shipped texts by hash.
type Blobs<'a> = Vec<(String, Cow<'a, str>)>;

/// The root request's arguments for `slices`, and (when the job ships its data) the texts they
/// name by hash, each once. A shipped slice larger than [`job::MAX_BLOB_BYTES`] is refused.
fn job_args<'a>(job: &'a Prepared, slices: &[SliceRef]) -> Result<(JobArgs, Blobs<'a>), String> {
    let spec = &job.spec;
    let mut blobs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut args = Vec::with_capacity(slices.len());
    for s in slices {
        let f = &job.files[s.file];
        // Read in place: path, byte range and the hash of the bytes; a shipped slice is
        // named by that hash instead.
        let mut a = f.slice(s.lines, false, &spec.map_args);
        if spec.ship {
            let size = f.slice_bytes(s.lines);
            if size > job::MAX_BLOB_BYTES as u64 {
                let lines = (s.lines[1] - s.lines[0]).max(1);
                let fit = (job::MAX_BLOB_BYTES as u64 * lines / size).max(1);
                return Err(format!(
                    "slice {} is {size} bytes, more than a shipped slice may be ({} bytes): set [slice] lines to {fit} or fewer, or to \"auto\"",
                    a.label(),
                    job::MAX_BLOB_BYTES
                ));
            }
            a.bytes = None;
            a.blob = a.slice_hash.take();
            if let Some(h) = &a.blob
                && seen.insert(h.clone())
            {
                blobs.push((h.clone(), f.text(s.lines)));
            }
        }
        args.push(a);
    }
    let root = JobArgs {
        name: spec.name.clone(),
        map: spec.map.clone(),
        reduce: spec.reduce.clone(),
        fan_in: spec.fan_in.max(2),
        policy: spec.policy,
        slices: args,
    };
    Ok((root, blobs))
}

/// Stores the texts of `blobs` the cluster does not hold yet; `sent` sees the bytes uploaded
/// so far. Returns the bytes uploaded.
pub async fn upload(
    client: &Client,
    blobs: &[(String, Cow<'_, str>)],
    sent: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, JobError> {
    let mut missing = std::collections::HashSet::new();
    for group in blobs.chunks(8192) {
        let req = pb::PutBlobsRequest {
            check: group.iter().map(|(h, _)| h.clone()).collect(),
            blobs: Vec::new(),
        };
        let reply = client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.put_blobs(r).await }
            })
            .await?;
        missing.extend(reply.missing);
    }
    // Requests of about UPLOAD_BYTES, a few in flight: the leader batches them into few log
    // entries.
    let mut requests = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size = 0;
    for (_, text) in blobs.iter().filter(|(h, _)| missing.contains(h)) {
        if size + text.len() > UPLOAD_BYTES && !current.is_empty() {
            requests.push((std::mem::take(&mut current), size as u64));
            size = 0;
        }
        size += text.len();
        current.push(text.to_string());
    }
    if !current.is_empty() {
        requests.push((current, size as u64));
    }
    let puts = requests.into_iter().map(|(blobs, bytes)| async move {
        let req = pb::PutBlobsRequest {
            check: Vec::new(),
            blobs,
        };
        client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.put_blobs(r).await }
            })
            .await
            .map(|_| bytes)
    });
    let mut total = 0;
    let mut puts = futures::stream::iter(puts).buffer_unordered(3);
    while let Some(r) = puts.next().await {
        total += r?;
        sent(total);
    }
    Ok(total)
}

/// Reads how far the job whose root is `root` got: its map and reduce children that finished.
async fn poll_progress(
    client: &Client,
    job: &JobArgs,
    root: &str,
    bytes_of: &HashMap<String, u64>,
    p: &mut Progress,
) {
    // The tree comes in pages (the agent bounds each reply): read them all.
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::TreeRequest {
            key: root.to_string(),
            max_nodes: (job.slices.len() * 2 + 64).min(u32::MAX as usize) as u32,
            max_depth: 1,
            omit_args: true,
            page_token,
        };
        let Ok(tree) = client
            .rpc(|mut c| {
                let r = req.clone();
                async move { c.tree(r).await }
            })
            .await
        else {
            return; // not submitted yet, or between leaders: the next poll tells
        };
        entries.extend(tree.entries);
        if tree.next_page_token.is_empty() {
            break;
        }
        page_token = tree.next_page_token;
    }
    let (mut done, mut failed, mut bytes, mut reduces) = (0, 0, 0, 0);
    for e in entries.iter().filter(|e| e.depth == 1) {
        let Some(r) = &e.request else { continue };
        let finished = match r.state.as_str() {
            "done" => true,
            "failed" | "cancelled" => false,
            _ => continue,
        };
        if r.function == job.map && bytes_of.contains_key(&r.key) {
            done += 1;
            failed += u64::from(!finished);
            bytes += bytes_of[&r.key];
        } else if r.function == job.reduce && finished {
            reduces += 1;
        }
    }
    // A re-run root (after an agent's loss) starts with fewer finished children: never go back.
    p.done = p.done.max(done);
    p.failed = p.failed.max(failed);
    p.bytes_done = p.bytes_done.max(bytes);
    p.reduces = p.reduces.max(reduces);
}

/// Runs a prepared job on the cluster as one root request (see [`super::job`]); `progress`
/// sees every change.
pub async fn run(
    job: &Prepared,
    client: &Client,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<JobReport, JobError> {
    let start = Instant::now();
    let spec = &job.spec;
    let per_slice = lines_per_slice(job, client).await?;
    let slices = cut(&job.files, per_slice);
    let (root, blobs) = job_args(job, &slices).map_err(JobError::Input)?;
    let mut p = Progress {
        slices: slices.len() as u64,
        bytes_total: job.bytes(),
        ..Default::default()
    };
    p.root = Some(root.key());
    progress(&p);
    let key = root.key().to_hex();
    let bytes_of: HashMap<String, u64> = root
        .slices
        .iter()
        .zip(&slices)
        .map(|(a, s)| {
            let v = serde_json::to_value(a).unwrap_or(Value::Null);
            let k = RequestKey::of(&spec.map, &canonical_args(&v)).to_hex();
            (k, job.files[s.file].slice_bytes(s.lines))
        })
        .collect();
    // Already done as a whole: the blobs need not travel again.
    let peek = client
        .rpc(|mut c| {
            let k = key.clone();
            async move {
                c.get(pb::GetRequest {
                    key: k,
                    ..Default::default()
                })
                .await
            }
        })
        .await;
    let done_before = peek.is_ok_and(|r| r.state == "done");
    if !blobs.is_empty() && !done_before {
        upload(client, &blobs, &mut |n| {
            p.uploaded = n;
            progress(&p);
        })
        .await?;
    }
    let mut opts = CallOptions {
        retries: match spec.policy {
            ErrorPolicy::Fail => 0,
            _ => spec.retries,
        },
        backoff_ms: 50,
        // The loss of agents is no reason to give a job up: its root and maps run again.
        max_attempts: ROOT_ATTEMPTS,
        ..Default::default()
    };
    let mut reply = None;
    for _ in 0..2 {
        let r = {
            let call = client.call_json(job::ROOT, root.value(), &opts);
            tokio::pin!(call);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = tick.tick() => {
                        poll_progress(client, &root, &key, &bytes_of, &mut p).await;
                        progress(&p);
                    }
                }
            }
        };
        let r = r.map_err(|e| match e {
            ClientError::Task(e) => JobError::Failed(e),
            e => e.into(),
        })?;
        let result: JobResult = serde_json::from_str(r.result_json.as_deref().unwrap_or("null"))
            .map_err(|e| {
                ClientError::Codec(format!("{}: result does not decode: {e}", job::ROOT))
            })?;
        // A memoized job that skipped slices runs again: their failures may have passed.
        let again = r.cached && !result.skipped.is_empty() && !opts.no_cache;
        reply = Some((r.cached, result));
        if !again {
            break;
        }
        opts.no_cache = true;
    }
    let (cached, result) = reply.expect("the loop ran");
    let (executed, memo_hits) = if cached {
        (0, p.slices)
    } else {
        (result.executed, result.memo_hits)
    };
    p.done = p.slices;
    p.failed = result.skipped.len() as u64;
    p.memo_hits = memo_hits;
    p.bytes_done = p.bytes_total;
    p.reduces = p.reduces.max(result.reduces);
    progress(&p);
    let elapsed = start.elapsed();
    Ok(JobReport {
        name: spec.name.clone(),
        root: key,
        result: result.result,
        files: job.files.len(),
        lines: job.lines(),
        bytes: job.bytes(),
        lines_per_slice: per_slice,
        slices: p.slices,
        executed,
        memo_hits,
        reduces: result.reduces,
        skipped: result.skipped,
        elapsed_ms: elapsed.as_millis() as u64,
        mb_per_s: mb_per_s(job.bytes(), elapsed),
    })
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs the job in this process, one slice after another, with the batch built-ins: the
/// baseline a cluster run is compared with.
pub async fn run_local_job(
    job: &Prepared,
    lines_per_slice: u64,
) -> Result<(Value, Duration), JobError> {
    let start = Instant::now();
    let mut values = Vec::new();
    for s in cut(&job.files, lines_per_slice) {
        let args = job.files[s.file].slice(s.lines, true, &job.spec.map_args);
        let label = args.label();
        let v = serde_json::to_value(&args).unwrap_or(Value::Null);
        values.push(
            local(&job.spec.map, v)
                .await
                .map_err(|error| JobError::Slice {
                    slice: label,
                    policy: "local",
                    error,
                })?,
        );
    }
    let result = local(&job.spec.reduce, Value::Array(values))
        .await
        .map_err(|error| JobError::Reduce {
            function: job.spec.reduce.clone(),
            error,
        })?;
    Ok((result, start.elapsed()))
}

/// Runs `function` with the batch built-ins of this process (see [`builtins::run_local`]).
async fn local(function: &str, args: Value) -> Result<Value, TaskError> {
    builtins::run_local(function, args).await.unwrap_or_else(|| {
        Err(TaskError::new(
            mozen_model::codes::UNKNOWN_FUNCTION,
            format!("no function named '{function}' in this process (a local run has the batch built-ins only)"),
        ))
    })
}
