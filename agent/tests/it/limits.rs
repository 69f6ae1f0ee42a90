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
        .events(pb::EventsRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner();
    assert!(!events.events.is_empty());
    let queue = conn.queue(pb::QueueRequest { limit: 10 }).await.unwrap();
    assert_eq!(queue.into_inner().head.len(), 0);
    let mut watch = open_watch(&mut conn).await;
    assert!(watch.message().await.unwrap().is_some());
}
