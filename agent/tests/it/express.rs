//! Express calls: short calls run before they are written down, then recorded in one fact.

use crate::harness::*;
use mozen_agent::client::{CallOptions, ClientError};
use serde_json::{Value, json};

fn applied(c: &Cluster) -> u64 {
    c.cli_json(&["status", "--json"])["applied_index"]
        .as_u64()
        .expect("applied index")
}

/// Log entries taken by `n` sequential distinct `echo` calls, once `echo` is known short.
async fn entries_per_call(c: &Cluster, n: u64) -> f64 {
    let client = c.client();
    for i in 0..5 {
        let _: Value = client.call("echo", json!(["warm", i])).await.unwrap();
    }
    let before = applied(c);
    for i in 0..n {
        let v: Value = client.call("echo", json!(["seq", i])).await.unwrap();
        assert_eq!(v, json!(["seq", i]));
    }
    (applied(c) - before) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_call_takes_one_log_entry_and_is_recorded_like_any_other() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let per_call = entries_per_call(&c, 30).await;
    // Express: one `Ran` entry per call (a little more if a call was slow enough to be
    // written down first). Without express each takes two: submit+assign, then complete.
    assert!(per_call < 1.5, "{per_call} log entries per express call");

    // Recorded as done, where it ran, counted once, a memo hit next time.
    let key = mozen_model::RequestKey::of("echo", &mozen_model::canonical_args(&json!(["seq", 3])));
    let got = c.cli_json(&["get", &key.to_hex(), "--json"]);
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(got["result"], json!(["seq", 3]), "{got}");
    assert!(
        got["node"].as_u64().is_some_and(|n| (1..=3).contains(&n)),
        "{got}"
    );
    assert_eq!(c.function_stats("echo")["executions"], 35);
    let again = c.cli_json(&["call", "echo", "[\"seq\",3]", "--json"]);
    assert_eq!(again["cached"], true);
    assert_eq!(c.function_stats("echo")["executions"], 35);

    // Identical calls at once run once.
    let client = c.client();
    let same = (0..20).map(|_| {
        let client = client.clone();
        async move { client.call::<_, Value>("echo", json!("same")).await }
    });
    for r in futures::future::join_all(same).await {
        assert_eq!(r.unwrap(), json!("same"));
    }
    assert_eq!(c.function_stats("echo")["executions"], 36);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_express_every_call_is_written_down_before_it_runs() {
    let c = Cluster::start(3, &["--no-express"]);
    c.ready(3).await;
    let per_call = entries_per_call(&c, 20).await;
    assert!(
        per_call >= 1.9,
        "{per_call} log entries per call without express"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_express_call_that_fails_is_retried_and_fails_with_its_chain() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    // `divide` becomes known short (`ratio` never does: a caller's run time is mostly
    // waiting), so each ratio is written down and its divide flies.
    for i in 2..8 {
        let _: f64 = client.call("ratio", json!(i)).await.unwrap();
    }
    let opts = CallOptions {
        retries: 2,
        backoff_ms: 10,
        ..Default::default()
    };
    let before = c.function_stats("divide")["failures"].as_u64().unwrap_or(0);
    match client.call_json("ratio", json!(1), &opts).await {
        Err(ClientError::Task(e)) => {
            assert!(e.message.contains("division by zero"), "{e:?}");
            let chain: Vec<&str> = e.chain.iter().map(|l| l.function.as_str()).collect();
            assert_eq!(chain, ["divide", "ratio"], "{e:?}");
        }
        other => panic!("expected division by zero, got {other:?}"),
    }
    // The child inherits the caller's policy: divide fails 1 + 2 times per run of ratio.
    let failures = c.function_stats("divide")["failures"].as_u64().unwrap() - before;
    assert!(failures >= 3, "divide failed {failures} times");
    assert_eq!(c.function_stats("ratio")["failures"], 3);
}
