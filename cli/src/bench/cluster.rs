//! A local cluster of real `mozen-agent` processes: ephemeral 127.0.0.1 ports, one durable sled
//! data dir each, every agent a voter. Dropping it SIGKILLs whatever still runs.

use super::BenchError;
use super::report::RunRecord;
use mozen_client::Client;
use mozen_proto as pb;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a fresh cluster may take to elect a leader and register every node.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One agent process.
struct Member {
    id: u64,
    addr: String,
    log: PathBuf,
    /// None once killed.
    child: Option<Child>,
}

pub struct LocalCluster {
    members: Mutex<Vec<Member>>,
    addrs: Vec<String>,
    /// From the first spawn until every node was registered and active.
    pub startup: Duration,
}

/// A free TCP port on 127.0.0.1 (bound, then released for an agent to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// Starts `n` agents whose data dirs and logs live under `dir`, and waits until all `n`
    /// nodes are registered and active.
    pub async fn start(agent_bin: &Path, n: usize, dir: &Path) -> Result<LocalCluster, BenchError> {
        Self::start_with(agent_bin, n, dir, false).await
    }

    /// As [`start`](Self::start); with `fault_functions`, each agent also gets an empty fault
    /// file, which registers the fault functions (`fault.spin_inline`, a naive CPU-bound
    /// `async fn`) and injects nothing.
    pub async fn start_with(
        agent_bin: &Path,
        n: usize,
        dir: &Path,
        fault_functions: bool,
    ) -> Result<LocalCluster, BenchError> {
        Self::start_with_flags(agent_bin, n, dir, fault_functions, &[]).await
    }

    /// As [`start_with`](Self::start_with), each agent also given `flags`.
    pub async fn start_with_flags(
        agent_bin: &Path,
        n: usize,
        dir: &Path,
        fault_functions: bool,
        flags: &[String],
    ) -> Result<LocalCluster, BenchError> {
        // A port found free can be taken by another program before the agent binds it: then
        // the cluster starts again on other ports, in a clean dir.
        let mut attempt = 1;
        loop {
            match Self::start_once(agent_bin, n, dir, fault_functions, flags).await {
                Err(BenchError::Runtime(m)) if m.contains("cannot bind") && attempt < 3 => {
                    eprintln!("a port was taken before an agent could bind it; starting again");
                    let _ = std::fs::remove_dir_all(dir);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        agent_bin: &Path,
        n: usize,
        dir: &Path,
        fault_functions: bool,
        flags: &[String],
    ) -> Result<LocalCluster, BenchError> {
        let rt = |m: String| BenchError::Runtime(m);
        std::fs::create_dir_all(dir)
            .map_err(|e| rt(format!("cannot create {}: {e}", dir.display())))?;
        let addrs = (0..n)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| rt(format!("no free port on 127.0.0.1: {e}")))?;
        let peers = mozen_model::flags::peers_arg(&addrs);
        let started = Instant::now();
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let log = dir.join(format!("agent-{id}.log"));
            let log_file = std::fs::File::create(&log)
                .map_err(|e| rt(format!("cannot create {}: {e}", log.display())))?;
            let mut cmd = Command::new(agent_bin);
            cmd.args(["--id", &id.to_string(), "--listen", addr, "--data-dir"])
                .arg(dir.join(format!("n{id}")))
                .args(["--peers", &peers, "--voters", &voters(n).to_string()])
                .args(flags);
            if fault_functions {
                let faults = dir.join(format!("faults-{id}"));
                std::fs::write(&faults, "")
                    .map_err(|e| rt(format!("cannot create {}: {e}", faults.display())))?;
                cmd.arg("--fault-file").arg(faults);
            }
            let child = cmd
                .env(
                    "MOZEN_LOG",
                    std::env::var("MOZEN_BENCH_AGENT_LOG")
                        .unwrap_or_else(|_| "warn,openraft=error".into()),
                )
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| rt(format!("cannot start {}: {e}", agent_bin.display())))?;
            members.push(Member {
                id,
                addr: addr.clone(),
                log,
                child: Some(child),
            });
        }
        let mut cluster = LocalCluster {
            members: Mutex::new(members),
            addrs,
            startup: Duration::ZERO,
        };
        cluster.ready(n).await?;
        cluster.startup = started.elapsed();
        Ok(cluster)
    }

    /// How many agents it started.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether it started none (never: at least one agent is needed to start).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// A client that knows every agent and follows the leader.
    pub fn client(&self) -> Client {
        Client::with_options(
            self.addrs.clone(),
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(60),
        )
        .expect("at least one address")
    }

    /// A client like [`client`](Self::client) that names itself `id` (`mozen-client-id`).
    pub fn client_as(&self, id: &str) -> Result<Client, String> {
        let transport = mozen_client::ClientTransport::default().with_client_id(id)?;
        Client::with_transport(
            self.addrs.clone(),
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(60),
            transport,
        )
        .map_err(|e| e.to_string())
    }

    async fn ready(&self, n: usize) -> Result<(), BenchError> {
        let client = self.client();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(exited) = self.exited() {
                return Err(BenchError::Runtime(format!(
                    "agent {exited} exited while the cluster was starting; its log ends with:\n{}",
                    self.log_tail(exited)
                )));
            }
            let nodes = tokio::time::timeout(
                Duration::from_secs(2),
                client.rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await }),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|r| r.nodes)
            .unwrap_or_default();
            if nodes.len() == n && nodes.iter().all(|x| x.state == "active") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Runtime(format!(
                    "{n} agents did not form a cluster within {READY_WITHIN:?} ({} of {n} nodes active); agent 1's log ends with:\n{}",
                    nodes.iter().filter(|x| x.state == "active").count(),
                    self.log_tail(1)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The id of an agent that exited on its own, if any.
    fn exited(&self) -> Option<u64> {
        let mut members = self.members.lock().expect("members");
        members.iter_mut().find_map(|m| match m.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))).then_some(m.id),
            None => None,
        })
    }

    /// The leader's id, as the agents report it (polls until one is known or `within` passes).
    pub async fn leader(&self, client: &Client, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let s = tokio::time::timeout(
                Duration::from_secs(2),
                client.rpc(|mut c| async move { c.status(pb::StatusRequest {}).await }),
            )
            .await
            .ok()
            .and_then(Result::ok);
            if let Some(id) = s.and_then(|s| s.leader_id) {
                return Some(id);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs agent `id` and reaps it; false if it was not running.
    pub fn kill(&self, id: u64) -> bool {
        let mut members = self.members.lock().expect("members");
        let Some(mut child) = members
            .iter_mut()
            .find(|m| m.id == id)
            .and_then(|m| m.child.take())
        else {
            return false;
        };
        let killed = child.kill().is_ok();
        let _ = child.wait();
        killed
    }

    /// Process ids of the agents still running.
    pub fn pids(&self) -> Vec<u32> {
        let members = self.members.lock().expect("members");
        members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// CPU seconds used so far by the agents still running.
    pub fn cpu_s(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(super::report::process_cpu_s)
            .sum()
    }

    fn log_tail(&self, id: u64) -> String {
        let members = self.members.lock().expect("members");
        let Some(m) = members.iter().find(|m| m.id == id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&m.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The last lines of every agent's log when a workload of `rec` failed.
    pub fn log_tail_if_failed(&self, rec: &RunRecord) -> Option<Value> {
        if !rec.failed() {
            return None;
        }
        let ids: Vec<(u64, String)> = {
            let members = self.members.lock().expect("members");
            members.iter().map(|m| (m.id, m.addr.clone())).collect()
        };
        Some(Value::Array(
            ids.into_iter()
                .map(|(id, addr)| json!({"id": id, "addr": addr, "log_tail": self.log_tail(id)}))
                .collect(),
        ))
    }
}

/// Voters at bootstrap: every agent, rounded down to an odd group size the agent accepts.
fn voters(n: usize) -> usize {
    match n {
        0..=2 => 1,
        3..=4 => 3,
        5..=6 => 5,
        _ => 7,
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let members = self.members.get_mut().expect("members");
        for m in members.iter_mut() {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
