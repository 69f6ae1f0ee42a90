//! Admission and fair share on real agents: per-client and cluster-wide bounds on outstanding
//! requests and bytes (RESOURCE_EXHAUSTED with MZ-QUEUE-FULL and a retry hint), another
//! client's work run before a flooder's, and bulk cancel by function and by client. Leader
//! and term stay the same throughout.

use crate::harness::*;
use mozen_client::{AuthChannel, ClientTransport};
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use serde_json::json;
use std::time::Duration;
use tonic::Code;

/// A raw client of the first agent of `c` that names itself `id` (`mozen-client-id`).
async fn client_as(c: &Cluster, id: &str) -> MozenClient<AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.agents[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let creds = ClientTransport::default()
        .with_client_id(id)
        .unwrap()
        .credentials();
    MozenClient::with_interceptor(channel, creds)
}

fn call(function: &str, args: serde_json::Value) -> pb::CallRequest {
    pb::CallRequest {
        function: function.into(),
        args_json: args.to_string(),
        ..Default::default()
    }
}

async fn submit(
    conn: &mut MozenClient<AuthChannel>,
    function: &str,
    args: serde_json::Value,
) -> String {
    conn.submit(call(function, args))
        .await
        .unwrap_or_else(|e| panic!("submit {function}: {e:?}"))
        .into_inner()
        .key
}

/// The state of request `key` as the agent answers it now.
async fn state_of(conn: &mut MozenClient<AuthChannel>, key: &str) -> String {
    conn.get(pb::GetRequest {
        key: key.into(),
        wait: false,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().state)
    .unwrap_or_else(|e| format!("error: {}", e.message()))
}

/// Asserts a MZ-QUEUE-FULL refusal whose message names `bound`.
fn assert_refused(s: &tonic::Status, bound: &str) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().starts_with("MZ-QUEUE-FULL"), "{}", s.message());
    assert!(s.message().contains(bound), "{}", s.message());
    let info = tonic_types::StatusExt::get_details_error_info(s).expect("an ErrorInfo");
    assert_eq!(info.reason, "MZ-QUEUE-FULL");
    let retry = tonic_types::StatusExt::get_details_retry_info(s).expect("a RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");
}

/// Leader and term now.
async fn leader_term(c: &Cluster) -> (Option<u64>, u64) {
    let s = c.status().await.expect("status");
    (s.leader_id, s.term)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooder_is_bounded_and_another_client_runs_before_its_queue() {
    let c = Cluster::start(
        1,
        &[
            "--voters",
            "1",
            "--slots",
            "2",
            "--max-queue",
            "100",
            "--max-queue-per-client",
            "5",
        ],
    );
    c.ready(1).await;
    let before = leader_term(&c).await;
    let mut flood = client_as(&c, "flood").await;
    let mut other = client_as(&c, "other").await;
    // `spin` holds its slot: two run, three wait.
    let mut spins = Vec::new();
    for i in 0..5 {
        spins.push(submit(&mut flood, "spin", json!(600_000 + i)).await);
    }
    let refusal = flood
        .submit(call("spin", json!(600_100)))
        .await
        .unwrap_err();
    assert_refused(&refusal, "--max-queue-per-client 5");
    assert!(
        refusal.message().contains("client 'flood'"),
        "{}",
        refusal.message()
    );
    // A batch is refused whole, even though one of its calls would join known work.
    let batch = pb::CallBatchRequest {
        calls: vec![call("spin", json!(600_000)), call("spin", json!(600_101))],
    };
    assert_refused(
        &flood.call_batch(batch).await.unwrap_err(),
        "client 'flood'",
    );
    // Both slots hold flood's spins; the other client's short spin waits in the queue behind
    // flood's three.
    eventually(Duration::from_secs(20), "two spins running", || {
        let mut f = flood.clone();
        let spins = spins.clone();
        async move {
            let mut running = 0;
            for k in &spins {
                running += (state_of(&mut f, k).await == "running") as usize;
            }
            running == 2
        }
    })
    .await;
    let mine = submit(&mut other, "spin", json!(50)).await;
    assert_eq!(state_of(&mut other, &mine).await, "queued");
    // One slot frees: first in line by submission is flood's, but flood has a request
    // running and other none, so other's goes first. (FIFO would start a 600 s spin there,
    // and other's would not run within the deadline.)
    let running: Vec<String> = {
        let mut out = Vec::new();
        for k in &spins {
            if state_of(&mut flood, k).await == "running" {
                out.push(k.clone());
            }
        }
        out
    };
    flood
        .cancel(pb::CancelRequest {
            key: running[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the other client's call done",
        || {
            let mut o = other.clone();
            let mine = mine.clone();
            async move { state_of(&mut o, &mine).await == "done" }
        },
    )
    .await;
    // Bulk cancel of the flooder's work leaves nothing outstanding.
    let r = flood
        .cancel(pb::CancelRequest {
            client: "flood".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 4, "{r:?}");
    for k in &spins {
        assert_eq!(state_of(&mut flood, k).await, "cancelled", "{k}");
    }
    assert_eq!(leader_term(&c).await, before, "no election");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_wide_bounds_hold_for_requests_and_bytes() {
    let c = Cluster::start(
        1,
        &[
            "--voters",
            "1",
            "--slots",
            "1",
            "--max-queue",
            "6",
            "--max-queue-per-client",
            "4",
            "--max-queued-bytes",
            "2KiB",
            "--max-queued-bytes-per-client",
            "700",
        ],
    );
    c.ready(1).await;
    let before = leader_term(&c).await;
    let mut a = client_as(&c, "a").await;
    let mut b = client_as(&c, "b").await;
    let mut d = client_as(&c, "d").await;
    // a's first spin holds the only slot; everything else waits.
    for i in 0..4 {
        submit(&mut a, "spin", json!(600_000 + i)).await;
    }
    submit(&mut b, "spin", json!(600_010)).await;
    // Six outstanding is the bound: d's first fits, its second does not, whoever asks.
    let text = |n: usize| json!("x".repeat(n));
    submit(&mut d, "echo", text(300)).await;
    let s = d.submit(call("echo", text(301))).await.unwrap_err();
    assert_refused(&s, "--max-queue 6");
    assert!(s.message().contains("client 'd'"), "{}", s.message());
    let s = a.submit(call("spin", json!(600_004))).await.unwrap_err();
    assert_refused(&s, "--max-queue 6");
    // Room again (b's spin takes the slot, d's echo still waits): the bytes bounds. d has
    // 302 argument bytes outstanding; 302 + 402 > 700 for one client.
    a.cancel(pb::CancelRequest {
        client: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = d.submit(call("echo", text(400))).await.unwrap_err();
    assert_refused(&s, "--max-queued-bytes-per-client 700");
    submit(&mut d, "echo", text(350)).await;
    // 2 KiB in all: 6 + 302 + 352 + 682 + 682 = 2024 fit, 32 more do not.
    submit(&mut b, "echo", text(680)).await;
    submit(&mut a, "echo", json!("y".repeat(680))).await;
    let s = b.submit(call("echo", text(30))).await.unwrap_err();
    assert_refused(&s, "--max-queued-bytes 2048");
    assert_eq!(leader_term(&c).await, before, "no election");
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_cancel_by_function_and_client_cancels_exactly_the_matches() {
    let c = Cluster::start(1, &["--voters", "1", "--slots", "1"]);
    c.ready(1).await;
    let before = leader_term(&c).await;
    let mut a = client_as(&c, "a").await;
    let mut b = client_as(&c, "b").await;
    let a_spins: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(submit(&mut a, "spin", json!(600_000 + i)).await);
        }
        v
    };
    // Many of a's requests of another function, queued behind the spins.
    let mut a_sleeps = Vec::new();
    for i in 0..300 {
        a_sleeps.push(submit(&mut a, "sleep", json!(600_000 + i)).await);
    }
    let b_spin = submit(&mut b, "spin", json!(600_500)).await;
    let b_sleep = submit(&mut b, "sleep", json!(600_500)).await;

    // By function and client: a's sleeps only. (Without scoped tokens every caller is an
    // operator, whose selectors match every owner unless a client is named.)
    let r = a
        .cancel(pb::CancelRequest {
            function: "sleep".into(),
            client: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 300);
    assert_eq!(r.cancelled.len(), 300);
    for k in a_sleeps.iter().step_by(37) {
        assert_eq!(state_of(&mut a, k).await, "cancelled");
    }
    for k in a_spins.iter().chain([&b_spin, &b_sleep]) {
        let s = state_of(&mut a, k).await;
        assert!(s == "queued" || s == "running", "{k}: {s}");
    }
    // By client.
    let r = a
        .cancel(pb::CancelRequest {
            client: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 3);
    for k in &a_spins {
        assert_eq!(state_of(&mut a, k).await, "cancelled");
    }
    assert_eq!(state_of(&mut b, &b_sleep).await, "queued");
    // By function with the CLI: b's sleep; then b's spin by client.
    let out = c.cli(&["cancel", "--function", "sleep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cancelled 1 request(s)"), "{text}");
    assert_eq!(state_of(&mut b, &b_sleep).await, "cancelled");
    let out = c.cli(&["cancel", "--client", "b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&mut b, &b_spin).await, "cancelled");
    // Nothing is queued or running.
    let empty = b
        .cancel(pb::CancelRequest {
            function: "spin".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.count, 0, "nothing left to cancel");
    assert_eq!(leader_term(&c).await, before, "no election");
}
