//! Express calls: short calls run before they are written down, then recorded in one fact.

use crate::harness::*;
use mozen_agent::client::{CallOptions, ClientError};
use serde_json::{Value, json};
use std::time::Duration;

fn applied(c: &Cluster) -> u64 {
    c.cli_json(&["status", "--json"])["applied_index"]
        .as_u64()
        .expect("applied index")
}

/// Runs `echo` a few times, so that the leader knows it is short.
async fn warm_echo(client: &mozen_agent::client::Client) {
    for i in 0..5 {
        let _: Value = client.call("echo", json!(["warm", i])).await.unwrap();
    }
}

/// An agent other than `leader` (of three).
fn follower_of(leader: u64) -> u64 {
    (1..=3).find(|id| *id != leader).unwrap()
}

/// Log entries taken by `n` sequential distinct `echo` calls, once `echo` is known short.
async fn entries_per_call(c: &Cluster, n: u64) -> f64 {
    let client = c.client();
    warm_echo(&client).await;
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

/// `get` of `key` answered by agent `id` alone: its state there, None when it does not know it.
async fn state_at(c: &Cluster, id: u64, key: &str) -> Option<String> {
    let get = mozen_proto::v1::GetRequest {
        key: key.to_string(),
        wait: false,
        timeout_ms: 0,
    };
    let client = c.client_of(&[id]);
    client
        .rpc(|mut rpc| {
            let g = get.clone();
            async move { rpc.get(g).await }
        })
        .await
        .ok()
        .map(|r| r.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_written_down_express_call_whose_leader_dies_counts_its_first_run() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let leader = c.leader().await;
    let follower = follower_of(leader);
    // Nothing runs on the leader, so the long call runs on a node that survives it.
    let out = c.cli(&["node", "drain", &leader.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = c.client();
    for _ in 0..5 {
        let _: Value = client.call("sleep", json!(1)).await.unwrap();
    }
    let runs = c.function_stats("sleep")["executions"].as_u64().unwrap();
    let key =
        mozen_model::RequestKey::of("sleep", &mozen_model::canonical_args(&json!(1500))).to_hex();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Value>("sleep", json!(1500)).await }
    });
    // It flies, then runs long enough to be written down: the followers' logs know it.
    eventually(
        Duration::from_secs(10),
        "the long call written down",
        || async { state_at(&c, follower, &key).await.as_deref() == Some("running") },
    )
    .await;
    c.agent(leader).kill();
    assert_eq!(call.await.unwrap().unwrap(), Value::Null);
    // The run that started under the dead leader is the one that counted: not run again.
    let got = c.cli_json(&["get", &key, "--json"]);
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(c.function_stats("sleep")["executions"], runs + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_with_no_place_free_wait_in_leader_memory_then_fly() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    warm_echo(&client).await;
    let leader = c.leader().await;
    let follower = follower_of(leader);
    for id in ["1", "2", "3"] {
        let out = c.cli(&["node", "drain", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = 200u64;
    let calls = tokio::spawn({
        let client = client.clone();
        async move {
            let calls = (0..n).map(|i| {
                let client = client.clone();
                async move { client.call::<_, Value>("echo", json!(["held", i])).await }
            });
            futures::future::join_all(calls).await
        }
    });
    // No place anywhere: every call is held by the leader, none is in the log.
    eventually(Duration::from_secs(20), "every call held", || async {
        c.cli_json(&["queue", "--json"])["queued"] == n
    })
    .await;
    let key =
        mozen_model::RequestKey::of("echo", &mozen_model::canonical_args(&json!(["held", 7])))
            .to_hex();
    assert_eq!(state_at(&c, leader, &key).await.as_deref(), Some("queued"));
    assert_eq!(state_at(&c, follower, &key).await, None);
    for id in ["1", "2", "3"] {
        let out = c.cli(&["node", "undrain", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (i, r) in calls.await.unwrap().into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!(["held", i]));
    }
    assert_eq!(c.function_stats("echo")["executions"], n + 5);
    let got = c.cli_json(&["get", &key, "--json"]);
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(c.cli_json(&["queue", "--json"])["queued"], 0);
}
