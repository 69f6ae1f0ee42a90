//! Distributed execution: memoization, re-entrancy, error chains, node loss.

use crate::harness::*;
use mozen_agent::client::{CallOptions, ClientError};
use serde_json::{Value, json};
use std::time::Duration;

fn executions(c: &Cluster, function: &str) -> u64 {
    let fs = c.cli_json(&["functions", "--json"]);
    fs.as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == function)
        .map_or(0, |f| f["executions"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn fib_90_runs_91_requests_and_then_hits_the_memo() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let out = c.cli(&["call", "fib", "90"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2880067194370816120"
    );
    assert_eq!(executions(&c, "fib"), 91);
    let again = c.cli_json(&["call", "fib", "90", "--json"]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["result"], json!(2880067194370816120u64));
    assert_eq!(executions(&c, "fib"), 91);
    // --no-cache forces one fresh run of the top request (its children are memo hits).
    let fresh = c.cli_json(&["call", "fib", "90", "--json", "--no-cache"]);
    assert_eq!(fresh["cached"], false);
    assert_eq!(executions(&c, "fib"), 92);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_identical_sleep_calls_run_once() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    let calls = (0..50).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Value>("sleep", 300).await })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().unwrap(), Value::Null);
    }
    assert_eq!(executions(&c, "sleep"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_request_holds_no_slot() {
    let c = Cluster::start(1, &["--slots", "1"]);
    c.ready(1).await;
    let client = c.client();
    let sleep = client.submit::<_, Value>("sleep", 60_000);
    let key = mozen_model::RequestKey::of("sleep", &mozen_model::canonical_args(&json!(60_000)));
    // "unknown" until the submission reached the cluster (the call is sent in the background).
    let state = || {
        let out = c.cli(&["get", &key.to_hex(), "--json"]);
        if !out.status.success() {
            return json!("unknown");
        }
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["state"].clone()
    };
    eventually(Duration::from_secs(10), "sleep running", || async {
        state() == "running"
    })
    .await;
    // The only slot is free while the sleep waits: other work runs meanwhile.
    let v: Value = client
        .call("echo", json!("past the sleeper"))
        .await
        .unwrap();
    assert_eq!(v, json!("past the sleeper"));
    assert_eq!(state(), "running");
    drop(sleep);
}

#[tokio::test(flavor = "multi_thread")]
async fn reentrant_tree_and_bogosity_complete_with_one_slot_per_agent() {
    let c = Cluster::start(2, &["--slots", "1", "--voters", "1"]);
    c.ready(2).await;
    let client = c.client();
    let n: u64 = client.call("tree", json!([4, 5, "t1"])).await.unwrap();
    assert_eq!(n, 781);
    assert_eq!(executions(&c, "tree"), 781);
    let s: String = client
        .call("bogosity", json!([1, 0, 4, 5, "b1"]))
        .await
        .unwrap();
    assert!(s.starts_with("bogosity(job 0, level 4"), "{s}");
    // The tree view marks children shared by several parents.
    let key = mozen_model::RequestKey::of(
        "bogosity",
        &mozen_model::canonical_args(&json!([1, 0, 4, 5, "b1"])),
    );
    let tree = c.cli_json(&["tree", &key.to_hex(), "--json"]);
    assert!(tree.as_array().unwrap().iter().any(|e| e["shared"] == true));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_their_chain_and_bad_calls_fail_fast() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let out = c.cli(&["call", "ratio", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("division by zero"), "{err}");
    assert!(err.contains("in divide([1.0,0.0]) on node"), "{err}");
    assert!(err.contains("called from ratio(1)"), "{err}");

    let client = c.client();
    match client.call::<_, Value>("no_such_function", 1).await {
        Err(ClientError::Task(e)) => {
            assert_eq!(e.code, "MZ-UNKNOWN-FUNCTION");
            assert!(e.message.contains("no_such_function"));
        }
        other => panic!("expected an unknown-function error, got {other:?}"),
    }
    match client.call::<_, Value>("fib", "ten").await {
        Err(ClientError::Task(e)) => {
            assert_eq!(e.code, "MZ-BAD-ARGUMENTS");
            assert!(
                e.message.contains("fib") && e.message.contains("non-negative integer"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a bad-arguments error, got {other:?}"),
    }
    let out = c.cli(&["call", "fib", "[1,"]);
    assert_eq!(out.status.code(), Some(2));
    // Retries with backoff: a failing function runs 1 + retries times.
    let opts = CallOptions {
        retries: 2,
        backoff_ms: 10,
        ..Default::default()
    };
    assert!(
        client
            .call_json("fail", json!("again"), &opts)
            .await
            .is_err()
    );
    let fs = c.cli_json(&["functions", "--json"]);
    let fail = fs
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fail")
        .unwrap()
        .clone();
    assert_eq!(fail["failures"], 3);
    // A child call inherits its caller's retry policy: ratio(1) allowed one retry runs twice,
    // and each run's divide([1,0]) runs twice too (after the one failure of the first call).
    let once = CallOptions {
        retries: 1,
        backoff_ms: 10,
        ..Default::default()
    };
    assert!(client.call_json("ratio", json!(1), &once).await.is_err());
    let stats = |name: &str| c.function_stats(name);
    assert_eq!(stats("ratio")["failures"], 3);
    assert_eq!(stats("divide")["failures"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_1000_requests_run_loses_nothing() {
    let mut c = Cluster::start(3, &["--slots", "4"]);
    c.ready(3).await;
    let client = c.client();
    let leader = c.leader().await;
    let victim = c
        .agents
        .iter()
        .map(|a| a.id)
        .find(|id| *id != leader)
        .unwrap();
    let work = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .map::<_, Vec<Value>, _>("echo", (0..1000).map(|i| json!([i, "kill"])), 200)
                .await
        })
    };
    eventually(Duration::from_secs(20), "victim runs work", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == victim && n.running > 0)
    })
    .await;
    c.agent(victim).kill();
    let results = work.await.unwrap();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), vec![json!(i), json!("kill")]);
    }
    assert_eq!(executions(&c, "echo"), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_and_cancel() {
    let c = Cluster::start(1, &["--voters", "1", "--slots", "2"]);
    c.ready(1).await;
    let client = c.client();
    let _: u64 = client.call("fib", 10).await.unwrap();
    let out = c.cli(&["forget", "--function", "fib"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgot 11"));
    let _: u64 = client.call("fib", 10).await.unwrap();
    assert_eq!(executions(&c, "fib"), 22);
    let key = String::from_utf8(c.cli(&["submit", "sleep", "60000"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    eventually(Duration::from_secs(10), "sleep running", || async {
        c.cli_json(&["get", &key, "--json"])["state"] == "running"
    })
    .await;
    let out = c.cli(&["cancel", &key]);
    assert!(out.status.success());
    let got = c.cli_json(&["get", &key, "--json"]);
    assert_eq!(got["state"], "cancelled");
}

/// `Functions` says what each function expects and where it comes from.
#[tokio::test(flavor = "multi_thread")]
async fn functions_list_their_argument_shape_and_origin() {
    let c = Cluster::start(1, &["--voters", "1"]);
    c.ready(1).await;
    let fs = c.cli_json(&["functions", "--json"]);
    let of = |name: &str| -> Value {
        fs.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {fs}"))
    };
    let divide = of("divide");
    assert_eq!(divide["origin"], "built-in");
    assert!(!divide["shape"].as_str().unwrap().is_empty(), "{divide}");
    assert_eq!(of("mapreduce")["origin"], "batch");
    assert!(
        fs.as_array()
            .unwrap()
            .iter()
            .all(|f| f["registered"] == true && f["origin"] != ""),
        "{fs}"
    );
}
