//! Bad input sent to a real agent over gRPC: garbage arguments and keys on the public API,
//! garbage payloads on the Raft service. Each gets a clear refusal naming what is wrong, and
//! the agent keeps serving. Seeded, so a failure reproduces.

use crate::harness::*;
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use mozen_proto::raft_client::RaftClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use tonic::Code;

/// A JSON-looking string: fragments of valid JSON thrown together.
fn jsonish(rng: &mut ChaCha8Rng) -> String {
    const BITS: [&str; 16] = [
        "[", "]", "{", "}", ",", ":", "\"a\"", "1", "-", "e9", "null", "tru", "\\u12", "\"", " ",
        "1.5",
    ];
    (0..rng.random_range(0..24))
        .map(|_| BITS[rng.random_range(0..BITS.len())])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_over_grpc_is_refused_clearly_and_the_agent_keeps_serving() {
    let c = Cluster::start(1, &["--voters", "1"]);
    c.ready(1).await;
    let url = format!("http://{}", c.agents[0].addr);
    let mut api = MozenClient::connect(url.clone()).await.unwrap();
    let mut raft = RaftClient::connect(url).await.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);

    let mut cases: Vec<String> = (0..150).map(|_| jsonish(&mut rng)).collect();
    cases.push("[".repeat(100_000)); // deeper than any parser should follow
    cases.push("1".repeat(10_000)); // a number no type holds
    cases.push("{\"a\":1,\"a\":2}".into()); // a repeated key
    for args in &cases {
        // Empty arguments mean null.
        let valid =
            args.trim().is_empty() || serde_json::from_str::<serde_json::Value>(args).is_ok();
        let req = pb::CallRequest {
            function: "no-such-function".into(),
            args_json: args.clone(),
            timeout_ms: 5_000,
            ..Default::default()
        };
        match api.call(req).await {
            // Valid JSON is a request like any other; it fails as an unknown function.
            // The reply carries the code and the state both as strings and as enums.
            Ok(r) if valid => {
                let r = r.into_inner();
                assert_eq!(
                    (r.state.as_str(), r.state_enum()),
                    ("failed", pb::RequestState::Failed)
                );
                let e = r.error.unwrap();
                assert_eq!(e.code, "MZ-UNKNOWN-FUNCTION");
                assert_eq!(e.code_enum(), pb::ErrorCode::UnknownFunction);
            }
            Ok(r) => panic!("{args:?} accepted: {r:?}"),
            Err(s) => {
                assert!(!valid, "{args:?}: {s:?}");
                assert_eq!(s.code(), Code::InvalidArgument, "{args:?}");
                assert!(
                    s.message().starts_with(
                        "MZ-BAD-ARGUMENTS: arguments of no-such-function are not one JSON value"
                    ),
                    "{}",
                    s.message()
                );
            }
        }
    }
    let s = api
        .call(pb::CallRequest {
            function: "f".repeat(100_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("is 100000 bytes; at most 256"),
        "{}",
        s.message()
    );
    for key in [
        "",
        "zz",
        &"f".repeat(63),
        &"g".repeat(64),
        &"a".repeat(100_000),
    ] {
        let s = api
            .get(pb::GetRequest {
                key: key.to_string(),
                wait: true,
                timeout_ms: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "key {key:.20}: {s:?}");
        assert!(
            s.message()
                .starts_with("MZ-BAD-ARGUMENTS: key: request key '"),
            "{}",
            s.message()
        );
        assert!(s.message().len() < 300, "the refusal quotes the whole key");
    }
    for i in 0..150 {
        let len = rng.random_range(0..300);
        let payload = pb::RaftPayload {
            version: if i % 10 == 0 { rng.random() } else { 1 },
            data: (0..len).map(|_| rng.random()).collect(),
        };
        let rs = [
            raft.append_entries(payload.clone()).await.err(),
            raft.vote(payload.clone()).await.err(),
            raft.install_snapshot(payload).await.err(),
        ];
        for s in rs.into_iter().flatten() {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains(": payload "), "{}", s.message());
        }
    }
    // Still the leader of its cluster, still serving calls.
    eventually(
        Duration::from_secs(20),
        "agent serves after bad input",
        || async { c.client().call::<_, u64>("fib", 20).await.ok() == Some(6765) },
    )
    .await;
}
