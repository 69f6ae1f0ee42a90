//! mozen-testkit: what the integration tests of the agent and of the CLI share: starting,
//! stopping and polling real agents (processes of the `mozen-agent` binary on 127.0.0.1 ports,
//! with real data dirs), running the `mozen` CLI against them, and batch corpora.
//!
//! - this module: [`Agent`], [`Cluster`], [`eventually`], [`free_port`], and the binaries
//!   ([`agent_bin`], [`cli_bin`]);
//! - [`batch`]: generated corpora and job files for batch tests.
//!
//! The binaries are the workspace's, found beside the test executable (`target/PROFILE/`),
//! since a test binary only knows the binaries of its own package: build them first with
//! `cargo build --workspace --bins` (`cargo nextest run --workspace` builds them too).
//!
//! Dependency rule: depends on model, proto, client and fleet, like the CLI; never on the
//! agent, so that the CLI's tests compile none of the daemon. A dev-dependency only.

pub mod batch;

use mozen_client::{Client, ClientTransport};
use mozen_proto as pb;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The workspace binary `name` beside the running test executable: tests run from
/// `target/PROFILE/deps/`, the binaries are in `target/PROFILE/`.
fn workspace_bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable sits in target/PROFILE/deps");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: build it first: cargo build --workspace --bins",
        bin.display()
    );
    bin.display().to_string()
}

/// The `mozen-agent` binary.
pub fn agent_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("mozen-agent"))
}

/// The `mozen` CLI binary.
pub fn cli_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("mozen"))
}

/// A free TCP port on 127.0.0.1 (bound, then released for the agent to take), below the
/// kernel's ephemeral range (32768 and up): a port the kernel hands out for port 0 can be
/// taken by an outgoing connection of another test's agents before this test's agent binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Agent {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    pub child: Option<Child>,
    pub peers: String,
    /// How test clients reach this agent (token, TLS).
    pub transport: ClientTransport,
}

impl Agent {
    /// Everything the agent wrote to stderr (the harness sends it to files beside its data dir).
    pub fn stderr(&self) -> String {
        let name = self.dir.file_name().unwrap().to_string_lossy().to_string();
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}.log")))
            })
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the agent with `prefix` before its usual flags (e.g. `["repair"]`); its stderr
    /// goes to a new log file beside its data dir, returned.
    pub fn start_with(&mut self, prefix: &[&str]) -> PathBuf {
        assert!(self.child.is_none(), "agent {} already running", self.id);
        let log_path = self.dir.with_extension(format!(
            "log{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = self.command(prefix);
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn mozen-agent"));
        log_path
    }

    /// The agent's command line, `prefix` before its usual flags.
    fn command(&self, prefix: &[&str]) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.args(prefix)
            .args([
                "--id",
                &self.id.to_string(),
                "--listen",
                &self.addr,
                "--data-dir",
            ])
            .arg(&self.dir)
            .args(["--peers", &self.peers, "--lease", "2s"])
            .args(&self.extra)
            .env(
                "MOZEN_LOG",
                std::env::var("TEST_AGENT_LOG").unwrap_or("info,openraft=error".into()),
            );
        cmd
    }

    /// Starts the agent and waits up to `limit` for it to exit on its own (a refusal to
    /// start): its exit code and what it wrote to stderr. Fails the test if it is still
    /// running then.
    pub fn run_to_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let log = self.start_with(&[]);
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return (s.code(), std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "agent {} still runs after {limit:?}; its log:\n{}",
                    self.id,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the `mozen` CLI against this agent alone.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(cli_bin())
            .env("MOZEN_ADDR", &self.addr)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not stop after SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The file this agent's fault control reads (see `Cluster::with_fault_control`).
    pub fn fault_file(&self) -> PathBuf {
        self.dir.with_extension("faults")
    }

    /// This agent's own Raft status (not the leader's).
    pub async fn status(&self) -> Option<pb::RaftStatus> {
        status_via(self.client()).await
    }

    pub fn client(&self) -> Client {
        Client::with_transport(
            [self.addr.clone()],
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(20),
            self.transport.clone(),
        )
        .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub agents: Vec<Agent>,
}

impl Cluster {
    /// `n` agents that know each other; all started.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(n, extra);
        for a in &mut c.agents {
            a.start();
        }
        c
    }

    /// `n` agents configured but not started.
    pub fn new(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = mozen_model::flags::peers_arg(&addrs);
        let agents = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Agent {
                id: i as u64 + 1,
                addr: a.clone(),
                dir: dir.path().join(format!("n{}", i + 1)),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
                peers: peers.clone(),
                transport: ClientTransport::default(),
            })
            .collect();
        Cluster { dir, agents }
    }

    /// Adds an agent that points at the existing ones (not started).
    pub fn add(&mut self, id: u64, extra: &[&str]) -> usize {
        let addr = format!("127.0.0.1:{}", free_port());
        let peers = self
            .agents
            .iter()
            .map(|a| format!("{}@{}", a.id, a.addr))
            .collect::<Vec<_>>()
            .join(",");
        self.agents.push(Agent {
            id,
            addr,
            dir: self.dir.path().join(format!("n{id}")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            peers,
            transport: self.transport(),
        });
        self.agents.len() - 1
    }

    /// Enables the test-only fault control on every agent (call before starting them).
    pub fn with_fault_control(mut self) -> Cluster {
        for a in &mut self.agents {
            let f = a.fault_file().display().to_string();
            a.extra.extend(["--fault-file".to_string(), f]);
        }
        self
    }

    /// Cuts every link between the agents in `side` and the others, in both directions.
    pub fn partition(&self, side: &[u64]) {
        let files: Vec<(u64, PathBuf)> =
            self.agents.iter().map(|a| (a.id, a.fault_file())).collect();
        let files: Vec<(u64, &Path)> = files.iter().map(|(i, p)| (*i, p.as_path())).collect();
        mozen_fleet::faults::write_partition(&files, side).unwrap();
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.partition(&[]);
    }

    /// A client that talks only to the agents `ids`.
    pub fn client_of(&self, ids: &[u64]) -> Client {
        let addrs: Vec<String> = self
            .agents
            .iter()
            .filter(|a| ids.contains(&a.id))
            .map(|a| a.addr.clone())
            .collect();
        Client::with_transport(
            addrs,
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(60),
            self.transport(),
        )
        .unwrap()
    }

    pub fn addrs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> Client {
        let ids: Vec<u64> = self.agents.iter().map(|a| a.id).collect();
        self.client_of(&ids)
    }

    /// The transport test clients use (that of the first agent).
    pub fn transport(&self) -> ClientTransport {
        self.agents
            .first()
            .map(|a| a.transport.clone())
            .unwrap_or_default()
    }

    /// Makes test clients of every agent use `transport` (for clusters with a token or TLS).
    pub fn with_client_transport(mut self, transport: ClientTransport) -> Cluster {
        for a in &mut self.agents {
            a.transport = transport.clone();
        }
        self
    }

    pub async fn status(&self) -> Option<pb::RaftStatus> {
        status_via(self.client()).await
    }

    /// The Raft status as the agents `ids` answer it (the first of them that answers).
    pub async fn status_of(&self, ids: &[u64]) -> Option<pb::RaftStatus> {
        status_via(self.client_of(ids)).await
    }

    pub async fn nodes(&self) -> Vec<pb::Node> {
        let c = self.client();
        c.rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
            .await
            .map(|r| r.nodes)
            .unwrap_or_default()
    }

    /// Waits until there is a leader and `n` nodes are registered and active.
    pub async fn ready(&self, n: usize) {
        eventually(Duration::from_secs(30), "cluster ready", || async {
            let nodes = self.nodes().await;
            nodes.len() == n && nodes.iter().all(|x| x.state == "active")
        })
        .await;
    }

    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.status().await.and_then(|s| s.leader_id) {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a leader other than `old`.
    pub async fn new_leader(&self, old: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(l) = self.status().await.and_then(|s| s.leader_id)
                && l != old
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no new leader within 15s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn by_id(&self, id: u64) -> &Agent {
        self.agents.iter().find(|a| a.id == id).unwrap()
    }

    pub fn agent(&mut self, id: u64) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.id == id).unwrap()
    }

    /// Runs the `mozen` CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(cli_bin())
            .env("MOZEN_ADDR", self.addrs())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "mozen {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The Raft status as answered through `c` (None after 3 s without an answer).
pub async fn status_via(c: Client) -> Option<pb::RaftStatus> {
    tokio::time::timeout(
        Duration::from_secs(3),
        c.rpc(|mut c| async move { c.status(pb::StatusRequest {}).await }),
    )
    .await
    .ok()?
    .ok()
}

/// Polls `cond` until it holds, failing the test with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// The row of `mozen functions --json` for `function` (null when it never ran).
    pub fn function_stats(&self, function: &str) -> serde_json::Value {
        let fs = self.cli_json(&["functions", "--json"]);
        fs.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == function)
            .cloned()
            .unwrap_or_default()
    }
}

/// The Prometheus text an agent serves on `addr` (`--metrics`).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
