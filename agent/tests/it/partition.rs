//! Network partitions through the agents' test-only fault control (`--fault-file`): links are
//! cut inside the agents' transport, in both directions (see docs/reliability.md for why not
//! network namespaces).

use crate::harness::*;
use mozen_agent::client::{CallOptions, Client};
use mozen_model::{RequestKey, canonical_args};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::time::Duration;

/// Calls `echo` on each of `args` and checks each answer.
async fn echo_all(client: &Client, args: &[Value]) {
    for a in args {
        let got: Value = client.call("echo", a.clone()).await.unwrap();
        assert_eq!(&got, a);
    }
}

/// Every `echo` in `args` is memoized as done with its own value, as seen by whichever agent
/// `client` reaches (a follower may apply the last completions a moment after the leader, and
/// until then does not know the request at all).
async fn assert_memoized(client: &Client, args: &[Value]) {
    for a in args {
        let key = RequestKey::of("echo", &canonical_args(a)).to_hex();
        let get = pb::GetRequest {
            key: key.clone(),
            wait: false,
            timeout_ms: 0,
        };
        let get_once = || async {
            client
                .rpc(|mut c| {
                    let g = get.clone();
                    async move { c.get(g).await }
                })
                .await
        };
        eventually(
            Duration::from_secs(10),
            &format!("echo {a} done"),
            || async {
                match get_once().await {
                    Ok(r) => r.state == "done",
                    Err(e) if e.to_string().contains("MZ-UNKNOWN-REQUEST") => false,
                    Err(e) => panic!("get {a} ({key}): {e}"),
                }
            },
        )
        .await;
        let last = get_once()
            .await
            .unwrap_or_else(|e| panic!("get {a} ({key}): {e}"));
        let v: Value = serde_json::from_str(last.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(&v, a, "memoized result of echo {a}");
    }
}

/// A call through the agents `ids` alone (a cut-off minority) is never acknowledged.
async fn acknowledges_nothing(c: &Cluster, ids: &[u64]) {
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let addrs = ids.iter().map(|i| c.by_id(*i).addr.clone());
    let client =
        Client::with_options(addrs, pb::DEFAULT_MAX_MESSAGE_BYTES, Duration::from_secs(2)).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        client.call_json("echo", json!(["minority", ids]), &opts),
    )
    .await
    .expect("a call to the cut-off side returns");
    assert!(r.is_err(), "the cut-off side acknowledged {r:?}");
}

/// Waits until agent `from` names a leader among `side`.
async fn leader_among(c: &Cluster, from: u64, side: &[u64]) {
    eventually(
        Duration::from_secs(20),
        "a leader on the majority side",
        || async {
            c.by_id(from)
                .status()
                .await
                .and_then(|s| s.leader_id)
                .is_some_and(|l| side.contains(&l))
        },
    )
    .await;
}

/// Waits until `old`, cut off from its quorum, no longer claims leadership.
async fn steps_down(c: &Cluster, old: u64) {
    eventually(Duration::from_secs(15), "old leader steps down", || async {
        c.by_id(old)
            .status()
            .await
            .is_some_and(|s| s.leader_id != Some(old) && s.server_state == "stepped-down")
    })
    .await;
}

fn batch(tag: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| json!([tag, i])).collect()
}

/// Waits until agent `id` follows a leader outside `cut` (the side that was cut off) and has
/// applied exactly as much as that leader.
async fn caught_up(c: &Cluster, id: u64, cut: &[u64]) {
    eventually(
        Duration::from_secs(30),
        "cut-off agent caught up",
        || async {
            let Some(me) = c.by_id(id).status().await else {
                return false;
            };
            let Some(leader) = me.leader_id.filter(|l| !cut.contains(l)) else {
                return false;
            };
            let Some(l) = c.by_id(leader).status().await else {
                return false;
            };
            me.server_state == "follower"
                && l.leader_id == Some(leader)
                && me.applied_index == l.applied_index
                && me.term == l.term
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_leader_steps_down_and_rejoins_without_losing_commits() {
    let mut c = Cluster::new(3, &[]).with_fault_control();
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    let old = c.leader().await;
    let majority: Vec<u64> = c
        .agents
        .iter()
        .map(|a| a.id)
        .filter(|i| *i != old)
        .collect();
    let before = batch("before", 10);
    echo_all(&c.client(), &before).await;

    c.partition(&[old]);
    let maj = c.client_of(&majority);
    leader_among(&c, majority[0], &majority).await;
    steps_down(&c, old).await;
    acknowledges_nothing(&c, &[old]).await;

    let during = batch("during", 10);
    echo_all(&maj, &during).await;

    c.heal();
    caught_up(&c, old, &[old]).await;
    let all = c.client();
    assert_memoized(&all, &before).await;
    assert_memoized(&all, &during).await;
    // The old leader works again as a member: a write through it alone succeeds.
    let after = batch("after", 3);
    echo_all(&c.by_id(old).client(), &after).await;
    assert_memoized(&all, &after).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_agents_split_two_three_majority_keeps_working() {
    let mut c = Cluster::new(5, &["--voters", "5"]).with_fault_control();
    for a in &mut c.agents {
        a.start();
    }
    c.ready(5).await;
    assert_eq!(c.status().await.unwrap().voters.len(), 5);
    let old = c.leader().await;
    // The minority holds the leader and one other voter.
    let other = c.agents.iter().map(|a| a.id).find(|i| *i != old).unwrap();
    let minority = [old, other];
    let majority: Vec<u64> = c
        .agents
        .iter()
        .map(|a| a.id)
        .filter(|i| !minority.contains(i))
        .collect();
    let before = batch("split-before", 5);
    echo_all(&c.client(), &before).await;

    c.partition(&minority);
    leader_among(&c, majority[0], &majority).await;
    // The old leader cannot reach a quorum (2 of 5) and steps down; its side acknowledges
    // nothing (its follower may still name it: Raft followers learn of no new leader).
    steps_down(&c, old).await;
    acknowledges_nothing(&c, &minority).await;
    let during = batch("split-during", 5);
    echo_all(&c.client_of(&majority), &during).await;

    c.heal();
    for id in minority {
        caught_up(&c, id, &minority).await;
    }
    let all = c.client();
    assert_memoized(&all, &before).await;
    assert_memoized(&all, &during).await;
}
