//! Limits of the public API on a real agent: argument and result sizes, the queue bound with
//! RESOURCE_EXHAUSTED backpressure, and open calls per client connection.

use crate::harness::*;
use mozen_agent::client::ClientError;
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use serde_json::json;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// A raw gRPC client on one fresh connection to the single agent of `c`.
async fn connection(c: &Cluster) -> MozenClient<Channel> {
    MozenClient::connect(format!("http://{}", c.agents[0].addr))
        .await
        .unwrap()
}

/// A `Watch` stream on `conn`, open until dropped (an RPC that stays open).
pub(crate) async fn open_watch(
    conn: &mut MozenClient<Channel>,
) -> tonic::Streaming<pb::ClusterUpdate> {
    conn.watch(pb::WatchRequest { requests: 1 })
        .await
        .unwrap()
        .into_inner()
}

fn call(function: &str, args: serde_json::Value) -> pb::CallRequest {
    pb::CallRequest {
        function: function.into(),
        args_json: args.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_arguments_and_results_are_refused_naming_the_limit() {
    let c = Cluster::start(
        1,
        &[
            "--voters",
            "1",
            "--max-args",
            "4KiB",
            "--max-result",
            "1KiB",
        ],
    );
    c.ready(1).await;
    let client = c.client();
    let small: String = "a".repeat(500);
    let got: String = client.call("echo", &small).await.unwrap();
    assert_eq!(got, small);

    let big = "b".repeat(5000);
    match client.call::<_, String>("echo", &big).await {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, "MZ-TOO-LARGE");
            assert!(
                message.contains("5002 bytes") && message.contains("--max-args"),
                "{message}"
            );
        }
        other => panic!("expected MZ-TOO-LARGE, got {other:?}"),
    }
    // Arguments within bounds, a result past --max-result: the request fails at once.
    let medium = "c".repeat(2000);
    match client.call::<_, String>("echo", &medium).await {
        Err(ClientError::Task(e)) => {
            assert_eq!(e.code, "MZ-RESULT-TOO-LARGE");
            assert!(
                e.message.contains("2002 bytes") && e.message.contains("--max-result"),
                "{e}"
            );
        }
        other => panic!("expected MZ-RESULT-TOO-LARGE, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_resource_exhausted_until_it_drains() {
    let c = Cluster::start(
        1,
        &[
            "--voters",
            "1",
            "--slots",
            "1",
            "--max-queue",
            "2",
            "--max-queue-per-client",
            "2",
        ],
    );
    c.ready(1).await;
    let mut conn = connection(&c).await;
    // One spin runs on the only slot and one waits: at most two are outstanding (queued or
    // running), so one of the first four submissions is refused.
    let mut accepted = Vec::new();
    let refusal = loop {
        assert!(accepted.len() < 4, "the queue took {accepted:?}");
        let req = call("spin", json!(600_000 + accepted.len()));
        match conn.submit(req).await {
            Ok(r) => accepted.push(r.into_inner().key),
            Err(s) => break s,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().starts_with("MZ-QUEUE-FULL"),
        "{}",
        refusal.message()
    );
    assert!(
        refusal.message().contains("--max-queue 2"),
        "{}",
        refusal.message()
    );
    let info = tonic_types::StatusExt::get_details_error_info(&refusal).expect("an ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("MZ-QUEUE-FULL", "mozen")
    );
    assert!(tonic_types::StatusExt::get_details_retry_info(&refusal).is_some());
    // Joining a request already known is not new work: still answered.
    let again = conn
        .submit(call("spin", json!(600_001)))
        .await
        .expect("joining a queued request");
    assert_ne!(again.into_inner().disposition, "queued");
    // A synchronous call is refused the same way.
    let s = conn
        .call(call("echo", json!("new work")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    // Cancelling the queued requests makes room again.
    for key in &accepted {
        conn.cancel(pb::CancelRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let reply = conn
        .call(call("echo", json!("after")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.result_json.as_deref(), Some("\"after\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_holds_at_most_max_client_streams_open_calls() {
    let c = Cluster::start(1, &["--voters", "1", "--max-client-streams", "2"]);
    c.ready(1).await;
    let mut conn = connection(&c).await;
    let w1 = open_watch(&mut conn).await;
    let w2 = open_watch(&mut conn).await;
    let s = conn.call(call("echo", json!(1))).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().starts_with("MZ-TOO-MANY-STREAMS"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("--max-client-streams 2"),
        "{}",
        s.message()
    );
    // Calls that end at once are not counted, and another connection has its own budget.
    conn.status(pb::StatusRequest {}).await.unwrap();
    let mut other = connection(&c).await;
    other.call(call("echo", json!(2))).await.unwrap();
    // Closing one stream frees its place (the agent notices at its next update).
    drop(w1);
    eventually(Duration::from_secs(10), "a freed stream", || {
        let mut conn = conn.clone();
        async move { conn.call(call("echo", json!(3))).await.is_ok() }
    })
    .await;
    drop(w2);
}

/// A function failing with a 1 MiB message, and a call whose 1 MiB argument has the wrong
/// shape: what readers get back quotes each only up to a bound, with its size and hash, and
/// every read of the cluster (the request, its events, the queue) still answers.
#[tokio::test(flavor = "multi_thread")]
async fn large_user_data_in_errors_is_quoted_only_up_to_a_bound() {
    let c = Cluster::start(1, &["--voters", "1"]);
    c.ready(1).await;
    let client = c.client();
    let big = "m".repeat(1 << 20);
    let failed = client.call::<_, String>("fail", &big).await;
    let e = match failed {
        Err(ClientError::Task(e)) => e,
        other => panic!("expected the function's failure, got {other:?}"),
    };
    assert!(e.message.len() < 4_200, "{} bytes", e.message.len());
    assert!(
        e.message.contains("... (1048576 bytes, blake3 "),
        "{}",
        &e.message[4000..]
    );
    assert!(
        e.chain.iter().all(|l| l.args.len() < 1_100),
        "{:?}",
        e.chain.len()
    );

    let shapeless = "s".repeat(1 << 20);
    match client.call::<_, f64>("divide", &shapeless).await {
        Err(ClientError::Task(e)) => {
            assert_eq!(e.code, "MZ-BAD-ARGUMENTS");
            // The argument and serde's own quote of it, a kibibyte each at most.
            assert!(e.message.len() < 2_400, "{} bytes", e.message.len());
            assert!(e.message.contains("bytes, blake3 "), "{}", e.message);
        }
        other => panic!("expected bad arguments, got {other:?}"),
    }
    // Readers of the cluster are not poisoned by either.
    let mut conn = connection(&c).await;
    let events = conn
        .events(pb::EventsRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!events.events.is_empty());
    let queue = conn
        .queue(pb::QueueRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queue.into_inner().head.len(), 0);
    let mut watch = open_watch(&mut conn).await;
    assert!(watch.message().await.unwrap().is_some());
}

/// Four calls at once whose arguments and results sit at the bounds (`--max-args` and
/// `--max-result` of 4 MiB), beside a stream of small calls, on a 3-voter cluster: every call
/// succeeds and the leader keeps its term. Before the Raft transport's limits were derived
/// from the API's, such entries timed out on their way to the followers, again and again,
/// and the followers stood for election.
#[tokio::test(flavor = "multi_thread")]
async fn calls_with_arguments_at_the_bound_replicate_without_an_election() {
    let c = Cluster::start(3, &["--max-args", "4MiB", "--max-result", "4MiB"]);
    c.ready(3).await;
    let before = c.status().await.expect("status");
    let client = c.client();
    let small = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..200u64 {
                if let Err(e) = client.call::<_, u64>("echo", &i).await {
                    failures.push(e.to_string());
                }
            }
            failures
        })
    };
    let mut large = Vec::new();
    for i in 0..4u8 {
        let client = client.clone();
        large.push(tokio::spawn(async move {
            // A JSON string of exactly 4 MiB, quotes included.
            let value = format!("{i}{}", "x".repeat((4 << 20) - 3));
            let got: String = client.call("echo", &value).await.expect("a large call");
            assert_eq!(got, value);
        }));
    }
    for l in large {
        l.await.unwrap();
    }
    let failures = small.await.unwrap();
    assert!(failures.is_empty(), "small calls failed: {failures:?}");
    let after = c.status().await.expect("status");
    assert_eq!(
        (after.term, after.leader_id),
        (before.term, before.leader_id),
        "the leader changed while large values replicated"
    );
}

/// Readers of a queue of 200 requests with 60 KiB arguments each, against a 1 MiB message
/// limit: every list comes in pages within the bound, arguments are quoted (cut, with their
/// size), paging visits each queued request once and in order, events page backwards without
/// gaps, and the console's feed stays within the bound.
#[tokio::test(flavor = "multi_thread")]
async fn every_read_is_bounded_in_bytes_and_pages_through_everything() {
    use prost::Message;
    let c = Cluster::start(
        1,
        &[
            "--voters",
            "1",
            "--max-message",
            "1MiB",
            "--max-args",
            "512KiB",
        ],
    );
    c.ready(1).await;
    let out = c.cli(&["node", "drain", "1"]);
    assert!(out.status.success(), "{out:?}");
    let mut conn = connection(&c).await;
    let mut keys = Vec::new();
    for i in 0..200u32 {
        let args = json!([i, "p".repeat(60 << 10)]);
        let reply = conn
            .submit(call("echo", args))
            .await
            .expect("submitted")
            .into_inner();
        keys.push(reply.key);
    }
    // The queue, page by page.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = conn
            .queue(pb::QueueRequest {
                limit: 10_000,
                page_token: token.clone(),
            })
            .await
            .expect("queue page")
            .into_inner();
        assert!(
            reply.encoded_len() <= 1 << 20,
            "{} bytes",
            reply.encoded_len()
        );
        pages += 1;
        for r in &reply.head {
            assert!(r.args_cut && r.args_bytes > 60 << 10, "{}", r.args_bytes);
            assert!(r.args_json.len() < 4_200, "{}", r.args_json.len());
            assert!(r.args_json.contains("bytes, blake3 "));
        }
        seen.extend(reply.head.into_iter().map(|r| r.key));
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert!(
        pages >= 2,
        "one page held it all: the byte bound did not apply"
    );
    assert_eq!(
        seen, keys,
        "paging must visit each queued request once, in order"
    );
    let bad = conn
        .queue(pb::QueueRequest {
            limit: 1,
            page_token: "nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Events: pages of 1 walk back through what one read of all returns.
    let all = conn
        .events(pb::EventsRequest {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.next_page_token.is_empty());
    assert!(!all.events.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let reply = conn
            .events(pb::EventsRequest {
                limit: 1,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        paged.splice(0..0, reply.events);
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    assert_eq!(paged, all.events);

    // The console's feed asks for more requests than fit: bounded, and says so.
    let mut watch = conn
        .watch(pb::WatchRequest { requests: 100_000 })
        .await
        .unwrap()
        .into_inner();
    let update = watch.message().await.unwrap().expect("an update");
    assert!(update.encoded_len() <= 1 << 20, "{}", update.encoded_len());
    assert!(update.truncated);
    assert!(!update.requests.is_empty() && update.requests.len() < 200);
    drop(watch);

    // Nothing was lost: undrained, every request runs to its value.
    let out = c.cli(&["node", "undrain", "1"]);
    assert!(out.status.success(), "{out:?}");
    for key in &keys {
        let reply = conn
            .get(pb::GetRequest {
                key: key.clone(),
                wait: true,
                timeout_ms: 60_000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.state, "done", "{key}");
    }
}
