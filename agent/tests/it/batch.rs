//! Batch jobs on real agents: results equal an independent count, reruns hit the memo, an
//! edited file reruns only its slices, error policies, bad job files, and SIGKILL mid-job.
//!
//! Most tests use a corpus of a few MB. The 50 MB one runs alone (see .config/nextest.toml):
//! about a minute in a debug build.

use crate::harness::*;
use mozen_agent::batch::{self, JobSpec, SliceLines};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A generated corpus in a temp dir, with the counts its generator tallied.
struct Corpus {
    dir: tempfile::TempDir,
    counts: BTreeMap<String, u64>,
    files: Vec<PathBuf>,
}

fn corpus(files: usize, bytes_each: usize) -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let (files, counts) =
        batch::corpus::generate(&dir.path().join("data"), files, bytes_each).unwrap();
    Corpus { dir, counts, files }
}

impl Corpus {
    /// Writes a job file into the corpus dir and returns its path.
    fn job(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, body).unwrap();
        p
    }
}

fn wordcount_job(ship: bool, lines: &str, policy: &str) -> String {
    format!(
        "name = \"words\"\n[data]\nfiles = [\"data/*.txt\"]\nship = {ship}\n[slice]\nlines = {lines}\n\
         [process]\nfunction = \"wordcount\"\n[reduce]\nfunction = \"merge_counts\"\n\
         [error]\npolicy = \"{policy}\"\nretries = 1\n"
    )
}

fn run_json(c: &Cluster, job: &Path) -> Value {
    c.cli_json(&["run", job.to_str().unwrap(), "--json"])
}

fn counts_of(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn executions(c: &Cluster, function: &str) -> u64 {
    c.function_stats(function)["executions"]
        .as_u64()
        .unwrap_or(0)
}

const LINES: u64 = 1500;

#[tokio::test(flavor = "multi_thread")]
async fn wordcount_equals_an_independent_count_and_reruns_only_what_changed() {
    let corpus = corpus(24, 150_000);
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let shipped = corpus.job("shipped", &wordcount_job(true, &LINES.to_string(), "retry"));
    let r = run_json(&c, &shipped);
    assert_eq!(counts_of(&r["result"]), corpus.counts);
    let slices = r["slices"].as_u64().unwrap();
    assert!(slices >= 24, "{r}");
    assert_eq!(r["executed"], slices);
    assert_eq!(executions(&c, "wordcount"), slices);

    // Agents read the files themselves: same answer, new keys (no text in the arguments).
    let read = corpus.job("read", &wordcount_job(false, &LINES.to_string(), "retry"));
    let r = run_json(&c, &read);
    assert_eq!(counts_of(&r["result"]), corpus.counts);
    assert_eq!(executions(&c, "wordcount"), 2 * slices);

    // Running again: every slice is a memo hit and nothing executes.
    let again = run_json(&c, &shipped);
    assert_eq!(
        (again["memo_hits"].as_u64(), again["executed"].as_u64()),
        (Some(slices), Some(0))
    );
    assert_eq!(executions(&c, "wordcount"), 2 * slices);
    assert_eq!(counts_of(&again["result"]), corpus.counts);

    // Editing one file reruns exactly that file's slices.
    let edited = &corpus.files[7];
    let mut text = std::fs::read_to_string(edited).unwrap();
    text.push_str("Zebra zebra okapi.\n");
    std::fs::write(edited, &text).unwrap();
    let file_slices = (text.lines().count() as u64).div_ceil(LINES);
    let mut expected = corpus.counts.clone();
    *expected.entry("zebra".into()).or_default() += 2;
    *expected.entry("okapi".into()).or_default() += 1;
    let after = run_json(&c, &shipped);
    assert_eq!(after["executed"].as_u64(), Some(file_slices), "{after}");
    assert_eq!(executions(&c, "wordcount"), 2 * slices + file_slices);
    assert_eq!(counts_of(&after["result"]), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_reports_the_failed_slices_and_fail_shows_the_chain() {
    let corpus = corpus(3, 20_000);
    // Line 101 of part-0001 is not UTF-8: an agent reading it refuses that slice.
    let bad = &corpus.files[1];
    let mut bytes = std::fs::read(bad).unwrap();
    let at = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(99)
        .unwrap()
        .0
        + 1;
    bytes.splice(at..at, b"caf\xe9\n".iter().copied());
    std::fs::write(bad, &bytes).unwrap();
    let c = Cluster::start(1, &[]);
    c.ready(1).await;
    let skip = corpus.job("skip", &wordcount_job(false, "100", "skip"));
    let r = run_json(&c, &skip);
    let skipped = r["skipped"].as_array().unwrap();
    let label = format!("{}:101-200", std::fs::canonicalize(bad).unwrap().display());
    assert_eq!(skipped.len(), 1, "{r}");
    assert_eq!(skipped[0]["slice"], label.as_str());
    let why = skipped[0]["error"].as_str().unwrap();
    assert!(
        why.contains("not UTF-8 text") && why.contains("in wordcount("),
        "{why}"
    );
    assert!(r["result"].as_object().unwrap().len() > 100);

    let fail = corpus.job("fail", &wordcount_job(false, "100", "fail"));
    let out = c.cli(&["run", fail.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "MZ-JOB-FAILED: slice {label} failed under policy fail"
        )),
        "{err}"
    );
    assert!(
        err.contains("not UTF-8 text") && err.contains("in wordcount("),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_job_files_are_refused_precisely_before_anything_is_submitted() {
    let corpus = corpus(2, 2_000);
    let c = Cluster::start(1, &[]);
    c.ready(1).await;
    let good = wordcount_job(true, "100", "retry");
    let cases = [
        (
            good.replace("data/*.txt", "data/*.csv"),
            ":3:10: data.files: 'data/*.csv' matches no file",
        ),
        (
            good.replace("data/*.txt", "nope.txt"),
            ":3:10: data.files: 'nope.txt' does not exist",
        ),
        (
            good.replace("\"wordcount\"", "\"wordcnt\""),
            ":8:12: process.function: the cluster has no function named 'wordcnt'",
        ),
        (
            good.replace("\"merge_counts\"", "\"merge\""),
            ":10:12: reduce.function: the cluster has no function named 'merge'",
        ),
        (
            good.replace("lines = 100", "lines = 0"),
            ":6:9: slice.lines: expected \"auto\" or a positive number of lines, got 0",
        ),
        (good.replace("ship = true", "ship = yes"), ":4:8: "),
        (
            good.replace("\"retry\"", "\"later\""),
            ":12:10: error.policy: 'later' is not one of retry, skip, fail",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let job = corpus.job(&format!("bad{i}"), body);
        let out = c.cli(&["run", job.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {err}");
        assert!(
            err.contains(&format!("MZ-BAD-JOB: {}{want}", job.display())),
            "{want}: {err}"
        );
    }
    let missing = c.cli(&["run", "/nonexistent/job.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/job.toml: cannot read the job file")
    );
    assert_eq!(
        c.function_stats("wordcount")["submitted"]
            .as_u64()
            .unwrap_or(0),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_an_agent_mid_job_gives_the_identical_result() {
    let corpus = corpus(8, 100_000);
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let job = corpus.job("kill", &wordcount_job(true, "25", "retry"));
    let prepared = batch::prepare(JobSpec::load(&job).unwrap(), Some(&c.client()))
        .await
        .unwrap();
    let done = AtomicU64::new(0);
    let client = c.client();
    let show = |p: &batch::Progress| done.store(p.done, Ordering::SeqCst);
    let job_run = batch::run(&prepared, &client, &show);
    let killer = async {
        eventually(Duration::from_secs(60), "ten slices done", || async {
            done.load(Ordering::SeqCst) >= 10
        })
        .await;
        let leader = c.leader().await;
        let victim = if leader == 3 { 2 } else { 3 };
        c.agent(victim).kill();
        done.load(Ordering::SeqCst)
    };
    let (report, at_kill) = tokio::join!(job_run, killer);
    let report = report.unwrap();
    assert!(
        at_kill < report.slices,
        "the kill came at {at_kill} of {} slices, before the end",
        report.slices
    );
    assert_eq!(counts_of(&report.result), corpus.counts);
}

/// Waits for request `key` and returns its value, whoever started it.
async fn wait_value(c: &Cluster, key: &str) -> Value {
    let client = c.client();
    let reply = client
        .rpc(|mut cl| {
            let k = key.to_string();
            async move {
                cl.get(mozen_proto::GetRequest {
                    key: k,
                    wait: true,
                    timeout_ms: 120_000,
                })
                .await
            }
        })
        .await
        .unwrap();
    assert_eq!(reply.state, "done", "{reply:?}");
    serde_json::from_str(reply.result_json.as_deref().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_is_one_root_request_that_outlives_its_client() {
    // Big enough (144 slices) that the job lasts many progress reports (one every 250 ms)
    // after its fifth slice is done.
    let corpus = corpus(6, 400_000);
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let job = corpus.job("root", &wordcount_job(true, "300", "retry"));
    let prepared = batch::prepare(JobSpec::load(&job).unwrap(), Some(&c.client()))
        .await
        .unwrap();
    let seen = std::sync::Mutex::new((None, 0u64));
    let show = |p: &batch::Progress| *seen.lock().unwrap() = (p.root, p.done);
    let client = c.client();
    // The client goes away once five maps are done: the job goes on without it.
    tokio::select! {
        biased;
        _ = eventually(Duration::from_secs(120), "five slices done", || async {
            seen.lock().unwrap().1 >= 5
        }) => {}
        r = batch::run(&prepared, &client, &show) => panic!("the job ended first: {:?}", r.map(|r| r.slices)),
    }
    drop(client);
    let root = seen.lock().unwrap().0.unwrap().to_hex();
    let value = wait_value(&c, &root).await;
    let result: batch::job::JobResult = serde_json::from_value(value).unwrap();
    assert_eq!(counts_of(&result.result), corpus.counts);
    assert!(result.skipped.is_empty());
    // Its children: one map per slice (each fetched its text, as only its hash travels), then
    // the reduces.
    let tree = c
        .client()
        .rpc(|mut cl| {
            let k = root.clone();
            async move {
                cl.tree(mozen_proto::TreeRequest {
                    key: k,
                    max_depth: 1,
                    omit_args: true,
                    ..Default::default()
                })
                .await
            }
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(tree[0].request.as_ref().unwrap().function, "mapreduce");
    let count = |f: &str| {
        tree.iter()
            .filter(|e| e.depth == 1 && e.request.as_ref().unwrap().function == f)
            .count() as u64
    };
    let slices = count("wordcount");
    assert_eq!(result.executed + result.memo_hits, slices);
    assert_eq!(count("merge_counts"), result.reduces);
    assert!(slices >= 6, "{slices}");
    // Started again, the whole job is one memo hit.
    let again = run_json(&c, &job);
    assert_eq!(again["root"], root.as_str());
    assert_eq!(again["executed"], 0);
    assert_eq!(counts_of(&again["result"]), corpus.counts);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_are_checked_stored_once_and_a_missing_one_fails_clearly() {
    use batch::job::{BLOB_MISSING, blob_hash};
    let c = Cluster::start(1, &[]);
    c.ready(1).await;
    let client = c.client();
    let put = |check: Vec<String>, blobs: Vec<String>| {
        let client = client.clone();
        async move {
            client
                .rpc(|mut cl| {
                    let r = mozen_proto::PutBlobsRequest {
                        check: check.clone(),
                        blobs: blobs.clone(),
                    };
                    async move { cl.put_blobs(r).await }
                })
                .await
        }
    };
    let e = put(vec!["f00".into()], vec![])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("check[0] (3 bytes) is not a blob hash"), "{e}");
    let big = "x".repeat(batch::job::MAX_BLOB_BYTES + 1);
    let e = put(vec![], vec!["ok".into(), big])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("MZ-TOO-LARGE: blob 1 is 2097153 bytes"), "{e}");

    let text = "one\ntwo\nthree\n".to_string();
    let hash = blob_hash(&text);
    let r = put(vec![hash.clone()], vec![]).await.unwrap();
    assert_eq!(r.missing, vec![hash.clone()]);
    assert_eq!(put(vec![], vec![text.clone()]).await.unwrap().stored, 1);
    let r = put(vec![hash.clone()], vec![text.clone()]).await.unwrap();
    assert_eq!((r.missing.len(), r.stored), (0, 0));

    let slice = |blob: &str| serde_json::json!({"file": "/mem/a.txt", "lines": [0, 3], "file_hash": "h", "blob": blob});
    let n: u64 = client.call("linecount", slice(&hash)).await.unwrap();
    assert_eq!(n, 3);
    let absent = blob_hash("never stored");
    match client.call::<_, u64>("linecount", slice(&absent)).await {
        Err(mozen_agent::client::ClientError::Task(e)) => {
            assert_eq!(e.code, BLOB_MISSING, "{e:?}");
            assert!(e.message.contains(&absent[..12]), "{e:?}");
            assert_eq!(e.chain.last().unwrap().function, "linecount");
        }
        other => panic!("expected {BLOB_MISSING}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_estimates_and_auto_slicing_keep_the_result() {
    let corpus = corpus(6, 50_000);
    let c = Cluster::start(2, &[]);
    c.ready(2).await;
    let job = corpus.job("auto", &wordcount_job(true, "\"auto\"", "retry"));
    let plan = c.cli_json(&["plan", job.to_str().unwrap(), "--json"]);
    assert!(plan["per_line_us"].as_f64().unwrap() > 0.0, "{plan}");
    assert!(plan["overhead_ms"].as_f64().unwrap() > 0.0, "{plan}");
    assert_eq!(plan["cluster"].as_array().unwrap().len(), 4);
    assert!(plan["verdict"].as_str().unwrap().contains("distributing"));
    let text = c.cli(&["plan", job.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("+500 nodes"));
    let r = run_json(&c, &job);
    assert_eq!(counts_of(&r["result"]), corpus.counts);
    let spec = JobSpec::load(&job).unwrap();
    assert_eq!(spec.lines, SliceLines::Auto);
}

/// 50 MB in 200 files, shipped and read.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_mb_wordcount_equals_an_independent_count() {
    let corpus = corpus(200, 250_000);
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    for ship in [true, false] {
        let job = corpus.job(
            &format!("big{ship}"),
            &wordcount_job(ship, "\"auto\"", "retry"),
        );
        let r = run_json(&c, &job);
        assert!(r["bytes"].as_u64().unwrap() >= 50_000_000);
        assert_eq!(counts_of(&r["result"]), corpus.counts, "ship = {ship}");
        eprintln!(
            "ship = {ship}: {} slices, {:.1} MB/s",
            r["slices"], r["mb_per_s"]
        );
    }
}
