//! The hosts file: which machines may run agents, how to start and stop them, and the
//! autoscaling policy.
//!
//! The TOML text is parsed with `toml` and validated once into a [`HostsFile`]. Every error
//! names the file and the line, and for a host entry its name, so that the operator can fix
//! it: `hosts.toml:12: host "a3": unknown launcher 'sshh' (expected local, ssh or command)`.
//! Nothing is started from a file that does not validate. The format is described in
//! docs/operations.md.

use mozen_model::flags::{parse_host_port, parse_size};
use mozen_model::{Code, NodeId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Placeholders a `start` or `stop` command may use.
pub const PLACEHOLDERS: [&str; 6] = ["name", "id", "address", "peers", "data_dir", "voters"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    hosts: Vec<toml::Spanned<RawHost>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    voters: Option<usize>,
    data_dir: Option<PathBuf>,
    agent: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    ssh: Option<Vec<String>>,
    autoscale: Option<RawAutoscale>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoscale {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    dry_run: bool,
    target: Option<String>,
    idle: Option<String>,
    min_nodes: Option<usize>,
    interval: Option<String>,
    start_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    id: Option<NodeId>,
    address: Option<String>,
    launcher: String,
    ssh_host: Option<String>,
    cpus: Option<u32>,
    memory: Option<String>,
    slots: Option<u32>,
    #[serde(default)]
    args: Vec<String>,
    start: Option<Vec<String>>,
    stop: Option<Vec<String>>,
    max: Option<u32>,
}

/// How an agent is started and stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// A `mozen-agent` process on the machine that runs `mozen up` (or the autoscaler).
    Local,
    /// A `mozen-agent` process started over ssh on `host` (`[user@]machine`).
    Ssh { host: String },
    /// Programs of the operator's: `start` starts an agent (and may print its address),
    /// `stop` stops it.
    Command {
        start: Vec<String>,
        stop: Vec<String>,
    },
}

impl Launcher {
    pub fn name(&self) -> &'static str {
        match self {
            Launcher::Local => "local",
            Launcher::Ssh { .. } => "ssh",
            Launcher::Command { .. } => "command",
        }
    }
}

/// Capacity flags passed on to an agent (absent: the agent detects them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: Option<u32>,
    pub memory: Option<u64>,
    pub slots: Option<u32>,
}

/// A machine that runs one agent whenever the cluster is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub id: NodeId,
    pub address: String,
    pub launcher: Launcher,
    pub capacity: Capacity,
    /// Extra flags for this agent, after the cluster's.
    pub args: Vec<String>,
    /// One of the lowest `voters` ids: a Raft voter.
    pub voter: bool,
    /// Line of the entry in the file, for messages.
    pub line: usize,
}

/// Machines the autoscaler may start agents on, named by a pattern such as `spare-*`.
#[derive(Debug, Clone)]
pub struct Pool {
    pub pattern: String,
    matcher: glob::Pattern,
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub max: u32,
    pub capacity: Capacity,
    pub args: Vec<String>,
    pub line: usize,
}

impl Pool {
    /// Whether a node name belongs to this pool.
    pub fn matches(&self, name: &str) -> bool {
        self.matcher.matches(name)
    }

    /// The name of the pool's agent with node id `id`: the pattern's `*` replaced by the id.
    pub fn instance_name(&self, id: NodeId) -> String {
        self.pattern.replacen('*', &id.to_string(), 1)
    }
}

/// The autoscaling policy the Raft leader follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// Off by default: nothing is started or stopped without it.
    pub enabled: bool,
    /// Decide and record events, but start and stop nothing.
    pub dry_run: bool,
    /// Start agents when the queued work would take longer than this on the current slots.
    pub target: Duration,
    /// Drain and stop a pool's agent after it ran nothing for this long with an empty queue.
    pub idle: Duration,
    /// Never fewer active nodes than this.
    pub min_nodes: usize,
    /// How often the leader looks.
    pub interval: Duration,
    /// A started agent that has not joined after this long is given up.
    pub start_timeout: Duration,
}

impl Default for Autoscale {
    fn default() -> Self {
        Autoscale {
            enabled: false,
            dry_run: false,
            target: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            min_nodes: 1,
            interval: Duration::from_secs(5),
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// A validated hosts file.
#[derive(Debug, Clone)]
pub struct HostsFile {
    /// The file as given (absolute), passed on to agents with `--hosts`.
    pub path: PathBuf,
    pub voters: usize,
    /// Each agent keeps its data in `data_dir/NAME` (the same path on every machine).
    pub data_dir: PathBuf,
    /// The agent program; `None`: `mozen-agent` next to the running program, else on PATH.
    pub agent: Option<String>,
    /// Flags for every agent (e.g. `--token-file`).
    pub args: Vec<String>,
    /// The ssh program and its options.
    pub ssh: Vec<String>,
    pub hosts: Vec<Host>,
    pub pools: Vec<Pool>,
    pub autoscale: Autoscale,
}

/// A hosts file that cannot be used, with the text to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {0}", code = Code::BadHosts)]
pub struct HostsError(pub String);

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn duration(file: &str, line: usize, key: &str, s: &str) -> Result<Duration, HostsError> {
    humantime::parse_duration(s).map_err(|e| {
        HostsError(format!(
            "{file}:{line}: autoscale.{key} '{s}': {e} (examples: 500ms, 30s, 5m)"
        ))
    })
}

/// Placeholders in `argv` that are not in [`PLACEHOLDERS`].
fn unknown_placeholders(argv: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for a in argv {
        let mut rest = a.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let word = &rest[open + 1..open + close];
            if !PLACEHOLDERS.contains(&word) {
                bad.push(format!("{{{word}}}"));
            }
            rest = &rest[open + close + 1..];
        }
    }
    bad
}

impl HostsFile {
    /// Reads and validates a hosts file.
    pub fn load(path: &Path) -> Result<HostsFile, HostsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HostsError(format!("{}: cannot read: {e}", path.display())))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::parse(&text, &abs)
    }

    /// Validates the text of a hosts file read from `path` (relative paths in it are relative
    /// to the file's directory).
    pub fn parse(text: &str, path: &Path) -> Result<HostsFile, HostsError> {
        let file = path.display().to_string();
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s: Range<usize>| line_col(text, s.start));
            let msg = e.message().trim().to_string();
            match at {
                Some((l, c)) => HostsError(format!("{file}:{l}:{c}: {msg}")),
                None => HostsError(format!("{file}: {msg}")),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let c = raw.cluster;
        let voters = c.voters.unwrap_or(3);
        if ![1, 3, 5, 7].contains(&voters) {
            return Err(HostsError(format!(
                "{file}: cluster.voters = {voters}: must be 1, 3, 5 or 7"
            )));
        }
        let data_dir = base.join(c.data_dir.unwrap_or_else(|| PathBuf::from("mozen-data")));
        let ssh = c
            .ssh
            .unwrap_or_else(|| vec!["ssh".into(), "-o".into(), "BatchMode=yes".into()]);
        if ssh.is_empty() {
            return Err(HostsError(format!(
                "{file}: cluster.ssh is empty: name the ssh program, e.g. [\"ssh\"]"
            )));
        }

        let mut hosts = Vec::new();
        let mut pools = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut addrs: BTreeMap<String, usize> = BTreeMap::new();
        let mut ids: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut next_id: NodeId = 1;
        for entry in &raw.hosts {
            // The line of the entry's `name` (its span may or may not start at `[[hosts]]`).
            let span = entry.span();
            let at = text
                .get(span.start..)
                .and_then(|t| t.find("name"))
                .map_or(span.start, |o| span.start + o);
            let line = line_col(text, at).0;
            let h = entry.get_ref();
            let err =
                |why: String| HostsError(format!("{file}:{line}: host \"{}\": {why}", h.name));
            if h.name.trim().is_empty() {
                return Err(HostsError(format!("{file}:{line}: a host needs a name")));
            }
            if let Some(first) = names.insert(h.name.clone(), line) {
                return Err(err(format!("the name is also used at line {first}")));
            }
            let capacity = Capacity {
                cpus: match h.cpus {
                    Some(0) => return Err(err("cpus must be a positive integer".into())),
                    c => c,
                },
                memory: match &h.memory {
                    Some(m) => match parse_size(m) {
                        Some(b) if b > 0 => Some(b),
                        _ => {
                            return Err(err(format!(
                                "memory '{m}': expected a size such as 16GiB or 512MiB"
                            )));
                        }
                    },
                    None => None,
                },
                slots: match h.slots {
                    Some(0) => return Err(err("slots must be a positive integer".into())),
                    s => s,
                },
            };
            let commands = |need: bool| -> Result<(Vec<String>, Vec<String>), HostsError> {
                let start = h.start.clone().unwrap_or_default();
                let stop = h.stop.clone().unwrap_or_default();
                if need && (start.is_empty() || stop.is_empty()) {
                    return Err(err(
                        "launcher \"command\" needs start = [PROGRAM, ARGS...] and stop = [PROGRAM, ARGS...]"
                            .into(),
                    ));
                }
                if !need && (h.start.is_some() || h.stop.is_some()) {
                    return Err(err(format!(
                        "start and stop are for launcher \"command\", not \"{}\"",
                        h.launcher
                    )));
                }
                let bad = unknown_placeholders(&[start.clone(), stop.clone()].concat());
                if !bad.is_empty() {
                    return Err(err(format!(
                        "unknown placeholder {} (known: {})",
                        bad.join(", "),
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    )));
                }
                Ok((start, stop))
            };
            let launcher_err = || {
                err(format!(
                    "unknown launcher '{}' (expected local, ssh or command)",
                    h.launcher
                ))
            };
            if h.name.contains('*') {
                // A pool: the autoscaler names its agents after the pattern.
                if h.launcher != "command" {
                    if !["local", "ssh"].contains(&h.launcher.as_str()) {
                        return Err(launcher_err());
                    }
                    return Err(err(
                        "a pool (a name with '*') needs launcher = \"command\"".into()
                    ));
                }
                if h.address.is_some() || h.id.is_some() {
                    return Err(err(
                        "a pool has no address or id: each agent it starts gets its own".into(),
                    ));
                }
                let matcher = glob::Pattern::new(&h.name)
                    .map_err(|e| err(format!("not a valid name pattern: {e}")))?;
                let Some(max) = h.max.filter(|m| *m > 0) else {
                    return Err(err(
                        "a pool needs max = N (how many agents it may start, at least 1)".into(),
                    ));
                };
                let (start, stop) = commands(true)?;
                pools.push(Pool {
                    pattern: h.name.clone(),
                    matcher,
                    start,
                    stop,
                    max,
                    capacity,
                    args: h.args.clone(),
                    line,
                });
                continue;
            }
            if h.max.is_some() {
                return Err(err(
                    "max is for pools (a name with '*', e.g. \"spare-*\")".into()
                ));
            }
            let Some(address) = &h.address else {
                return Err(err("address = \"HOST:PORT\" is missing".into()));
            };
            parse_host_port("address", address, address)
                .map_err(|e| err(e.0.replacen("--address", "address", 1)))?;
            if let Some(first) = addrs.insert(address.clone(), line) {
                return Err(err(format!(
                    "address {address} is also used at line {first}"
                )));
            }
            let launcher = match h.launcher.as_str() {
                "local" => {
                    commands(false)?;
                    if address.parse::<std::net::SocketAddr>().is_err() {
                        return Err(err(format!(
                            "address '{address}': a local agent listens on it, so it must be an IP address and port, e.g. 127.0.0.1:7070"
                        )));
                    }
                    Launcher::Local
                }
                "ssh" => {
                    commands(false)?;
                    let host = match &h.ssh_host {
                        Some(s) if !s.trim().is_empty() => s.clone(),
                        Some(_) => return Err(err("ssh_host is empty".into())),
                        None => address
                            .rsplit_once(':')
                            .map_or(address.as_str(), |(host, _)| host)
                            .trim_matches(['[', ']'])
                            .to_string(),
                    };
                    Launcher::Ssh { host }
                }
                "command" => {
                    let (start, stop) = commands(true)?;
                    Launcher::Command { start, stop }
                }
                _ => return Err(launcher_err()),
            };
            if h.ssh_host.is_some() && !matches!(launcher, Launcher::Ssh { .. }) {
                return Err(err("ssh_host is for launcher \"ssh\"".into()));
            }
            let id = match h.id {
                Some(0) => return Err(err("id must be a positive integer".into())),
                Some(i) => i,
                None => {
                    while ids.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                }
            };
            if let Some(first) = ids.insert(id, line) {
                return Err(err(format!("id {id} is also used at line {first}")));
            }
            hosts.push(Host {
                name: h.name.clone(),
                id,
                address: address.clone(),
                launcher,
                capacity,
                args: h.args.clone(),
                voter: false,
                line,
            });
        }
        if hosts.len() < voters {
            return Err(HostsError(format!(
                "{file}: cluster.voters = {voters} but {} host(s) with an address are listed; list at least {voters} or lower voters",
                hosts.len()
            )));
        }
        // The cluster forms with the lowest ids as voters (see node.rs).
        let voter_ids: BTreeSet<NodeId> = ids.keys().copied().take(voters).collect();
        for h in &mut hosts {
            h.voter = voter_ids.contains(&h.id);
        }

        let mut autoscale = Autoscale::default();
        if let Some(a) = c.autoscale {
            let line = text.find("autoscale").map_or(1, |o| line_col(text, o).0);
            autoscale.enabled = a.enabled;
            autoscale.dry_run = a.dry_run;
            if let Some(t) = &a.target {
                autoscale.target = duration(&file, line, "target", t)?;
            }
            if let Some(t) = &a.idle {
                autoscale.idle = duration(&file, line, "idle", t)?;
            }
            if let Some(t) = &a.interval {
                autoscale.interval = duration(&file, line, "interval", t)?;
                if autoscale.interval < Duration::from_millis(100) {
                    return Err(HostsError(format!(
                        "{file}:{line}: autoscale.interval '{t}': must be at least 100ms"
                    )));
                }
            }
            if let Some(t) = &a.start_timeout {
                autoscale.start_timeout = duration(&file, line, "start_timeout", t)?;
            }
            autoscale.min_nodes = a.min_nodes.unwrap_or(hosts.len()).max(1);
            if autoscale.enabled && pools.is_empty() {
                return Err(HostsError(format!(
                    "{file}:{line}: autoscale is enabled but no pool is listed: add a [[hosts]] entry named like \"spare-*\" with launcher = \"command\" and max"
                )));
            }
        }
        Ok(HostsFile {
            path: path.to_path_buf(),
            voters,
            data_dir,
            agent: c.agent,
            args: c.args,
            ssh,
            hosts,
            pools,
            autoscale,
        })
    }

    /// `--peers` for agents of this cluster: every host with an address.
    pub fn peers(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{}@{}", h.id, h.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Host entry of a node: by id for the listed hosts.
    pub fn host(&self, id: NodeId) -> Option<&Host> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// The pool a node name belongs to.
    pub fn pool_of(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.matches(name))
    }

    /// The data directory of the agent named `name`.
    pub fn data_dir_of(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostsFile, HostsError> {
        HostsFile::parse(text, Path::new("/etc/mozen/hosts.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
[cluster]
voters = 3
data_dir = "/var/lib/mozen"
args = ["--lease", "2s"]

[cluster.autoscale]
enabled = true
target = "30s"
idle = "2m"
min_nodes = 3

[[hosts]]
name = "a1"
address = "127.0.0.1:7001"
launcher = "local"
cpus = 4
memory = "16GiB"

[[hosts]]
name = "a2"
address = "10.0.0.12:7070"
launcher = "ssh"
ssh_host = "admin@10.0.0.12"

[[hosts]]
name = "a3"
address = "a3.example:7070"
launcher = "ssh"

[[hosts]]
name = "w1"
address = "10.0.0.21:7070"
launcher = "command"
start = ["./provision.sh", "{name}", "{address}"]
stop = ["./release.sh", "{name}"]

[[hosts]]
name = "spare-*"
launcher = "command"
start = ["./provision.sh", "{name}", "{id}", "{peers}"]
stop = ["./release.sh", "{name}"]
max = 20
slots = 8
"#;

    #[test]
    fn a_good_file_validates() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.voters, 3);
        assert_eq!(f.data_dir, PathBuf::from("/var/lib/mozen"));
        assert_eq!(f.hosts.len(), 4);
        assert_eq!(
            f.hosts.iter().map(|h| (h.id, h.voter)).collect::<Vec<_>>(),
            vec![(1, true), (2, true), (3, true), (4, false)]
        );
        assert_eq!(f.hosts[0].capacity.memory, Some(16 << 30));
        assert_eq!(
            f.hosts[1].launcher,
            Launcher::Ssh {
                host: "admin@10.0.0.12".into()
            }
        );
        assert_eq!(
            f.hosts[2].launcher,
            Launcher::Ssh {
                host: "a3.example".into()
            }
        );
        assert_eq!(f.hosts[1].line, 21);
        assert_eq!(f.pools.len(), 1);
        let p = &f.pools[0];
        assert_eq!(p.max, 20);
        assert_eq!(p.capacity.slots, Some(8));
        assert!(p.matches("spare-7") && !p.matches("a1"));
        assert_eq!(p.instance_name(9), "spare-9");
        assert!(f.autoscale.enabled && !f.autoscale.dry_run);
        assert_eq!(f.autoscale.target, Duration::from_secs(30));
        assert_eq!(f.autoscale.idle, Duration::from_secs(120));
        assert_eq!(f.autoscale.min_nodes, 3);
        assert_eq!(
            f.peers(),
            "1@127.0.0.1:7001,2@10.0.0.12:7070,3@a3.example:7070,4@10.0.0.21:7070"
        );
    }

    #[test]
    fn autoscaling_is_off_by_default() {
        let f = parse(
            "[[hosts]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nlauncher = \"local\"\n\
             [cluster]\nvoters = 1\n",
        )
        .unwrap();
        assert!(!f.autoscale.enabled);
        assert_eq!(f.data_dir, PathBuf::from("/etc/mozen/mozen-data"));
    }

    /// The error of GOOD with `from` replaced by `to` contains `expect`.
    fn fails(from: &str, to: &str, expect: &str) {
        assert!(GOOD.contains(from), "{from}");
        let e = err(&GOOD.replacen(from, to, 1));
        assert!(e.contains(expect), "{e}");
    }

    #[test]
    fn errors_name_the_entry_and_line() {
        let bad_launcher = GOOD.replacen("launcher = \"ssh\"", "launcher = \"sshh\"", 1);
        assert_eq!(
            err(&bad_launcher),
            "MZ-BAD-HOSTS: /etc/mozen/hosts.toml:21: host \"a2\": unknown launcher 'sshh' (expected local, ssh or command)"
        );
        let dup_name = GOOD.replacen("name = \"a3\"", "name = \"a1\"", 1);
        assert_eq!(
            err(&dup_name),
            "MZ-BAD-HOSTS: /etc/mozen/hosts.toml:27: host \"a1\": the name is also used at line 14"
        );
        let a3 = "a3.example:7070";
        fails(
            a3,
            "10.0.0.12:7070",
            "host \"a3\": address 10.0.0.12:7070 is also used at line 21",
        );
        fails(
            a3,
            "a3.example:70700",
            "host \"a3\": address 'a3.example:70700': port must be 1-65535",
        );
        fails(
            a3,
            "a3.example",
            "host \"a3\": address 'a3.example': 'a3.example' is not HOST:PORT",
        );
        fails(
            "127.0.0.1:7001",
            "a1.example:7001",
            "host \"a1\": address 'a1.example:7001': a local agent",
        );
        fails(
            "{address}",
            "{adress}",
            "host \"w1\": unknown placeholder {adress}",
        );
        fails("max = 20\n", "", "host \"spare-*\": a pool needs max");
        fails(
            "name = \"spare-*\"\nlauncher = \"command\"",
            "name = \"spare-*\"\nlauncher = \"local\"",
            "host \"spare-*\": a pool (a name with '*') needs launcher = \"command\"",
        );
        fails(
            "stop = [\"./release.sh\", \"{name}\"]\n\n",
            "",
            "host \"w1\": launcher \"command\" needs start",
        );
        fails(
            "voters = 3",
            "voters = 2",
            "cluster.voters = 2: must be 1, 3, 5 or 7",
        );
        fails("\"2m\"", "\"soon\"", "hosts.toml:7: autoscale.idle 'soon'");
        let too_few = "[cluster]\nvoters = 3\n[[hosts]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nlauncher = \"local\"\n";
        assert!(err(too_few).contains("cluster.voters = 3 but 1 host(s)"));
    }

    #[test]
    fn toml_errors_have_line_and_column() {
        let e = err("[cluster]\nvoters = 3\n[[hosts]]\nname = a1\n");
        assert!(
            e.starts_with("MZ-BAD-HOSTS: /etc/mozen/hosts.toml:4:8: "),
            "{e}"
        );
        let e = err("[cluster]\nvoterz = 3\n");
        assert!(
            e.starts_with("MZ-BAD-HOSTS: /etc/mozen/hosts.toml:2:1: unknown field `voterz`"),
            "{e}"
        );
        let e = err("[[hosts]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
        assert!(
            e.contains("hosts.toml:1:1: missing field `launcher`"),
            "{e}"
        );
    }
}
