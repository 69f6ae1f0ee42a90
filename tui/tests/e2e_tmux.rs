//! End to end in a real terminal: three agents, the console under tmux, drain a node with keys,
//! and see the state change on screen and in `mozen nodes`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_mozen-console")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Vec<Child>, String);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.1])
            .status();
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn poll(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pane(session: &str) -> String {
    let out = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keys(session: &str, k: &[&str]) {
    let mut args = vec!["send-keys", "-t", session];
    args.extend_from_slice(k);
    assert!(Command::new("tmux").args(&args).status().unwrap().success());
}

#[test]
fn drain_a_node_from_the_console_under_tmux() {
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is required for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", port())).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}@{a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let session = format!("mozen-e2e-{}", std::process::id());
    let mut guard = Kill(Vec::new(), session.clone());
    for (i, a) in addrs.iter().enumerate() {
        let c = Command::new(bin("mozen-agent"))
            .args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                a,
                "--peers",
                &peers,
                "--data-dir",
            ])
            .arg(dir.path().join(format!("n{}", i + 1)))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        guard.0.push(c);
    }
    let all = addrs.join(",");
    let console = format!("{} --addr {all}", bin("mozen-console").display());
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-s",
            &session,
            &console,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tmux new-session");
    poll(Duration::from_secs(30), "three nodes on screen", || {
        let p = pane(&session);
        p.contains("node-1")
            && p.contains("node-2")
            && p.contains("node-3")
            && p.matches("active").count() >= 3
    });
    // Select node 3 (third row) and drain it, confirming.
    keys(&session, &["j", "j", "d"]);
    poll(Duration::from_secs(5), "confirmation prompt", || {
        pane(&session).contains("drain node 3? (y/n)")
    });
    keys(&session, &["y"]);
    poll(Duration::from_secs(15), "node 3 drained on screen", || {
        pane(&session)
            .lines()
            .any(|l| l.contains("node-3") && (l.contains("drained") || l.contains("draining")))
    });
    poll(
        Duration::from_secs(15),
        "node 3 drained in `mozen nodes`",
        || {
            let out = Command::new(bin("mozen"))
                .env("MOZEN_ADDR", &all)
                .args(["nodes", "--json"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v.as_array()
                .is_some_and(|ns| ns.iter().any(|n| n["id"] == 3 && n["state"] == "drained"))
        },
    );
    keys(&session, &["q"]);
    poll(Duration::from_secs(5), "console exits", || {
        !Command::new("tmux")
            .args(["has-session", "-t", &session])
            .status()
            .unwrap()
            .success()
    });
}
