//! Batch jobs from the CLI on real agents: `mozen run` gives results equal to an independent
//! count, reruns hit the memo, an edited file reruns only its slices, error policies and bad
//! job files exit as documented; `mozen plan` estimates. (The job's root request and blobs
//! inside the cluster: the agent's tests.)
//!
//! Most tests use a corpus of a few MB. The 50 MB one runs alone (see .config/nextest.toml):
//! about a minute in a debug build.

use crate::harness::Cluster;
use crate::harness::batch::{corpus, counts_of, run_json, wordcount_job};
use mozen_client::batch::{JobSpec, SliceLines};

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
