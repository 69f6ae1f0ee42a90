//! Membership: workers joining, promote, demote, remove, drain.

use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn fourth_agent_joins_as_worker_then_promote_demote_remove() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let i = c.add(4, &[]);
    c.agents[i].start();
    c.ready(4).await;
    let n4 = c.nodes().await.into_iter().find(|n| n.id == 4).unwrap();
    assert_eq!(n4.role, "worker");
    assert_eq!(c.status().await.unwrap().voters.len(), 3);

    let out = c.cli(&["node", "promote", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(10), "4 is a voter", || async {
        c.status()
            .await
            .is_some_and(|s| s.voters.iter().any(|m| m.id == 4))
            && c.nodes()
                .await
                .iter()
                .any(|n| n.id == 4 && n.role == "voter")
    })
    .await;

    let out = c.cli(&["node", "demote", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(10), "4 is a worker", || async {
        c.status()
            .await
            .is_some_and(|s| s.voters.len() == 3 && !s.voters.iter().any(|m| m.id == 4))
            && c.nodes()
                .await
                .iter()
                .any(|n| n.id == 4 && n.role == "worker")
    })
    .await;

    let out = c.cli(&["node", "remove", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(10), "4 is gone", || async {
        !c.nodes().await.iter().any(|n| n.id == 4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_voter_that_breaks_quorum_is_refused() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let leader = c.leader().await;
    let others: Vec<u64> = c
        .agents
        .iter()
        .map(|a| a.id)
        .filter(|i| *i != leader)
        .collect();
    c.agent(others[0]).kill();
    eventually(Duration::from_secs(10), "node down", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == others[0] && n.state == "down")
    })
    .await;
    // Removing the other live voter would leave 1 live of 2 voters: no majority.
    let out = c.cli(&["node", "remove", &others[1].to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MZ-QUORUM"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_keeps_running_requests_and_ends_drained() {
    let c = Cluster::start(2, &["--slots", "2", "--voters", "1"]);
    c.ready(2).await;
    let client = c.client();
    // Occupy every slot with long sleeps, then drain node 2 while they run.
    let handles: Vec<_> = (0..4)
        .map(|i| client.submit::<_, serde_json::Value>("spin", 1500 + i))
        .collect();
    eventually(Duration::from_secs(10), "node 2 busy", || async {
        c.nodes().await.iter().any(|n| n.id == 2 && n.running > 0)
    })
    .await;
    let out = c.cli(&["node", "drain", "2"]);
    assert!(out.status.success());
    let nodes = c.nodes().await;
    let n2 = nodes.iter().find(|n| n.id == 2).unwrap();
    assert_eq!(n2.state, "draining");
    assert!(n2.running > 0);
    for h in handles {
        h.await.unwrap();
    }
    eventually(Duration::from_secs(10), "node 2 drained", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == 2 && n.state == "drained")
    })
    .await;
    // Nothing new lands on a drained node.
    let _: Vec<_> = client
        .map::<_, serde_json::Value, _>(
            "noop",
            (0..20).map(|i| serde_json::json!(["after-drain", i])),
            20,
        )
        .await;
    let nodes = c.nodes().await;
    assert_eq!(nodes.iter().find(|n| n.id == 2).unwrap().running, 0);
    let tree = c.cli_json(&[
        "get",
        &mozen_model::RequestKey::of(
            "noop",
            &mozen_model::canonical_args(&serde_json::json!(["after-drain", 3])),
        )
        .to_hex(),
        "--json",
    ]);
    assert_eq!(tree["node"], 1);
    let out = c.cli(&["node", "undrain", "2"]);
    assert!(out.status.success());
    eventually(Duration::from_secs(5), "node 2 active", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == 2 && n.state == "active")
    })
    .await;
}
