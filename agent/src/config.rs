//! The agent's command line, validated once into an [`AgentConfig`].
//!
//! Errors quote the bad value and say how to fix it; nothing downstream re-validates.

use crate::security::{AccessList, Security, check_own_token, load_tls, read_token};
use clap::Parser;
use mozen_model::NodeId;
pub use mozen_model::flags::{
    ConfigError, Peer, parse_host_port, parse_peers, parse_size, peers_arg,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Raw flags of `mozen-agent`, exactly as typed.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mozen-agent",
    version,
    about = "A Mozen cluster member: Raft voter or worker, scheduler when leader",
    after_help = "Repair a damaged or quarantined data dir (exit code 3): run `mozen-agent repair` \
                  followed by this agent's usual flags. It moves the dir aside and rejoins the \
                  cluster from its peers (docs/operations.md, \"A damaged data dir\").\n\n\
                  Exit codes: 0 clean stop, 1 error, 2 bad flags, 3 damaged data dir, 4 the Raft \
                  core or an essential task died."
)]
pub struct AgentArgs {
    /// This agent's node id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<String>,
    /// gRPC address to listen on, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Address other agents and clients use to reach this one (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Other agents, ID@HOST:PORT separated by commas.
    #[arg(long, default_value = "")]
    pub peers: String,
    /// Data directory (default ./mozen-data/<id>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Human-readable node name (default: node-<id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Worker slots (default 3 x cpus).
    #[arg(long)]
    pub slots: Option<String>,
    /// CPUs to advertise (default: detected).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory to advertise, e.g. 16GiB, 512MiB, 1000000 (default: detected).
    #[arg(long)]
    pub memory: Option<String>,
    /// Number of Raft voters at bootstrap: 1, 3, 5 or 7.
    #[arg(long, default_value = "3")]
    pub voters: String,
    /// Heartbeat lease after which the leader marks a silent node Down, e.g. 3s.
    #[arg(long, default_value = "3s")]
    pub lease: String,
    /// How long a stopping agent lets running requests finish before handing them back.
    #[arg(long, default_value = "10s")]
    pub shutdown_deadline: String,
    /// Largest gRPC message accepted or sent, e.g. 16MiB.
    #[arg(long, default_value = "16MiB")]
    pub max_message: String,
    /// Most memoized results kept; the oldest finished are forgotten first.
    #[arg(long, default_value = "1000000")]
    pub memo_limit: String,
    /// Largest JSON arguments of one call, e.g. 1MiB (default: --max-message).
    #[arg(long)]
    pub max_args: Option<String>,
    /// Largest result of one execution, e.g. 4MiB; a larger one fails the request (default:
    /// --max-message).
    #[arg(long)]
    pub max_result: Option<String>,
    /// Most outstanding (queued or running) requests in the cluster; new top-level calls
    /// beyond it get RESOURCE_EXHAUSTED (MZ-QUEUE-FULL) with a retry hint.
    #[arg(long, default_value = "100000")]
    pub max_queue: String,
    /// Most argument bytes of outstanding requests in the cluster, e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    pub max_queued_bytes: String,
    /// Most outstanding requests of one client identity (default: half of --max-queue).
    #[arg(long)]
    pub max_queue_per_client: Option<String>,
    /// Most argument bytes outstanding for one client identity (default: half of
    /// --max-queued-bytes).
    #[arg(long)]
    pub max_queued_bytes_per_client: Option<String>,
    /// Most open calls (Call, CallBatch, Submit, Get, Watch) per client connection.
    #[arg(long, default_value = "256")]
    pub max_client_streams: String,
    /// Most concurrent HTTP/2 streams (RPCs) on one connection, advertised to the client;
    /// more wait in the client until one ends.
    #[arg(long, default_value = "256")]
    pub max_streams_per_connection: String,
    /// Most connections accepted at once (clients and peers); more are closed at once
    /// (default: the open-file limit less 64).
    #[arg(long)]
    pub max_client_connections: Option<String>,
    /// Allow the built-in `exec` function to run programs on this machine.
    #[arg(long)]
    pub allow_exec: bool,
    /// Write every call down in the log before it runs. By default a short call whose caller
    /// waits runs at once and is written down with its value in one fact (or when it takes
    /// long): see docs/architecture.md, "Express calls".
    #[arg(long)]
    pub no_express: bool,
    /// Build a snapshot of the state every this many log entries (10 or more). Smaller: faster
    /// restarts and catch-up, more snapshot writes.
    #[arg(long, value_name = "ENTRIES", default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Serve Prometheus metrics on HOST:PORT.
    #[arg(long)]
    pub metrics: Option<String>,
    /// File holding the cluster token; every RPC must carry it, and the agent sends it to
    /// its peers. Required on a non-loopback --listen address unless --insecure.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Credentials this agent accepts, each with its roles (peer, worker, operator, client)
    /// and name: lines of `<role>[,<role>...] <name> <blake3-hex-of-token>` (see
    /// docs/operations.md, "Roles"). Without it, the --token-file token grants every role.
    #[arg(long, value_name = "PATH")]
    pub access_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    pub insecure: bool,
    /// TLS certificate of this agent (PEM); needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the cluster's certificates: verifies the peers this
    /// agent dials and the client certificates it demands (mutual TLS).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Log entries between two state checkpoints, which voters compare to find a damaged
    /// member (docs/operations.md, "Corruption checks"). Give every agent the same value.
    #[arg(long, default_value = "4096")]
    pub checkpoint_every: String,
    /// How often a voter compares its state checkpoints with the other voters', e.g. 30s.
    #[arg(long, default_value = "30s")]
    pub corruption_check_interval: String,
    /// Test-only fault injection: a file listing peer ids this agent is cut off from.
    #[arg(long, value_name = "PATH", hide = true)]
    pub fault_file: Option<PathBuf>,
    /// Hosts file (see docs/operations.md): when this agent leads, it follows the file's
    /// autoscaling policy, starting and stopping agents of its pools.
    #[arg(long, value_name = "PATH")]
    pub hosts: Option<PathBuf>,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub advertise: String,
    pub peers: Vec<Peer>,
    pub data_dir: PathBuf,
    pub name: String,
    pub slots: u32,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub voters: usize,
    pub lease: Duration,
    pub shutdown_deadline: Duration,
    pub max_message: usize,
    pub memo_limit: u64,
    /// Argument, result, queue and stream limits of the public API.
    pub limits: crate::limits::Limits,
    pub allow_exec: bool,
    /// Short calls with a waiting caller run before they are written down.
    pub express: bool,
    /// Set by `mozen-agent repair` when the node was a voter: once joined, it asks to be
    /// promoted back (as a learner first, a voter once caught up).
    pub rejoin_as_voter: bool,
    /// Log entries between snapshots (`--snapshot-every`).
    pub snapshot_every: u64,
    pub metrics: Option<SocketAddr>,
    /// Token and TLS material (see [`crate::security`]).
    pub security: Security,
    /// Test-only fault table file (see [`crate::faults`]).
    pub fault_file: Option<PathBuf>,
    /// Log entries between two state checkpoints (see [`mozen_store::checkpoint`]).
    pub checkpoint_every: u64,
    /// Time between two comparisons of the voters' checkpoints (see [`crate::integrity`]).
    pub corruption_check_interval: Duration,
    /// The hosts file whose autoscaling policy this agent follows when it leads.
    pub hosts: Option<std::sync::Arc<crate::hosts::HostsFile>>,
}

fn bad(flag: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::bad(flag, value, why)
}

fn parse_duration(flag: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s).map_err(|e| bad(flag, s, format!("{e} (examples: 500ms, 3s, 1m)")))
}

fn parse_positive(flag: &str, s: &str) -> Result<u32, ConfigError> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(flag, s, "must be a positive integer")),
    }
}

/// Detected CPUs of this machine.
/// Room in a Raft message beside the values its entry carries (keys, names, framing).
const RAFT_FRAMING: usize = 1 << 20;

/// The slowest link between voters an entry of the largest size must cross in
/// [`AgentConfig::append_entries_timeout_ms`] (bytes per second).
const SLOWEST_PEER_LINK: u64 = 16 << 20;

impl AgentConfig {
    /// The largest message between Raft members, derived from the API's limits so that every
    /// entry the API can cause replicates: one log entry holds at most one value past the
    /// proposer's batching bound, and the largest fact is a call run before it was written
    /// down (its arguments and its result together), or what one message of `--max-message`
    /// brings (a batch of blobs).
    pub fn raft_message(&self) -> usize {
        (self.limits.max_args + self.limits.max_result).max(self.max_message) + RAFT_FRAMING
    }

    /// How long an AppendEntries carrying entries may take to reach a follower and be written
    /// there: the largest one ([`Self::raft_message`]) over [`SLOWEST_PEER_LINK`], at least a
    /// second. Heartbeats keep the 100 ms of the Raft timing (see `context::raft_config`).
    pub fn append_entries_timeout_ms(&self) -> u64 {
        (self.raft_message() as u64 * 1000 / SLOWEST_PEER_LINK).max(1000)
    }
}

pub fn detect_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Detected memory of this machine (MemTotal), or 1 GiB when unknown.
pub fn detect_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                })
        })
        .unwrap_or(1 << 30)
}

impl AgentArgs {
    /// Validates every flag.
    pub fn validate(&self) -> Result<AgentConfig, ConfigError> {
        let id_s = self
            .id
            .as_deref()
            .ok_or_else(|| ConfigError("--id is required (a positive integer)".into()))?;
        let id: NodeId = match id_s.parse() {
            Ok(i) if i > 0 => i,
            _ => return Err(bad("id", id_s, "must be a positive integer")),
        };
        // Port 0: the system picks a free port, advertised once bound (see `node::run`).
        if !self.listen.ends_with(":0") {
            parse_host_port("listen", &self.listen, &self.listen)?;
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            bad(
                "listen",
                &self.listen,
                "must be an IP address and port, e.g. 0.0.0.0:7070",
            )
        })?;
        let advertise = match &self.advertise {
            Some(a) => parse_host_port("advertise", a, a)?,
            None if listen.ip().is_unspecified() => {
                return Err(bad(
                    "listen",
                    &self.listen,
                    "listening on all interfaces needs --advertise HOST:PORT",
                ));
            }
            None => self.listen.clone(),
        };
        let peers = parse_peers(&self.peers)?;
        if let Some(p) = peers.iter().find(|p| p.id == id && p.addr != advertise) {
            return Err(bad(
                "peers",
                &format!("{}@{}", p.id, p.addr),
                format!("names this agent's id {id} with another address than {advertise}"),
            ));
        }
        let peers: Vec<Peer> = peers.into_iter().filter(|p| p.id != id).collect();
        let cpus = match &self.cpus {
            Some(c) => parse_positive("cpus", c)?,
            None => detect_cpus(),
        };
        let memory_bytes = match &self.memory {
            Some(m) => match parse_size(m) {
                Some(b) if b > 0 => b,
                _ => {
                    return Err(bad(
                        "memory",
                        m,
                        "expected a size such as 16GiB, 512MiB or 1000000",
                    ));
                }
            },
            None => detect_memory(),
        };
        let slots = match &self.slots {
            Some(s) => parse_positive("slots", s)?,
            None => mozen_model::default_slots(cpus),
        };
        let voters = match self.voters.as_str() {
            "1" => 1,
            "3" => 3,
            "5" => 5,
            "7" => 7,
            v => return Err(bad("voters", v, "must be 1, 3, 5 or 7")),
        };
        let lease = parse_duration("lease", &self.lease)?;
        if lease < Duration::from_millis(500) {
            return Err(bad("lease", &self.lease, "must be at least 500ms"));
        }
        let shutdown_deadline = parse_duration("shutdown-deadline", &self.shutdown_deadline)?;
        let max_message = match parse_size(&self.max_message) {
            Some(b) if b >= 64 * 1024 && b <= u32::MAX as u64 => b as usize,
            _ => {
                return Err(bad(
                    "max-message",
                    &self.max_message,
                    "expected a size between 64KiB and 4GiB, e.g. 16MiB",
                ));
            }
        };
        let memo_limit: u64 = self
            .memo_limit
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("memo-limit", &self.memo_limit, "must be a positive integer"))?;
        let size_limit = |flag: &str, v: &Option<String>| match v.as_deref().map(parse_size) {
            None => Ok(max_message),
            Some(Some(b)) if b > 0 && b <= max_message as u64 => Ok(b as usize),
            _ => Err(bad(
                flag,
                v.as_deref().unwrap_or_default(),
                format!(
                    "expected a size between 1 and --max-message ({max_message} bytes), e.g. 1MiB"
                ),
            )),
        };
        let count = |flag: &str, v: &str| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(flag, v, "must be a positive integer")),
        };
        let max_queue = count("max-queue", &self.max_queue)?;
        let bytes = |flag: &str, v: &str| match parse_size(v) {
            Some(b) if b > 0 => Ok(b),
            _ => Err(bad(flag, v, "expected a size above 0, e.g. 256MiB")),
        };
        let max_queued_bytes = bytes("max-queued-bytes", &self.max_queued_bytes)?;
        let max_queue_per_client = match &self.max_queue_per_client {
            Some(v) => match count("max-queue-per-client", v)? {
                n if n <= max_queue => n,
                _ => {
                    return Err(bad(
                        "max-queue-per-client",
                        v,
                        format!("must be at most --max-queue ({max_queue})"),
                    ));
                }
            },
            None => (max_queue / 2).max(1),
        };
        let max_queued_bytes_per_client = match &self.max_queued_bytes_per_client {
            Some(v) => match bytes("max-queued-bytes-per-client", v)? {
                b if b <= max_queued_bytes => b,
                _ => {
                    return Err(bad(
                        "max-queued-bytes-per-client",
                        v,
                        format!("must be at most --max-queued-bytes ({max_queued_bytes} bytes)"),
                    ));
                }
            },
            None => (max_queued_bytes / 2).max(1),
        };
        let limits = crate::limits::Limits {
            max_args: size_limit("max-args", &self.max_args)?,
            max_result: size_limit("max-result", &self.max_result)?,
            max_queue,
            max_queued_bytes,
            max_queue_per_client,
            max_queued_bytes_per_client,
            max_client_streams: count("max-client-streams", &self.max_client_streams)?,
            max_streams_per_connection: count(
                "max-streams-per-connection",
                &self.max_streams_per_connection,
            )?
            .try_into()
            .map_err(|_| {
                bad(
                    "max-streams-per-connection",
                    &self.max_streams_per_connection,
                    "must be at most 4294967295",
                )
            })?,
            max_client_connections: match &self.max_client_connections {
                Some(v) => count("max-client-connections", v)?,
                None => crate::connections::default_cap(crate::connections::open_files_limit()),
            },
        };
        let metrics = match &self.metrics {
            Some(m) => Some(m.parse().map_err(|_| {
                bad(
                    "metrics",
                    m,
                    "must be an IP address and port, e.g. 127.0.0.1:9100",
                )
            })?),
            None => None,
        };
        let security = Security {
            token: self
                .token_file
                .as_deref()
                .map(|p| read_token("token-file", p))
                .transpose()?,
            tls: load_tls(
                self.tls_ca.as_deref(),
                self.tls_cert.as_deref(),
                self.tls_key.as_deref(),
            )?,
            access: self
                .access_file
                .as_deref()
                .map(AccessList::read)
                .transpose()?
                .map(std::sync::Arc::new),
        };
        if let Some(access) = &security.access {
            check_own_token(id, security.token.as_ref(), access)?;
        }
        if let Some(tls) = &security.tls
            && tls.identity.is_none()
        {
            return Err(ConfigError(
                "--tls-ca needs --tls-cert and --tls-key on an agent (its own certificate)".into(),
            ));
        }
        let checkpoint_every = match self.checkpoint_every.parse::<u64>() {
            Ok(n) if n >= mozen_store::checkpoint::MIN_EVERY => n,
            _ => {
                return Err(bad(
                    "checkpoint-every",
                    &self.checkpoint_every,
                    format!(
                        "must be a number of log entries, at least {}",
                        mozen_store::checkpoint::MIN_EVERY
                    ),
                ));
            }
        };
        let corruption_check_interval =
            parse_duration("corruption-check-interval", &self.corruption_check_interval)?;
        if corruption_check_interval < Duration::from_millis(100) {
            return Err(bad(
                "corruption-check-interval",
                &self.corruption_check_interval,
                "must be at least 100ms",
            ));
        }
        if !listen.ip().is_loopback() && security.token.is_none() && !self.insecure {
            return Err(bad(
                "listen",
                &self.listen,
                "a non-loopback address needs --token-file PATH so that only the cluster can \
                 call it (or --insecure to run without authentication)",
            ));
        }
        Ok(AgentConfig {
            id,
            listen,
            advertise,
            peers,
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("mozen-data").join(id.to_string())),
            name: self.name.clone().unwrap_or_else(|| format!("node-{id}")),
            slots,
            cpus,
            memory_bytes,
            voters,
            lease,
            shutdown_deadline,
            max_message,
            memo_limit,
            limits,
            allow_exec: self.allow_exec,
            express: !self.no_express,
            rejoin_as_voter: false,
            snapshot_every: if self.snapshot_every >= 10 {
                self.snapshot_every
            } else {
                return Err(bad(
                    "snapshot-every",
                    &self.snapshot_every.to_string(),
                    "must be 10 or more",
                ));
            },
            metrics,
            security,
            fault_file: self.fault_file.clone(),
            checkpoint_every,
            corruption_check_interval,
            hosts: match &self.hosts {
                Some(p) => Some(std::sync::Arc::new(
                    crate::hosts::HostsFile::load(p)
                        .map_err(|e| ConfigError(format!("--hosts: {e}")))?,
                )),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> AgentArgs {
        let mut v = vec!["mozen-agent", "--id", "1", "--listen", "127.0.0.1:7001"];
        v.extend_from_slice(extra);
        AgentArgs::parse_from(v)
    }

    #[test]
    fn bad_peer_port_quotes_value() {
        let e = args(&["--peers", "3@host:99999"]).validate().unwrap_err();
        assert_eq!(e.0, "--peers '3@host:99999': port must be 1-65535");
    }

    #[test]
    fn peers_parse_and_exclude_self() {
        let c = args(&["--peers", "1@127.0.0.1:7001,2@127.0.0.1:7002"])
            .validate()
            .unwrap();
        assert_eq!(
            c.peers,
            vec![Peer {
                id: 2,
                addr: "127.0.0.1:7002".into()
            }]
        );
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = args(&["--cpus", "4", "--memory", "8GiB"])
            .validate()
            .unwrap();
        assert_eq!(c.slots, 12);
        assert_eq!(c.memory_bytes, 8 << 30);
        assert_eq!(c.data_dir, PathBuf::from("mozen-data/1"));
        assert_eq!(c.voters, 3);
        assert_eq!(c.checkpoint_every, 4096);
        assert_eq!(c.corruption_check_interval, Duration::from_secs(30));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(
            args(&["--voters", "2"])
                .validate()
                .unwrap_err()
                .0
                .contains("1, 3, 5 or 7")
        );
        assert!(
            args(&["--memory", "lots"])
                .validate()
                .unwrap_err()
                .0
                .starts_with("--memory 'lots'")
        );
        assert!(args(&["--slots", "0"]).validate().is_err());
        assert!(
            args(&["--peers", "x@h:1"])
                .validate()
                .unwrap_err()
                .0
                .contains("positive integer")
        );
        assert!(args(&["--lease", "soon"]).validate().is_err());
        assert_eq!(
            args(&["--checkpoint-every", "4"]).validate().unwrap_err().0,
            "--checkpoint-every '4': must be a number of log entries, at least 8"
        );
        assert!(
            args(&["--corruption-check-interval", "10ms"])
                .validate()
                .unwrap_err()
                .0
                .starts_with("--corruption-check-interval '10ms'")
        );
        assert_eq!(
            args(&["--max-args", "1GiB"]).validate().unwrap_err().0,
            "--max-args '1GiB': expected a size between 1 and --max-message (16777216 bytes), e.g. 1MiB"
        );
        assert!(
            args(&["--max-queue", "0"])
                .validate()
                .unwrap_err()
                .0
                .starts_with("--max-queue '0'")
        );
        let l = args(&["--max-queue", "10", "--max-queued-bytes", "1MiB"])
            .validate()
            .unwrap()
            .limits;
        assert_eq!(
            (l.max_queue_per_client, l.max_queued_bytes_per_client),
            (5, 512 << 10)
        );
        assert!(
            args(&["--max-queue", "10", "--max-queue-per-client", "11"])
                .validate()
                .unwrap_err()
                .0
                .contains("must be at most --max-queue (10)")
        );
        assert!(
            args(&["--max-queued-bytes-per-client", "1TiB"])
                .validate()
                .unwrap_err()
                .0
                .starts_with("--max-queued-bytes-per-client '1TiB'")
        );
        let e = AgentArgs::parse_from(["mozen-agent", "--id", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "--id '0': must be a positive integer");
    }

    #[test]
    fn public_address_needs_a_token_or_insecure() {
        let a = |extra: &[&str]| {
            let mut v = vec!["mozen-agent", "--id", "1", "--listen", "10.1.2.3:7001"];
            v.extend_from_slice(extra);
            AgentArgs::parse_from(v).validate()
        };
        let e = a(&[]).unwrap_err();
        assert!(
            e.0.starts_with("--listen '10.1.2.3:7001': a non-loopback address needs --token-file")
        );
        assert!(a(&["--insecure"]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        let c = a(&["--token-file", tok.to_str().unwrap()]).unwrap();
        assert!(c.security.token.is_some());
        std::fs::write(&tok, "short").unwrap();
        let e = a(&["--token-file", tok.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("at least 16"), "{}", e.0);
        // Loopback needs nothing.
        assert!(args(&[]).validate().is_ok());
    }

    #[test]
    fn access_file_must_parse_and_list_the_agents_own_token() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        let token = "0123456789abcdef-node-1";
        std::fs::write(&tok, token).unwrap();
        let access = dir.path().join("access");
        let a = |lines: &str| {
            std::fs::write(&access, lines).unwrap();
            let v = vec![
                "mozen-agent",
                "--id",
                "1",
                "--token-file",
                tok.to_str().unwrap(),
                "--access-file",
                access.to_str().unwrap(),
            ];
            AgentArgs::parse_from(v).validate()
        };
        let line = |roles: &str, name: &str| AccessList::line(roles, name, token);
        let c = a(&format!("{}\n", line("peer", "node-1"))).unwrap();
        assert!(c.security.access.is_some());
        assert!(a(&line("worker", "pool-a")).is_ok());
        let e = a(&format!(
            "# x\n{}\nclient bob nothex",
            line("peer", "node-1")
        ))
        .unwrap_err();
        assert!(
            e.0.starts_with(&format!(
                "--access-file '{}': line 3: 'nothex'",
                access.display()
            )),
            "{}",
            e.0
        );
        let e = a(&line("client", "node-1")).unwrap_err();
        assert!(
            e.0.contains("an agent needs peer (voters) or worker"),
            "{}",
            e.0
        );
        let e = a(&line("peer", "node-2")).unwrap_err();
        assert!(e.0.contains("bound to node 2"), "{}", e.0);
        let e = a(&AccessList::line(
            "peer",
            "node-1",
            "another-token-0123456789",
        ))
        .unwrap_err();
        assert!(e.0.contains("not in --access-file"), "{}", e.0);
    }
}
