//! Cluster formation, failover, restart, liveness and bad input (issue: the agent).

use crate::harness::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn three_agents_bootstrap_one_leader_three_voters() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let s = c.status().await.unwrap();
    assert!(s.leader_id.is_some());
    assert_eq!(s.voters.len(), 3);
    let st = c.cli_json(&["status", "--json"]);
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1);
    assert_eq!(members.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_sigkill_elects_new_leader_and_restart_catches_up() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    let v: u64 = client.call("fib", 30).await.unwrap();
    assert_eq!(v, 832040);
    let old = c.leader().await;
    c.agent(old).kill();
    let t0 = Instant::now();
    let new = c.new_leader(old).await;
    eprintln!("new leader {new} after {:?}", t0.elapsed());
    // Writes continue.
    let v: u64 = client.call("fib", 31).await.unwrap();
    assert_eq!(v, 1346269);
    // The killed agent restarts on its data dir and catches up.
    c.agent(old).start();
    let target = c.status().await.unwrap().applied_index;
    let a = c.agent(old).client();
    eventually(
        Duration::from_secs(20),
        "restarted agent catches up",
        || async {
            let s = a
                .rpc(|mut c| async move { c.status(mozen_proto::StatusRequest {}).await })
                .await;
            s.is_ok_and(|s| s.node_id == old && s.applied_index >= target)
        },
    )
    .await;
}

/// A leader sends its entries before they are on its own disk, so after a crash it may lack
/// some its followers hold: it must not resume its old term (its next entries would reuse the
/// log ids of the lost ones). A lone voter killed and restarted comes back as the leader of a
/// higher term, with what it had acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_restarted_after_sigkill_leads_a_new_term() {
    let mut c = Cluster::start(1, &[]);
    c.ready(1).await;
    let client = c.client();
    let v: u64 = client.call("fib", 25).await.unwrap();
    assert_eq!(v, 75025);
    let before = c.status().await.unwrap();
    assert_eq!(before.leader_id, Some(1));
    c.agent(1).kill();
    c.agent(1).start();
    eventually(
        Duration::from_secs(20),
        "the restarted agent leads",
        || async { c.status().await.is_some_and(|s| s.leader_id == Some(1)) },
    )
    .await;
    let after = c.status().await.unwrap();
    assert!(
        after.term > before.term,
        "term {} after the restart, {} before",
        after.term,
        before.term
    );
    let again = c.cli_json(&["status", "--json"]);
    assert!(again["members"].as_array().is_some_and(|m| m.len() == 1));
    let v: u64 = c.client().call("fib", 25).await.unwrap();
    assert_eq!(v, 75025);
}

/// Calls waiting on the client's Calls stream when the leader is SIGKILLed are sent again to
/// the new leader and every one is answered with its value: none lost, none failed.
#[tokio::test(flavor = "multi_thread")]
async fn leader_sigkill_with_calls_in_flight_answers_every_call() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    // One call first, so that the client has found the leader and the rest share its stream.
    let v: serde_json::Value = client.call("echo", json!("first")).await.unwrap();
    assert_eq!(v, json!("first"));
    let n = 150u64;
    let handles: Vec<_> = (0..n)
        .map(|i| client.submit::<u64, serde_json::Value>("sleep", 1500 + i))
        .collect();
    // Every call reached the cluster (its request is known) before the kill.
    let probe = c.client();
    let keys: Vec<String> = (0..n)
        .map(|i| {
            mozen_model::RequestKey::of("sleep", &mozen_model::canonical_args(&json!(1500 + i)))
                .to_hex()
        })
        .collect();
    eventually(Duration::from_secs(30), "every call submitted", || async {
        for key in &keys {
            let get = mozen_proto::GetRequest {
                key: key.clone(),
                wait: false,
                timeout_ms: 0,
            };
            let known = probe
                .rpc(|mut c| {
                    let g = get.clone();
                    async move { c.get(g).await }
                })
                .await;
            if known.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    let old = c.leader().await;
    c.agent(old).kill();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.await.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        assert_eq!(v, serde_json::Value::Null, "call {i}");
    }
    assert_ne!(c.new_leader(old).await, old);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_all_and_restart_keeps_nodes_requests_and_results() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let client = c.client();
    let v: u64 = client.call("fib", 25).await.unwrap();
    assert_eq!(v, 75025);
    let key = c.cli_json(&["call", "echo", "[1,2,3]", "--json"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let before = c.cli_json(&["functions", "--json"]);
    for a in &mut c.agents {
        let st = a.terminate();
        assert!(st.success(), "agent {} exited with {st}", a.id);
    }
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    assert_eq!(c.cli_json(&["functions", "--json"]), before);
    let got = c.cli_json(&["get", &key, "--json"]);
    assert_eq!(got["result"], json!([1, 2, 3]));
    let again = c.cli_json(&["call", "fib", "25", "--json"]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["result"], json!(75025));
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_worker_goes_down_within_lease_and_comes_back() {
    let mut c = Cluster::start(3, &[]);
    c.ready(3).await;
    let leader = c.leader().await;
    let victim = c
        .agents
        .iter()
        .map(|a| a.id)
        .find(|id| *id != leader)
        .unwrap();
    c.agent(victim).signal("STOP");
    let t0 = Instant::now();
    eventually(Duration::from_secs(2 + 1 + 2), "node down", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == victim && n.state == "down")
    })
    .await;
    eprintln!("down after {:?} (lease 2s)", t0.elapsed());
    c.agent(victim).signal("CONT");
    eventually(Duration::from_secs(10), "node active again", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == victim && n.state == "active")
    })
    .await;
}

#[test]
fn bad_flags_quote_the_value_and_exit_2() {
    let out = std::process::Command::new(agent_bin())
        .args(["--id", "1", "--peers", "3@host:99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--peers '3@host:99999': port must be 1-65535")
    );
    let out = std::process::Command::new(agent_bin())
        .args(["--id", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id 'x'"));
    let out = std::process::Command::new(cli_bin())
        .args(["node", "frobnicate", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_id_for_data_dir_is_refused() {
    let mut c = Cluster::start(1, &["--voters", "1"]);
    c.ready(1).await;
    let dir = c.agents[0].dir.clone();
    assert!(c.agents[0].terminate().success());
    let out = std::process::Command::new(agent_bin())
        .args([
            "--id",
            "7",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MZ-IDENTITY") && err.contains("belongs to node 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_peers_keep_waiting_and_cli_reports_unreachable() {
    let mut c = Cluster::new(3, &[]);
    c.agents[0].start(); // peers 2 and 3 never start
    // An address that refuses connections, held for the whole test (a port only found free
    // could be taken meanwhile by another test's agent, which would answer): a socket bound
    // to it that does not listen.
    let silent = tokio::net::TcpSocket::new_v4().unwrap();
    silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let out = std::process::Command::new(cli_bin())
        .env("MOZEN_ADDR", silent_addr.to_string())
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MZ-UNREACHABLE"));
    // The lone agent is alive and not initialized (it waits for its peers).
    let a = c.agents[0].client();
    eventually(Duration::from_secs(10), "agent answers", || async {
        a.rpc(|mut c| async move {
            c.cluster_info(mozen_proto::ClusterInfoRequest::default())
                .await
        })
        .await
        .is_ok_and(|i| !i.initialized)
    })
    .await;
    c.agents[0].kill();
    drop(silent);
}

/// A new leader must not take nodes the previous one marked down for alive: a killed worker
/// stays down across a leader change (it showed active for about a lease before).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_stays_down_across_a_leader_change() {
    let mut c = Cluster::start(4, &[]);
    c.ready(4).await;
    let state_of_4 = |nodes: Vec<mozen_proto::Node>| {
        nodes
            .into_iter()
            .find(|n| n.id == 4)
            .map(|n| n.state)
            .unwrap_or_default()
    };
    c.agent(4).kill();
    eventually(Duration::from_secs(20), "node 4 marked down", || async {
        state_of_4(c.nodes().await) == "down"
    })
    .await;
    let old = c.leader().await;
    assert_ne!(old, 4, "node 4 is a worker");
    c.agent(old).kill();
    let new = c.new_leader(old).await;
    // Watch for longer than a lease (2 s here): the new leader never shows node 4 active.
    let until = Instant::now() + Duration::from_secs(4);
    let mut seen = 0;
    while Instant::now() < until {
        let nodes = c.nodes().await;
        if !nodes.is_empty() {
            seen += 1;
            let s = state_of_4(nodes);
            assert_ne!(s, "active", "the new leader {new} revived the dead node 4");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen > 10, "the node table was read {seen} times");
}

/// Functions run on a runtime of their own below the agent's priority: naive CPU-bound
/// `async fn`s (computing without awaiting) on every slot of every voter of this 2-core
/// machine, two rounds, leave Raft alone: no election; the watchdog names the function.
#[tokio::test(flavor = "multi_thread")]
async fn naive_cpu_bound_functions_on_every_slot_cause_no_election() {
    let (c, slots) = voters_with_test_functions().await;
    let before = c.status().await.unwrap().term;
    let client = c.client();
    for round in 0..2u64 {
        spin_on_every_slot(&client, slots, 1500 + round * 1000).await;
        let s = c.status().await.unwrap();
        assert_eq!(s.term, before, "round {round}: an election happened");
    }
    // The second round's calls (2.5 s and more) held their threads past the watchdog's 2 s.
    assert!(
        c.agents.iter().any(|a| a
            .stderr()
            .contains("fault.spin_inline has held a work thread")),
        "the watchdog names the function holding its thread"
    );
}

/// A node given up for dead that is heard from again is counted, with what was re-queued from
/// it (it may have run twice): metrics and a `node-back` event.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_heard_from_again_counts_as_a_false_suspicion() {
    let mut c = Cluster::new(4, &[]);
    let mut metrics = std::collections::HashMap::new();
    for a in &mut c.agents {
        let addr = format!("127.0.0.1:{}", free_port());
        a.extra.extend(["--metrics".to_string(), addr.clone()]);
        metrics.insert(a.id, addr);
        a.start();
    }
    c.ready(4).await;
    let state_of_4 = || async {
        c.nodes()
            .await
            .into_iter()
            .find(|n| n.id == 4)
            .map(|n| n.state)
            .unwrap_or_default()
    };
    c.by_id(4).signal("STOP");
    eventually(Duration::from_secs(20), "node 4 marked down", || async {
        state_of_4().await == "down"
    })
    .await;
    c.by_id(4).signal("CONT");
    eventually(Duration::from_secs(20), "node 4 active again", || async {
        state_of_4().await == "active"
    })
    .await;
    let leader = c.leader().await;
    let text = scrape(&metrics[&leader]);
    assert!(
        text.contains("mozen_false_suspicions_total 1"),
        "metrics of the leader {leader}:\n{text}"
    );
    assert!(
        text.contains("mozen_reexecutions_after_false_suspicion_total 0"),
        "{text}"
    );
    let events = c.cli(&["events"]);
    let out = String::from_utf8_lossy(&events.stdout);
    assert!(out.contains("node-back"), "events:\n{out}");
}

/// The saturation measurement of docs/functions.md (not a pass/fail timing test: it prints
/// figures; run with `--run-ignored only`): 18 naive CPU-bound 5 s calls at once (every slot
/// of every voter of a 2-core machine), three rounds, while a steady client calls `noop`.
/// Asserts only that no election happened.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement that prints figures (about 20 s)"]
async fn saturation_figures() {
    let (c, slots) = voters_with_test_functions().await;
    let before = c.status().await.unwrap().term;
    let client = c.client();
    let stop = tokio_util::sync::CancellationToken::new();
    let steady = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let t = Instant::now();
                let _: serde_json::Value = client.call("noop", json!(["steady", i])).await.unwrap();
                lat.push(t.elapsed());
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lat
        })
    };
    for round in 0..3u64 {
        let t = Instant::now();
        spin_on_every_slot(&client, slots, 5000 + round * 100).await;
        eprintln!(
            "round {round}: {slots} calls of 5 s done in {:?}",
            t.elapsed()
        );
    }
    stop.cancel();
    let mut lat = steady.await.unwrap();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    let after = c.status().await.unwrap().term;
    eprintln!(
        "steady noop: {} calls, p50 {:?}, p99 {:?}, max {:?}; term {before} -> {after}",
        lat.len(),
        p(0.5),
        p(0.99),
        lat.last().unwrap()
    );
    assert_eq!(after, before, "an election happened");
}

/// Three voters with the test-only functions (fault control on), ready; and their slots.
async fn voters_with_test_functions() -> (Cluster, u32) {
    let mut c = Cluster::new(3, &[]).with_fault_control();
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    let slots = c.nodes().await.iter().map(|n| n.slots).sum();
    (c, slots)
}

/// `slots` naive CPU-bound calls at once, of about `ms` milliseconds each (distinct arguments,
/// so none is a memo hit); waits for all of them.
async fn spin_on_every_slot(client: &mozen_agent::Client, slots: u32, ms: u64) {
    let calls = (0..u64::from(slots)).map(|i| {
        let client = client.clone();
        async move {
            client
                .call::<_, u64>("fault.spin_inline", json!(ms + i))
                .await
        }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("every call completes");
    }
}
