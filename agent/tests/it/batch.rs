//! Batch jobs inside the cluster, on real agents: SIGKILL of an agent mid-job, the job as one
//! root request that outlives its client, and the shipped texts (blobs). (`mozen run` and
//! `mozen plan` themselves: the CLI's tests.)

use crate::harness::batch::{corpus, counts_of, run_json, wordcount_job};
use crate::harness::*;
use mozen_agent::batch::{self, JobSpec};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
