//! `--demo`: a local three-agent cluster and a steady workload, so a newcomer sees the cluster
//! move with one command.
//!
//! The agents are child processes of the `mozen-agent` binary found next to this executable,
//! on free loopback ports, with their data (and logs) in a temporary directory. Dropping
//! [`Demo`] kills them and removes the directory.

use crate::client::Cluster;
use crate::error::ConsoleError;
use mozen_proto as pb;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A running demo cluster. Dropping it stops the agents and deletes their data.
#[derive(Debug)]
pub struct Demo {
    /// The agents' HOST:PORT, node 1 first.
    pub addrs: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Demo {
    /// Where the agents keep their data and logs (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The `mozen-agent` binary next to the running executable.
pub fn agent_binary() -> Result<PathBuf, ConsoleError> {
    let exe = std::env::current_exe().map_err(|source| ConsoleError::DemoStart {
        what: "(cannot locate the running executable)".into(),
        source,
    })?;
    let path = exe.with_file_name(format!("mozen-agent{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(ConsoleError::AgentMissing { path })
    }
}

/// A free port on 127.0.0.1, found by binding port 0 (released at once for the agent to take).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts three agents forming one cluster.
pub fn start() -> Result<Demo, ConsoleError> {
    let bin = agent_binary()?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ConsoleError::DemoStart { what, source }
    };
    let dir = tempfile::Builder::new()
        .prefix("mozen-demo-")
        .tempdir()
        .map_err(io("a temporary directory"))?;
    let addrs = (0..3)
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("a free port"))?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}@{a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut demo = Demo {
        addrs: addrs.clone(),
        children: Vec::new(),
        dir,
    };
    for (i, addr) in addrs.iter().enumerate() {
        let id = i + 1;
        let log = std::fs::File::create(demo.dir().join(format!("agent-{id}.log")))
            .map_err(io("an agent log file"))?;
        let child = Command::new(&bin)
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr)
            .arg("--peers")
            .arg(&peers)
            .arg("--data-dir")
            .arg(demo.dir().join(id.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(&bin.display().to_string()))?;
        demo.children.push(child);
    }
    // An agent that cannot start (bad flags, port taken) exits at once: say so now rather
    // than leaving the console connecting forever.
    std::thread::sleep(Duration::from_millis(300));
    for (i, c) in demo.children.iter_mut().enumerate() {
        if let Ok(Some(status)) = c.try_wait() {
            let log = std::fs::read_to_string(demo.dir.path().join(format!("agent-{}.log", i + 1)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            return Err(ConsoleError::DemoAgentExited {
                id: i + 1,
                status: status.to_string(),
                log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
    }
    Ok(demo)
}

/// One call of the workload: `function(args)` with `no_cache` set so it runs every time.
async fn call(cluster: &Cluster, function: &str, args: serde_json::Value, no_cache: bool) -> bool {
    let req = pb::CallRequest {
        function: function.into(),
        args_json: args.to_string(),
        no_cache,
        timeout_ms: 60_000,
        ..Default::default()
    };
    cluster
        .rpc(Duration::from_secs(70), |mut c| {
            let req = req.clone();
            async move { c.call(req).await }
        })
        .await
        .is_ok()
}

/// Calls work on the cluster forever, from a few independent loops: `tree [3,3,nonce]` (40
/// nested requests), `bogosity` (a tree of sleeping children), `fib` (memoized children), `sleep`
/// and `spin`, and now and then `ratio(1)`, which fails (division by zero) so there is something
/// to retry. Nonces are fresh, so trees run instead of being answered from the memo table.
pub async fn workload(cluster: Arc<Cluster>) {
    // Distinct across runs against the same data (the demo's data is fresh anyway), and short.
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 100_000);
    let pause =
        |ok: bool, ms: u64| tokio::time::sleep(Duration::from_millis(if ok { ms } else { 1_000 }));
    let trees = async {
        for n in 0u64.. {
            let ok = call(
                &cluster,
                "tree",
                serde_json::json!([3, 3, format!("demo-{base}-{n}")]),
                false,
            )
            .await;
            pause(ok, 400).await;
        }
    };
    let bogus = async {
        for n in 0u64.. {
            let ok = call(
                &cluster,
                "bogosity",
                serde_json::json!([300, n, 2, 3, format!("demo-{base}-{n}")]),
                false,
            )
            .await;
            pause(ok, 600).await;
        }
    };
    let small = async {
        for n in 0u64.. {
            let ok = match n % 6 {
                0 => call(&cluster, "fib", serde_json::json!(15 + n % 20), true).await,
                1 => {
                    call(
                        &cluster,
                        "sleep",
                        serde_json::json!(200 + (n * 37) % 800),
                        true,
                    )
                    .await
                }
                2 => {
                    call(
                        &cluster,
                        "spin",
                        serde_json::json!(100 + (n * 13) % 200),
                        true,
                    )
                    .await
                }
                3 if n % 4 == 3 => {
                    // Fails on purpose (ratio(1) divides by zero): something to retry.
                    call(&cluster, "ratio", serde_json::json!(1), true).await;
                    true
                }
                _ => call(&cluster, "ratio", serde_json::json!(2 + n % 9), true).await,
            };
            pause(ok, 250).await;
        }
    };
    tokio::join!(trees, bogus, small);
}
