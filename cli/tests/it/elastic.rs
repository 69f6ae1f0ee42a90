//! Elastic clusters with real agents: `mozen up` / `mozen down` from a hosts file, and the
//! leader's autoscaler starting and stopping agents of a `command` pool.

use crate::harness::{agent_bin, cli_bin, eventually, free_port};
use mozen_client::{CallOptions, Client, call_request};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SIGKILLs every agent whose pid file is under `dir` when the test ends, however it ends:
/// agents started by `mozen up` and by pool scripts are not children of the test.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid")
                && let Ok(pid) = std::fs::read_to_string(&p)
            {
                let pid = pid.trim();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&self.0.display().to_string()) {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
    }
}

fn mozen(args: &[&str]) -> Output {
    Command::new(cli_bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn client(addrs: &[String]) -> Client {
    Client::with_transport(
        addrs.to_vec(),
        pb::DEFAULT_MAX_MESSAGE_BYTES,
        Duration::from_secs(3),
        Default::default(),
    )
    .unwrap()
}

async fn submit(c: &Client, function: &str, args: Value) -> Option<String> {
    let req = call_request(function, &args, &CallOptions::default());
    c.rpc(|mut c| {
        let r = req.clone();
        async move { c.submit(r).await }
    })
    .await
    .ok()
    .map(|r| r.key)
}

async fn get(c: &Client, key: &str, wait: bool) -> Option<pb::CallReply> {
    let req = pb::GetRequest {
        key: key.into(),
        wait,
        timeout_ms: 0,
    };
    c.rpc(|mut c| {
        let r = req.clone();
        async move { c.get(r).await }
    })
    .await
    .ok()
}

async fn answers(addr: &str) -> bool {
    mozen_cli::elastic::answers(&Default::default(), addr).await
}

async fn run_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(cli_bin()).args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_and_down_lose_no_request_of_a_running_workload() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _reaper = Reaper(data.clone());
    // The ssh launcher's command line, run by a local shell instead of a remote one.
    let ssh = script(dir.path(), "fake-ssh", "shift\nexec sh -c \"$1\"");
    let addrs: Vec<String> = (0..5)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let hosts = dir.path().join("hosts.toml");
    let agent = agent_bin();
    let mut toml = format!(
        "[cluster]\nvoters = 3\ndata_dir = \"data\"\nagent = \"{agent}\"\nssh = [\"{ssh}\"]\n\
         args = [\"--lease\", \"2s\", \"--slots\", \"2\"]\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        let (name, launcher) = match i {
            0..3 => (format!("v{}", i + 1), "local"),
            3 => ("w1".into(), "local"),
            _ => ("w2".into(), "ssh"),
        };
        toml += &format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"{a}\"\nlauncher = \"{launcher}\"\n"
        );
    }
    std::fs::write(&hosts, toml).unwrap();
    let hosts = hosts.display().to_string();

    let t = Instant::now();
    let out = run_cli(vec!["up".into(), hosts.clone()]).await;
    assert!(out.status.success(), "mozen up: {}", text(&out));
    eprintln!("mozen up of 5 agents: {:.1}s", t.elapsed().as_secs_f64());
    let up = text(&out);
    assert!(up.contains("cluster up in"), "{up}");
    assert_eq!(up.matches(" started (").count(), 5, "{up}");
    let c = client(&addrs);
    let st = c
        .rpc(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .unwrap();
    assert_eq!(
        st.voters.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // A second `up` starts nothing.
    let again = mozen(&["up", &hosts]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(text(&again).matches("already running").count(), 5);

    // A workload runs throughout `down`: each worker submits and waits, until refused.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (c, acked) = (client(&addrs), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let Some(key) = submit(&c, "sleep", json!(20 + 4 * i + w)).await else {
                    return;
                };
                acked.lock().unwrap().push(key.clone());
                if get(&c, &key, true).await.is_none() {
                    return;
                }
            }
        }));
    }
    eventually(Duration::from_secs(20), "the workload to run", || async {
        acked.lock().unwrap().len() >= 12
    })
    .await;
    let out = run_cli(vec!["down".into(), hosts.clone()]).await;
    assert!(out.status.success(), "mozen down: {}", text(&out));
    let down = text(&out);
    let order: Vec<&str> = down
        .lines()
        .filter(|l| l.contains(" stopped ("))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order.len(), 5, "{down}");
    assert_eq!(
        {
            let mut w = order[..2].to_vec();
            w.sort();
            w
        },
        ["w1", "w2"],
        "workers stop first: {down}"
    );
    for t in tasks {
        t.await.unwrap();
    }
    for a in &addrs {
        assert!(!answers(a).await, "{a} still answers after down");
    }

    // Everything acknowledged is still there: up again, and it all finishes.
    let out = run_cli(vec!["up".into(), hosts.clone()]).await;
    assert!(out.status.success(), "second mozen up: {}", text(&out));
    let c = client(&addrs);
    let keys = acked.lock().unwrap().clone();
    for k in &keys {
        let mut r = get(&c, k, true).await;
        while r.as_ref().is_some_and(|r| r.state != "done") {
            r = get(&c, k, true).await;
        }
        assert_eq!(r.map(|r| r.state), Some("done".to_string()), "request {k}");
    }
    eprintln!(
        "{} acknowledged requests all done after down and up",
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_starts_pool_agents_for_a_backlog_and_stops_them_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _reaper = Reaper(data.clone());
    let agent = agent_bin();
    let start = script(
        dir.path(),
        "start-spare",
        &format!(
            "# NAME ID PEERS DATA_DIR\nmkdir -p \"$(dirname \"$4\")\"\n\
             nohup {agent} --id \"$2\" --name \"$1\" --listen 127.0.0.1:0 --peers \"$3\" \
             --data-dir \"$4\" --lease 2s --slots 2 >> \"$4.log\" 2>&1 < /dev/null &\n\
             echo $! > \"$4.pid\""
        ),
    );
    let stop = script(dir.path(), "stop-spare", "kill -TERM \"$(cat \"$1.pid\")\"");
    let addr = format!("127.0.0.1:{}", free_port());
    let hosts = dir.path().join("hosts.toml");
    std::fs::write(
        &hosts,
        format!(
            r#"[cluster]
voters = 1
data_dir = "data"
agent = "{agent}"
args = ["--lease", "2s", "--slots", "2"]
[cluster.autoscale]
enabled = true
target = "2s"
idle = "2s"
interval = "300ms"
min_nodes = 1
[[hosts]]
name = "a1"
address = "{addr}"
launcher = "local"
[[hosts]]
name = "spare-*"
launcher = "command"
start = ["{start}", "{{name}}", "{{id}}", "{{peers}}", "{{data_dir}}"]
stop = ["{stop}", "{{data_dir}}"]
max = 2
slots = 2
"#
        ),
    )
    .unwrap();
    let hosts = hosts.display().to_string();
    let out = run_cli(vec!["up".into(), hosts.clone()]).await;
    assert!(out.status.success(), "mozen up: {}", text(&out));
    let c = client(std::slice::from_ref(&addr));

    // 24 requests of 0.4 s of CPU on 2 slots: 4.8 s, over the 2 s target. (`spin` holds its
    // slot; `sleep` would not.)
    // Milliseconds since the Unix epoch, as events are stamped.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut keys = Vec::new();
    for i in 0..24u64 {
        keys.push(submit(&c, "spin", json!(400 + i)).await.unwrap());
    }
    let events = || async { c.events(200).await.unwrap() };
    eventually(Duration::from_secs(20), "a pool agent to join", || async {
        let n = c
            .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
            .await
            .unwrap()
            .nodes;
        n.iter()
            .any(|n| n.name.starts_with("spare-") && n.state == "active")
    })
    .await;
    let ev = events().await;
    let up = ev
        .iter()
        .find(|e| e.kind == "scale-up")
        .expect("a scale-up event");
    assert!(
        up.message.contains("from pool \"spare-*\"") && up.message.contains("queued request(s)"),
        "{}",
        up.message
    );
    eprintln!(
        "first scale-up decided {} ms after the backlog was submitted",
        up.at_ms.saturating_sub(t0)
    );
    if let Some(joined) = ev
        .iter()
        .find(|e| e.kind == "joined" && e.node.is_some_and(|n| n > 1))
    {
        eprintln!(
            "first pool agent joined {} ms after the scale-up decision",
            joined.at_ms.saturating_sub(up.at_ms)
        );
    }
    let mut spare_addrs = Vec::new();
    let mut ran_on = std::collections::BTreeSet::new();
    for k in &keys {
        let r = get(&c, k, true).await.unwrap();
        assert_eq!(r.state, "done");
        ran_on.insert(r.node.unwrap_or(0));
    }
    assert!(
        ran_on.iter().any(|n| *n > 1),
        "pool agents took work: ran on {ran_on:?}"
    );
    for n in c
        .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
        .await
        .unwrap()
        .nodes
    {
        if n.name.starts_with("spare-") {
            spare_addrs.push(n.addr);
        }
    }

    // The backlog is gone: the pool agents are drained, removed and stopped.
    eventually(
        Duration::from_secs(30),
        "idle pool agents to be stopped",
        || async {
            let n = c
                .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
                .await
                .unwrap()
                .nodes;
            n.len() == 1 && n[0].id == 1
        },
    )
    .await;
    for a in &spare_addrs {
        eventually(
            Duration::from_secs(20),
            "a stopped pool agent to exit",
            || async { !answers(a).await },
        )
        .await;
    }
    let ev = events().await;
    let down = ev
        .iter()
        .find(|e| e.kind == "scale-down" && e.message.starts_with("drain and stop"))
        .expect("a scale-down event");
    assert!(down.message.contains("idle for"), "{}", down.message);
    assert!(
        ev.iter()
            .any(|e| e.kind == "scale-down" && e.message.starts_with("stopped spare-")),
        "{ev:?}"
    );
    // `mozen events` shows the decisions with their reasons.
    let out = mozen(&["--addr", &addr, "events", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "scale-up" && e["message"].as_str().unwrap().contains("target"))
    );
    let out = run_cli(vec!["down".into(), hosts]).await;
    assert!(out.status.success(), "mozen down: {}", text(&out));
}
