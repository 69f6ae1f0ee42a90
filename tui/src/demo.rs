//! `--demo`: three local agents (child processes, data in a temporary directory removed on
//! exit) and a steady workload of nested calls, so a newcomer sees the cluster move.

use mozen_proto as pb;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Demo {
    pub addrs: Vec<String>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `mozen-agent` binary next to this executable.
pub fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name("mozen-agent");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release` (it sits next to mozen-console)",
            p.display()
        ))
    }
}

pub fn start() -> Result<Demo, String> {
    let bin = agent_binary()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0").map(|l| {
                format!(
                    "127.0.0.1:{}",
                    l.local_addr().map(|a| a.port()).unwrap_or(0)
                )
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}@{a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("agent-{}.log", i + 1)))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                a,
                "--peers",
                &peers,
                "--slots",
                "4",
                "--data-dir",
            ])
            .arg(dir.path().join(format!("n{}", i + 1)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        children.push(child);
    }
    Ok(Demo {
        addrs,
        children,
        _dir: dir,
    })
}

/// Calls nested work forever: trees, fib with fresh offsets, sleeps and an occasional failure.
pub async fn workload(addrs: Vec<String>) {
    let mut n: u64 = 0;
    loop {
        n += 1;
        for a in &addrs {
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{a}")) else {
                continue;
            };
            let mut c = pb::mozen_client::MozenClient::new(ep.connect_lazy());
            let calls = [
                ("tree", format!("[2,4,\"demo-{n}\"]")),
                ("bogosity", format!("[50,0,2,3,\"demo-{n}\"]")),
                ("spin", format!("{}", 100 + (n % 5) * 50)),
                ("sleep", format!("{}", 200 + n % 300)),
                ("ratio", format!("{}", n % 7)),
            ];
            for (function, args_json) in calls {
                let req = pb::CallRequest {
                    function: function.into(),
                    args_json,
                    ..Default::default()
                };
                let _ = c.submit(req).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
