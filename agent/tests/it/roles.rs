//! Roles on real agents (`--access-file`): a client credential reaches neither Raft, nor the
//! worker RPCs, nor node operations; a worker credential does not reach Raft; an outcome is
//! taken only from the node holding the attempt. Each test checks afterwards that the
//! cluster kept its leader and term and lost nothing it acknowledged.

use crate::harness::*;
use mozen_agent::client::Client;
use mozen_agent::security::{AccessList, ClientTransport, Security};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A cluster of three voters, each with its own peer token bound to its node, and tokens for
/// a client (`alice`), an operator (`ops`), an unbound worker (`builder`) and a worker bound
/// to a node that does not exist (`node-9`).
struct Roles {
    c: Cluster,
    _secrets: TempDir,
    client: PathBuf,
    operator: PathBuf,
    worker: PathBuf,
    worker9: PathBuf,
    node4: PathBuf,
    access: PathBuf,
    metrics: Vec<(u64, String)>,
}

fn token_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let token = format!("mozen-test-{name}-0123456789abcdef");
    let p = dir.join(format!("{name}.token"));
    std::fs::write(&p, &token).unwrap();
    (p, token)
}

fn transport(token: &Path) -> ClientTransport {
    Security::for_client(Some(token), None, None, None)
        .unwrap()
        .client()
}

async fn roles_cluster() -> Roles {
    let secrets = TempDir::new().unwrap();
    let dir = secrets.path();
    let mut lines = vec!["# the test cluster's credentials".to_string()];
    let mut peers = Vec::new();
    for id in 1..=3 {
        let (p, t) = token_file(dir, &format!("node-{id}"));
        lines.push(AccessList::line("peer", &format!("node-{id}"), &t));
        peers.push(p);
    }
    let mut cred = |roles: &str, name: &str| {
        let (p, t) = token_file(dir, name);
        lines.push(AccessList::line(roles, name, &t));
        p
    };
    let client = cred("client", "alice");
    let operator = cred("operator", "ops");
    let worker = cred("worker", "builder");
    let worker9 = cred("worker", "node-9");
    // For a worker-only agent 4 a test may add.
    let node4 = cred("worker", "node-4");
    let access = dir.join("access");
    std::fs::write(&access, lines.join("\n")).unwrap();
    let mut c = Cluster::new(3, &[]).with_client_transport(transport(&client));
    let mut metrics = Vec::new();
    for (a, tok) in c.agents.iter_mut().zip(&peers) {
        let m = format!("127.0.0.1:{}", free_port());
        a.extra.extend(
            [
                "--token-file",
                tok.to_str().unwrap(),
                "--access-file",
                access.to_str().unwrap(),
                "--metrics",
                &m,
            ]
            .map(String::from),
        );
        metrics.push((a.id, m));
        a.start();
    }
    c.ready(3).await;
    Roles {
        c,
        _secrets: secrets,
        client,
        operator,
        worker,
        worker9,
        node4,
        access,
        metrics,
    }
}

/// (leader, term) once a leader is known.
async fn leader_term(c: &Cluster) -> (u64, u64) {
    let leader = c.leader().await;
    let s = c.status().await.expect("status");
    (leader, s.term)
}

/// Calls acknowledged before an attack: (key, result).
async fn acknowledged(c: &Cluster, tag: &str) -> Vec<(String, Value)> {
    let client = c.client();
    let mut out = Vec::new();
    for i in 0..5 {
        let args = json!(format!("{tag}-{i}"));
        let r = client
            .call_json("echo", args.clone(), &Default::default())
            .await
            .unwrap();
        let got: Value = serde_json::from_str(r.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(got, args);
        out.push((r.key, got));
    }
    out
}

/// Every call in `acked` still reads back done with its value.
async fn nothing_lost(c: &Cluster, acked: &[(String, Value)]) {
    let client = c.client();
    for (key, value) in acked {
        let r = get(&client, key, false).await;
        assert_eq!(r.state, "done", "{key}");
        let got: Value = serde_json::from_str(r.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(&got, value, "{key}");
    }
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e}");
    assert!(e.message().starts_with("MZ-FORBIDDEN"), "{what}: {e}");
}

fn payload() -> pb::RaftPayload {
    pb::RaftPayload {
        version: 1,
        data: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credential_reaches_no_raft_worker_or_node_operation() {
    let r = roles_cluster().await;
    let c = &r.c;
    let before = leader_term(c).await;
    let acked = acknowledged(c, "before").await;
    let (leader, _) = before;
    let client = transport(&r.client);
    for a in &c.agents {
        let ch = client.channel(&a.addr).unwrap();
        let mut raft = pb::raft_client::RaftClient::new(ch.clone());
        forbidden("Vote", raft.vote(payload()).await);
        forbidden("AppendEntries", raft.append_entries(payload()).await);
        let mut w = pb::mozen_worker_client::MozenWorkerClient::new(ch.clone());
        let join = pb::JoinRequest {
            id: 7,
            name: "fake".into(),
            addr: "127.0.0.1:1".into(),
            cpus: 1,
            memory_bytes: 1 << 30,
            slots: 4,
            labels: Default::default(),
        };
        forbidden("Join", w.join(join.clone()).await);
        let done = pb::CompleteRequest {
            completions: vec![pb::Completion {
                key: vec![1; 32],
                node: leader,
                attempt: 1,
                value: Some(b"\"forged\"".to_vec()),
                error: None,
                duration_ms: 1,
            }],
        };
        forbidden("Complete", w.complete(done.clone()).await);
        let park = pb::ParkRequest {
            key: vec![1; 32],
            node: leader,
            attempt: 1,
            parked: true,
        };
        forbidden("Park", w.park(park.clone()).await);
        let work = pb::WorkRequest {
            node_id: leader,
            running: vec![],
        };
        forbidden("Work", w.work(work.clone()).await);
        // The old names on Mozen, kept for one release, check the same roles.
        let mut m = pb::mozen_client::MozenClient::new(ch);
        forbidden("Mozen.Join", m.join(join).await);
        forbidden("Mozen.Complete", m.complete(done).await);
        forbidden("Mozen.Park", m.park(park).await);
        forbidden("Mozen.Work", m.work(work).await);
        let drain = pb::NodeOpRequest {
            node_id: 3,
            op: "remove".into(),
        };
        forbidden("NodeOp", m.node_op(drain).await);
    }
    // The worker credential reaches no Raft RPC and no node operation either.
    let worker = transport(&r.worker);
    let ch = worker.channel(&c.agents[0].addr).unwrap();
    let mut raft = pb::raft_client::RaftClient::new(ch.clone());
    forbidden("worker Vote", raft.vote(payload()).await);
    forbidden("worker AppendEntries", raft.append_entries(payload()).await);
    let mut m = pb::mozen_client::MozenClient::new(ch);
    let e = m
        .node_op(pb::NodeOpRequest {
            node_id: 2,
            op: "drain".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("needs the operator role"), "{e}");
    assert!(e.message().contains("'builder'"), "{e}");

    // The client credential calls; the operator's drains and undrains.
    let got: Value = c
        .client()
        .call("echo", json!("still served"))
        .await
        .unwrap();
    assert_eq!(got, json!("still served"));
    let ops = Client::with_transport(
        c.agents.iter().map(|a| a.addr.clone()),
        pb::DEFAULT_MAX_MESSAGE_BYTES,
        Duration::from_secs(30),
        transport(&r.operator),
    )
    .unwrap();
    let other = (1..=3).find(|id| *id != leader).unwrap();
    ops.node_op(other, mozen_model::NodeOp::Drain)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "node drained", || async {
        c.nodes()
            .await
            .iter()
            .any(|n| n.id == other && n.state != "active")
    })
    .await;
    ops.node_op(other, mozen_model::NodeOp::Undrain)
        .await
        .unwrap();
    c.ready(3).await;

    // Bulk cancel: the client credential may not name another client; the operator's may.
    let bulk = |client: &str| pb::CancelRequest {
        function: "sleep".into(),
        client: client.into(),
        ..Default::default()
    };
    let leader_addr = c.by_id(leader).addr.clone();
    let on_leader = |token: &Path| {
        pb::mozen_client::MozenClient::new(transport(token).channel(&leader_addr).unwrap())
    };
    forbidden(
        "bulk Cancel of another client",
        on_leader(&r.client).cancel(bulk("ops")).await,
    );
    on_leader(&r.operator)
        .cancel(bulk("alice"))
        .await
        .expect("an operator cancels any client's requests");

    assert_eq!(leader_term(c).await, before, "leader and term unchanged");
    nothing_lost(c, &acked).await;
    let nodes = c.nodes().await;
    assert!(
        !nodes.iter().any(|n| n.id == 7),
        "the fake worker never joined"
    );
}

/// The request `key` as `Get` answers it (waiting up to 20 s for its end when `wait`).
async fn get(client: &Client, key: &str, wait: bool) -> pb::CallReply {
    client
        .rpc(|mut cl| {
            let key = key.to_string();
            async move {
                cl.get(pb::GetRequest {
                    key,
                    wait,
                    timeout_ms: 20_000,
                })
                .await
            }
        })
        .await
        .unwrap()
}

/// The value of `mozen_refused_completions_total{reason}` on the agent at `addr`.
fn refused(addr: &str, reason: &str) -> f64 {
    let text = scrape(addr);
    let row = format!("mozen_refused_completions_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&row))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_completions_never_reach_the_caller_or_the_memo() {
    let r = roles_cluster().await;
    let c = &r.c;
    let before = leader_term(c).await;
    let acked = acknowledged(c, "before").await;
    let (leader, _) = before;
    let leader_addr = c.by_id(leader).addr.clone();
    let metrics = &r.metrics.iter().find(|(id, _)| *id == leader).unwrap().1;

    // A sleep in flight, written down (Submit is never an express call).
    let client = c.client();
    let sub = client
        .rpc(|mut cl| async move {
            cl.submit(pb::CallRequest {
                function: "sleep".into(),
                args_json: "3000".into(),
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap();
    let key_hex = sub.key.clone();
    let key: mozen_model::RequestKey = key_hex.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let node = loop {
        let g = get(&client, &key_hex, false).await;
        if g.state == "running"
            && let Some(n) = g.node
        {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sleep never ran: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wrong = (1..=3).find(|id| *id != node).unwrap();
    let forged = |node: u64, attempt: u32| pb::CompleteRequest {
        completions: vec![pb::Completion {
            key: key.0.to_vec(),
            node,
            attempt,
            value: Some(b"\"forged\"".to_vec()),
            error: None,
            duration_ms: 1,
        }],
    };
    let bound = transport(&r.worker9);
    let mut w9 =
        pb::mozen_worker_client::MozenWorkerClient::new(bound.channel(&leader_addr).unwrap());
    // Bound to node 9, it cannot speak for the node that runs the sleep.
    let e = w9.complete(forged(node, 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("speaks only for node 9"), "{e}");
    forbidden(
        "bound Park",
        w9.park(pb::ParkRequest {
            key: key.0.to_vec(),
            node,
            attempt: 1,
            parked: false,
        })
        .await,
    );
    let unbound = transport(&r.worker);
    let mut w =
        pb::mozen_worker_client::MozenWorkerClient::new(unbound.channel(&leader_addr).unwrap());
    // Unbound, it names an attempt that never existed, or a node that does not hold it.
    let e = w.complete(forged(node, 7)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("does not hold that attempt"), "{e}");
    forbidden("wrong node", w.complete(forged(wrong, 1)).await);
    // The early child value path is the same report: nothing was handed on.
    assert!(refused(metrics, "node") >= 2.0, "{}", scrape(metrics));
    assert!(refused(metrics, "attempt") >= 2.0, "{}", scrape(metrics));

    // Told in events (the first refusal of each credential at once).
    eventually(Duration::from_secs(10), "refusal events", || async {
        let events = client.events(100).await.unwrap_or_default();
        let of = |who: &str| {
            events.iter().any(|e| {
                e.kind == "refused-completion"
                    && e.message.contains(&key.short())
                    && e.message.contains(who)
            })
        };
        of("'node-9'") && of("'builder'")
    })
    .await;

    // The caller gets the sleep's true value, and the memo holds it.
    let done = get(&client, &key_hex, true).await;
    assert_eq!(done.state, "done");
    assert_eq!(done.result_json.as_deref(), Some("null"));
    let again = client
        .call_json("sleep", json!(3000), &Default::default())
        .await
        .unwrap();
    assert!(again.cached, "{again:?}");
    assert_eq!(again.result_json.as_deref(), Some("null"));

    assert_eq!(leader_term(c).await, before, "leader and term unchanged");
    nothing_lost(c, &acked).await;
}

/// The running node of request `key`, once it runs.
async fn running_node(client: &Client, key: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Unknown until the parent calls it (and, flying express, until it is written down).
        let g = client
            .rpc(|mut cl| {
                let key = key.to_string();
                async move {
                    cl.get(pb::GetRequest {
                        key,
                        wait: false,
                        timeout_ms: 0,
                    })
                    .await
                }
            })
            .await;
        if let Ok(g) = &g
            && g.state == "running"
            && let Some(n) = g.node
        {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key} never ran: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_child_value_never_reaches_its_parent() {
    let r = roles_cluster().await;
    let c = &r.c;
    let before = leader_term(c).await;
    let acked = acknowledged(c, "before").await;
    let leader_addr = c.by_id(before.0).addr.clone();
    let client = c.client();
    // A parent whose one child sleeps 3 s: the parent waits for the child's value, which the
    // leader hands it as soon as a worker reports it (before it is committed).
    let parent_args = json!([3000, 0, 1, 1, "forge-me"]);
    let child_args = json!([3000, 0, 0, 1, "forge-me"]);
    let child = mozen_model::RequestKey::of("bogosity", &mozen_model::canonical_args(&child_args));
    let pending = {
        let client = client.clone();
        let args = parent_args.clone();
        tokio::spawn(async move {
            client
                .call_json("bogosity", args, &Default::default())
                .await
        })
    };
    let node = running_node(&client, &child.to_hex()).await;
    let forged = |node: u64, attempt: u32| pb::CompleteRequest {
        completions: vec![pb::Completion {
            key: child.0.to_vec(),
            node,
            attempt,
            value: Some(b"\"forged child\"".to_vec()),
            error: None,
            duration_ms: 1,
        }],
    };
    let mut w = pb::mozen_worker_client::MozenWorkerClient::new(
        transport(&r.worker).channel(&leader_addr).unwrap(),
    );
    forbidden("attempt never run", w.complete(forged(node, 7)).await);
    forbidden(
        "express attempt on a node not running it",
        w.complete(forged(node % 3 + 1, 0)).await,
    );
    let mut w9 = pb::mozen_worker_client::MozenWorkerClient::new(
        transport(&r.worker9).channel(&leader_addr).unwrap(),
    );
    forbidden("bound to node 9", w9.complete(forged(node, 1)).await);

    let reply = pending.await.unwrap().unwrap();
    let result = reply.result_json.unwrap();
    assert!(!result.contains("forged"), "{result}");
    assert!(
        result.contains("level 1") && result.contains("level 0"),
        "{result}"
    );
    let memo = get(&client, &child.to_hex(), false).await;
    assert_eq!(memo.state, "done");
    assert!(
        !memo.result_json.as_deref().unwrap().contains("forged"),
        "{memo:?}"
    );
    assert_eq!(leader_term(c).await, before, "leader and term unchanged");
    nothing_lost(c, &acked).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_agent_with_a_worker_credential_joins_and_runs_work() {
    let mut r = roles_cluster().await;
    let before = leader_term(&r.c).await;
    let acked = acknowledged(&r.c, "before").await;
    // Node 4's own credential: worker, bound to node 4 (listed in every agent's file).
    let (tok, access) = (r.node4.clone(), r.access.clone());
    let i = r.c.add(
        4,
        &[
            "--token-file",
            tok.to_str().unwrap(),
            "--access-file",
            access.to_str().unwrap(),
        ],
    );
    r.c.agents[i].start();
    r.c.ready(4).await;
    // Its credential joins and heartbeats through MozenWorker, but reaches no Raft RPC.
    let mut raft =
        pb::raft_client::RaftClient::new(transport(&tok).channel(&r.c.agents[0].addr).unwrap());
    forbidden("worker agent Vote", raft.vote(payload()).await);
    let got: Value = r.c.client().call("echo", json!("with four")).await.unwrap();
    assert_eq!(got, json!("with four"));
    assert_eq!(leader_term(&r.c).await, before, "leader and term unchanged");
    nothing_lost(&r.c, &acked).await;
}

#[test]
fn token_command_mints_a_credential_and_its_line() {
    let out = std::process::Command::new(agent_bin())
        .args(["token", "--role", "worker,client", "--name", "pool-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let line = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        line.trim(),
        AccessList::line("worker,client", "pool-a", &token)
    );
    let list = AccessList::parse(&line).unwrap();
    assert_eq!(list.find(&token).unwrap().name.as_ref(), "pool-a");
    let bad = std::process::Command::new(agent_bin())
        .args(["token", "--role", "admin", "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown role 'admin'"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(bad.stdout.is_empty(), "no token printed for a refused line");
}

#[test]
fn a_malformed_access_file_stops_the_agent_naming_the_line() {
    let dir = TempDir::new().unwrap();
    let (tok, t) = token_file(dir.path(), "node-1");
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        format!(
            "{}\nclient alice not-a-hash\n",
            AccessList::line("peer", "node-1", &t)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(agent_bin())
        .args([
            "--id",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--token-file")
        .arg(&tok)
        .arg("--access-file")
        .arg(&access)
        .arg("--data-dir")
        .arg(dir.path().join("n1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--access-file '{}': line 2:", access.display())),
        "{err}"
    );
    assert!(!dir.path().join("n1").exists(), "nothing was created");
}
