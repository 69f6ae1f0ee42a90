//! A local cluster of real `mozen-agent` processes that the nemesis can kill, pause, cut off
//! and restart. Every agent keeps its address and data dir across restarts, and is started
//! with the test-only `--fault-file` so that partitions are cut inside its transport.

use super::ChaosError;
use mozen_client::Client;
use mozen_proto as pb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One agent process (running, paused or stopped).
pub struct LocalAgent {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub fault_file: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl LocalAgent {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// A client that talks to this agent only.
    pub fn client(&self, patience: Duration) -> Client {
        Client::with_options([self.addr.clone()], pb::DEFAULT_MAX_MESSAGE_BYTES, patience)
            .expect("one address")
    }
}

/// The agents of one chaos run.
pub struct LocalCluster {
    bin: PathBuf,
    pub agents: Vec<LocalAgent>,
    peers: String,
    voters: usize,
}

/// A free TCP port on 127.0.0.1 (bound, then released for an agent to take).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        // The process may have died on its own; there is nothing to signal then.
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

impl LocalCluster {
    /// `n` agents under `dir`, configured but not started. Voters: the largest odd count up
    /// to `n` (at most 7); the other agents are workers.
    pub fn new(bin: &Path, dir: &Path, n: usize) -> Result<LocalCluster, ChaosError> {
        let io = |e: std::io::Error| ChaosError::Setup(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let addrs = (0..n)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        let agents = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let id = i as u64 + 1;
                LocalAgent {
                    id,
                    addr: addr.clone(),
                    dir: dir.join(format!("agent-{id}")),
                    fault_file: dir.join(format!("agent-{id}.faults")),
                    log: dir.join(format!("agent-{id}.log")),
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let voters = match n {
            0..=2 => 1,
            3 | 4 => 3,
            5 | 6 => 5,
            _ => 7,
        };
        Ok(LocalCluster {
            bin: bin.to_path_buf(),
            agents,
            peers: mozen_model::flags::peers_arg(&addrs),
            voters,
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.agents.iter().map(|a| a.id).collect()
    }

    /// Ids of the bootstrap voters (the lowest ids).
    pub fn voter_ids(&self) -> Vec<u64> {
        self.ids().into_iter().take(self.voters).collect()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.addr.clone()).collect()
    }

    fn agent_mut(&mut self, id: u64) -> &mut LocalAgent {
        self.agents
            .iter_mut()
            .find(|a| a.id == id)
            .expect("known agent id")
    }

    pub fn agent(&self, id: u64) -> &LocalAgent {
        self.agents
            .iter()
            .find(|a| a.id == id)
            .expect("known agent id")
    }

    /// Starts agent `id` on its data dir (no-op when it runs).
    pub fn start(&mut self, id: u64) -> Result<(), ChaosError> {
        let bin = self.bin.clone();
        let peers = self.peers.clone();
        let voters = self.voters.to_string();
        let a = self.agent_mut(id);
        if a.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", a.log.display())))?;
        let child = Command::new(&bin)
            .args(["--id", &a.id.to_string(), "--listen", &a.addr, "--data-dir"])
            .arg(&a.dir)
            .args(["--peers", &peers, "--voters", &voters, "--lease", "2s"])
            .args(["--slots", "4", "--shutdown-deadline", "2s", "--fault-file"])
            .arg(&a.fault_file)
            // Checkpoints every few calls and frequent corruption checks: a voter quarantined
            // under these faults (its state diverged, or the check is wrong) stops applying,
            // which the final convergence check reports.
            .args([
                "--checkpoint-every",
                "64",
                "--corruption-check-interval",
                "1s",
            ])
            .env("MOZEN_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("cannot start {}: {e}", bin.display())))?;
        a.child = Some(child);
        a.paused = false;
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<(), ChaosError> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    /// SIGKILLs agent `id` (paused or not) and reaps it.
    pub async fn kill(&mut self, id: u64) {
        let a = self.agent_mut(id);
        if let Some(mut c) = a.child.take() {
            let _ = c.kill().await;
        }
        a.paused = false;
    }

    pub async fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id).await;
        }
    }

    /// SIGSTOPs agent `id`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) {
        let a = self.agent_mut(id);
        if let Some(c) = &a.child {
            signal(c, Signal::SIGSTOP);
            a.paused = true;
        }
    }

    /// SIGCONTs agent `id`.
    pub fn resume(&mut self, id: u64) {
        let a = self.agent_mut(id);
        if let Some(c) = &a.child {
            signal(c, Signal::SIGCONT);
        }
        a.paused = false;
    }

    /// Cuts every link between the agents in `side` and the others, in both directions.
    pub fn partition(&self, side: &[u64]) -> Result<(), ChaosError> {
        let files: Vec<(u64, &Path)> = self
            .agents
            .iter()
            .map(|a| (a.id, a.fault_file.as_path()))
            .collect();
        mozen_fleet::faults::write_partition(&files, side)
            .map_err(|e| ChaosError::Setup(format!("writing fault files: {e}")))
    }

    /// Restores every link.
    pub fn heal(&self) -> Result<(), ChaosError> {
        self.partition(&[])
    }

    /// Undoes every fault: links restored, paused agents resumed, stopped agents started.
    pub fn heal_all(&mut self) -> Result<(), ChaosError> {
        self.heal()?;
        for id in self.ids() {
            self.resume(id);
            self.start(id)?;
        }
        Ok(())
    }

    /// A client of the whole cluster.
    pub fn client(&self, patience: Duration) -> Client {
        Client::with_options(self.addrs(), pb::DEFAULT_MAX_MESSAGE_BYTES, patience)
            .expect("addresses")
    }

    /// The leader as a running, unpaused agent sees it (None when no one answers in time).
    pub async fn leader(&self) -> Option<u64> {
        for a in self.agents.iter().filter(|a| a.is_running() && !a.paused) {
            let c = a.client(Duration::from_millis(500));
            let s = tokio::time::timeout(
                Duration::from_secs(1),
                c.rpc(|mut c| async move { c.status(pb::StatusRequest {}).await }),
            )
            .await;
            if let Ok(Ok(s)) = s
                && s.leader_id.is_some()
            {
                return s.leader_id;
            }
        }
        None
    }

    /// Waits until every agent names the same leader and the leader's node table lists every
    /// agent as active.
    pub async fn wait_ready(&self, limit: Duration) -> Result<u64, ChaosError> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.ready_once().await {
                Ok(l) => return Ok(l),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(ChaosError::NotReady(format!(
                    "cluster not ready after {limit:?}: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready_once(&self) -> Result<u64, String> {
        let mut leader = None;
        for a in &self.agents {
            let c = a.client(Duration::from_millis(500));
            let s = tokio::time::timeout(
                Duration::from_secs(2),
                c.rpc(|mut c| async move { c.status(pb::StatusRequest {}).await }),
            )
            .await
            .map_err(|_| format!("agent {} does not answer", a.id))?
            .map_err(|e| format!("agent {}: {e}", a.id))?;
            let Some(l) = s.leader_id else {
                return Err(format!("agent {} knows no leader", a.id));
            };
            if leader.is_some_and(|x| x != l) {
                return Err(format!("agents disagree on the leader ({leader:?} vs {l})"));
            }
            leader = Some(l);
        }
        let l = leader.ok_or("no agents")?;
        let c = self.agent(l).client(Duration::from_millis(500));
        let nodes = tokio::time::timeout(
            Duration::from_secs(2),
            c.rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await }),
        )
        .await
        .map_err(|_| format!("leader {l} does not list nodes"))?
        .map_err(|e| format!("leader {l}: {e}"))?
        .nodes;
        let active = nodes.iter().filter(|n| n.state == "active").count();
        if active != self.agents.len() {
            return Err(format!(
                "{active} of {} nodes active at leader {l}",
                self.agents.len()
            ));
        }
        Ok(l)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // `kill_on_drop` SIGKILLs the children; a paused process dies from SIGKILL as well.
        for a in &mut self.agents {
            if let Some(c) = a.child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}
