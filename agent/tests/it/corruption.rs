//! Corruption checks across members: voters compare state checkpoints; one whose state differs
//! from the majority's quarantines itself, the others keep serving and name it, and a restart
//! on its data dir is refused. The divergence is simulated with the test-only fault table
//! (`corrupt-digests-from=INDEX`: the agent's checkpoint digests differ from that index on).

use crate::harness::*;
use mozen_proto as pb;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Entries between checkpoints: small, so that a few dozen calls cross several.
const EVERY: &str = "16";

#[tokio::test(flavor = "multi_thread")]
async fn a_voter_whose_state_diverges_is_quarantined_and_the_others_keep_serving() {
    let mut c = Cluster::new(
        3,
        &[
            "--checkpoint-every",
            EVERY,
            "--corruption-check-interval",
            "300ms",
        ],
    )
    .with_fault_control();
    let mut metrics = Vec::new();
    for a in &mut c.agents {
        let addr = format!("127.0.0.1:{}", free_port());
        a.extra.extend(["--metrics".to_string(), addr.clone()]);
        metrics.push((a.id, addr));
        a.start();
    }
    c.ready(3).await;
    // The leader diverges: the hardest case, as the others must also elect a new one.
    let bad = c.leader().await;
    let good: Vec<u64> = c
        .agents
        .iter()
        .map(|a| a.id)
        .filter(|i| *i != bad)
        .collect();
    let served = c.client_of(&good);
    let calls = AtomicU64::new(0);
    let call = || async {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        let v: serde_json::Value = served.call("echo", json!(["c", n])).await.unwrap();
        assert_eq!(v, json!(["c", n]));
    };
    for _ in 0..20 {
        call().await;
    }
    let from = c.by_id(bad).status().await.expect("status").applied_index + 1;
    std::fs::write(
        c.by_id(bad).fault_file(),
        format!("corrupt-digests-from={from}"),
    )
    .unwrap();

    // The log moves on (each call is about one entry) until the checks catch the divergence.
    eventually(
        Duration::from_secs(60),
        "the diverged voter quarantines itself",
        || async {
            call().await;
            c.by_id(bad)
                .status()
                .await
                .is_some_and(|s| s.server_state == "corrupt")
        },
    )
    .await;
    let s = c
        .by_id(bad)
        .status()
        .await
        .expect("status of the quarantined voter");
    assert!(
        s.quarantined.contains("log index") && s.quarantined.contains("a majority"),
        "{}",
        s.quarantined
    );
    let own = s
        .mismatches
        .iter()
        .find(|m| m.node_id == bad)
        .expect("own finding");
    assert!(own.outvoted && own.index >= from, "{own:?}");
    assert_eq!(own.others, good);

    // It serves no reads.
    let key = mozen_model::RequestKey::of("echo", &mozen_model::canonical_args(&json!(["c", 0])));
    let get = c
        .by_id(bad)
        .client()
        .rpc(|mut cl| {
            let k = key.to_hex();
            async move {
                cl.get(pb::GetRequest {
                    key: k,
                    wait: false,
                    timeout_ms: 0,
                })
                .await
            }
        })
        .await;
    let err = get
        .expect_err("a quarantined voter answers no read")
        .to_string();
    assert!(
        err.contains("MZ-CORRUPT") && err.contains("repair"),
        "{err}"
    );

    // Its Raft member is stopped: the others elect a leader and go on without it.
    eventually(
        Duration::from_secs(20),
        "a leader among the others",
        || async {
            c.status_of(&good)
                .await
                .and_then(|s| s.leader_id)
                .is_some_and(|l| good.contains(&l))
        },
    )
    .await;
    let frozen = c.by_id(bad).status().await.expect("status").applied_index;
    for _ in 0..20 {
        call().await;
    }
    let applied = c.status_of(&good).await.expect("status").applied_index;
    assert!(applied > frozen + 10, "{applied} vs {frozen}");
    assert_eq!(
        c.by_id(bad).status().await.expect("status").applied_index,
        frozen,
        "the quarantined voter applies nothing more"
    );

    // Every healthy member names it: status (and `mozen status` fails), events, metrics.
    for id in &good {
        eventually(
            Duration::from_secs(10),
            "the healthy voter's checks name the corrupt one",
            || async {
                c.by_id(*id).status().await.is_some_and(|s| {
                    s.mismatches
                        .iter()
                        .any(|m| m.node_id == bad && m.outvoted && m.others == good)
                })
            },
        )
        .await;
        let out = c.by_id(*id).cli(&["status"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "mozen status on {id}: {err}");
        assert!(
            err.contains("MZ-CORRUPT") && err.contains(&format!("voter {bad}'s state")),
            "{err}"
        );
    }
    let out = c.by_id(bad).cli(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("node {bad} (the agent answering) is quarantined")));
    eventually(Duration::from_secs(10), "a corruption event", || async {
        let events = served.events(100).await.unwrap_or_default();
        events.iter().any(|e| {
            e.kind == "corruption" && e.node == Some(bad) && e.message.contains("MZ-CORRUPT")
        })
    })
    .await;
    for (id, addr) in &metrics {
        let text = scrape(addr);
        let named = text.contains(&format!(
            "mozen_state_mismatch{{node=\"{bad}\",kind=\"corrupt\"}} 1"
        ));
        assert!(named, "metrics of {id}:\n{text}");
        let quarantined = text.lines().any(|l| l == "mozen_quarantined 1");
        assert_eq!(quarantined, *id == bad, "metrics of {id}:\n{text}");
    }

    // A restart on the quarantined data dir is refused with exit code 3.
    c.agent(bad).terminate();
    let marker = std::fs::read_to_string(c.by_id(bad).dir.join("quarantine")).unwrap();
    assert!(marker.contains("log index"), "{marker}");
    let (code, err) = c.agent(bad).run_to_exit(Duration::from_secs(20));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("MZ-QUARANTINED") && err.contains("mozen-agent repair"),
        "{err}"
    );
    call().await;
}
