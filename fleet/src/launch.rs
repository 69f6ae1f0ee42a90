//! Starting and stopping agents as a hosts file says: local processes, processes over ssh,
//! or the operator's own programs.
//!
//! A started agent is detached from its starter (its own process group, output appended to
//! `DATA_DIR/NAME.log`, pid in `DATA_DIR/NAME.pid`), so `mozen up` can exit and a leader's
//! autoscaler can lose leadership without taking agents with it. Stopping sends SIGTERM, the
//! agent's graceful stop; callers then wait for its address to go quiet.

use crate::hosts::{Capacity, Host, HostsFile, Launcher, Pool};
use mozen_model::{Code, NodeId};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// How long a `start`, `stop` or ssh command may take before it is given up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One agent to start or stop: a listed host, or a pool's agent.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub id: NodeId,
    pub name: String,
    /// The listed address, or the address a pool's agent joined with (empty before).
    pub address: String,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    Host(&'a Host),
    Pool(&'a Pool),
}

/// Why an agent could not be started or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {0}", code = Code::Launch)]
pub struct LaunchError(pub String);

impl<'a> Target<'a> {
    pub fn host(h: &'a Host) -> Self {
        Target {
            id: h.id,
            name: h.name.clone(),
            address: h.address.clone(),
            kind: Kind::Host(h),
        }
    }

    pub fn pool(p: &'a Pool, id: NodeId, address: &str) -> Self {
        Target {
            id,
            name: p.instance_name(id),
            address: address.to_string(),
            kind: Kind::Pool(p),
        }
    }

    fn capacity(&self) -> &Capacity {
        match self.kind {
            Kind::Host(h) => &h.capacity,
            Kind::Pool(p) => &p.capacity,
        }
    }

    fn extra_args(&self) -> &[String] {
        match self.kind {
            Kind::Host(h) => &h.args,
            Kind::Pool(p) => &p.args,
        }
    }

    fn what(&self) -> String {
        format!("host \"{}\" (node {})", self.name, self.id)
    }
}

/// The agent program: the configured one, else `mozen-agent` next to this program, else the
/// one on PATH.
pub fn agent_program(file: &HostsFile, remote: bool) -> String {
    if let Some(a) = &file.agent {
        return a.clone();
    }
    if !remote
        && let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let sibling = dir.join("mozen-agent");
        if sibling.is_file() {
            return sibling.display().to_string();
        }
    }
    "mozen-agent".into()
}

/// The flags of a listed host's agent.
pub fn agent_args(file: &HostsFile, h: &Host) -> Vec<String> {
    let mut a: Vec<String> = [
        "--id",
        &h.id.to_string(),
        "--listen",
        &h.address,
        "--name",
        &h.name,
        "--data-dir",
        &file.data_dir_of(&h.name).display().to_string(),
        "--peers",
        &file.peers(),
        "--voters",
        &file.voters.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let t = Target::host(h);
    push_capacity(&mut a, t.capacity());
    // Voters may lead, and the leader runs the autoscaler: it needs the file.
    if h.voter && file.autoscale.enabled {
        a.extend(["--hosts".to_string(), file.path.display().to_string()]);
    }
    a.extend(file.args.iter().cloned());
    a.extend(t.extra_args().iter().cloned());
    a
}

fn push_capacity(a: &mut Vec<String>, c: &Capacity) {
    if let Some(n) = c.cpus {
        a.extend(["--cpus".into(), n.to_string()]);
    }
    if let Some(m) = c.memory {
        a.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(s) = c.slots {
        a.extend(["--slots".into(), s.to_string()]);
    }
}

/// `argv` with its placeholders filled in for `t`.
pub fn expand(file: &HostsFile, t: &Target<'_>, argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{name}", &t.name)
                .replace("{id}", &t.id.to_string())
                .replace("{address}", &t.address)
                .replace("{peers}", &file.peers())
                .replace(
                    "{data_dir}",
                    &file.data_dir_of(&t.name).display().to_string(),
                )
                .replace("{voters}", &file.voters.to_string())
        })
        .collect()
}

fn quote(words: &[String]) -> Result<String, LaunchError> {
    shlex::try_join(words.iter().map(String::as_str))
        .map_err(|e| LaunchError(format!("cannot quote {words:?} for a shell: {e}")))
}

fn files(file: &HostsFile, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = file.data_dir_of(name);
    (
        dir.with_extension("log"),
        dir.with_extension("pid"),
        file.data_dir.clone(),
    )
}

/// The ssh command that starts a host's agent in the background on its machine.
pub fn ssh_start(file: &HostsFile, h: &Host, ssh_host: &str) -> Result<Vec<String>, LaunchError> {
    let (log, pid, root) = files(file, &h.name);
    let mut agent = vec![agent_program(file, true)];
    agent.extend(agent_args(file, h));
    let script = format!(
        "mkdir -p {root} && nohup {agent} >> {log} 2>&1 < /dev/null & echo $! > {pid}",
        root = quote(&[root.display().to_string()])?,
        agent = quote(&agent)?,
        log = quote(&[log.display().to_string()])?,
        pid = quote(&[pid.display().to_string()])?,
    );
    let mut argv = file.ssh.clone();
    argv.extend([ssh_host.to_string(), script]);
    Ok(argv)
}

/// The ssh command that sends SIGTERM to a host's agent.
pub fn ssh_stop(file: &HostsFile, h: &Host, ssh_host: &str) -> Result<Vec<String>, LaunchError> {
    let (_, pid, _) = files(file, &h.name);
    let pid = quote(&[pid.display().to_string()])?;
    let mut argv = file.ssh.clone();
    argv.extend([ssh_host.to_string(), format!("kill -TERM \"$(cat {pid})\"")]);
    Ok(argv)
}

/// Runs a program to completion and returns its standard output.
pub async fn run_command(argv: &[String], what: &str) -> Result<String, LaunchError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(LaunchError(format!("{what}: empty command")));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LaunchError(format!("{what}: cannot run {program}: {e}")))?;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            LaunchError(format!(
                "{what}: {program} did not finish within {COMMAND_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| LaunchError(format!("{what}: {program}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(LaunchError(format!(
            "{what}: {} exited with {}{}",
            quote(argv).unwrap_or_else(|_| program.clone()),
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            }
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first word of a start command's output that reads as HOST:PORT.
pub fn printed_address(stdout: &str) -> Option<String> {
    stdout
        .split_whitespace()
        .find(|w| mozen_model::flags::parse_host_port("address", w, w).is_ok())
        .map(str::to_string)
}

/// Starts the agent of `t`; returns the address a `start` command printed, if any.
pub async fn start(file: &HostsFile, t: &Target<'_>) -> Result<Option<String>, LaunchError> {
    let what = format!("start {}", t.what());
    match t.kind {
        Kind::Host(h) => match &h.launcher {
            Launcher::Local => start_local(file, h).map(|()| None),
            Launcher::Ssh { host } => {
                run_command(&ssh_start(file, h, host)?, &what).await?;
                Ok(None)
            }
            Launcher::Command { start, .. } => {
                let out = run_command(&expand(file, t, start), &what).await?;
                Ok(printed_address(&out))
            }
        },
        Kind::Pool(p) => {
            let out = run_command(&expand(file, t, &p.start), &what).await?;
            Ok(printed_address(&out))
        }
    }
}

/// Asks the agent of `t` to stop (SIGTERM: running requests finish or are handed back).
pub async fn stop(file: &HostsFile, t: &Target<'_>) -> Result<(), LaunchError> {
    let what = format!("stop {}", t.what());
    match t.kind {
        Kind::Host(h) => match &h.launcher {
            Launcher::Local => stop_local(file, h).await,
            Launcher::Ssh { host } => run_command(&ssh_stop(file, h, host)?, &what)
                .await
                .map(|_| ()),
            Launcher::Command { stop, .. } => {
                run_command(&expand(file, t, stop), &what).await.map(|_| ())
            }
        },
        Kind::Pool(p) => run_command(&expand(file, t, &p.stop), &what)
            .await
            .map(|_| ()),
    }
}

fn start_local(file: &HostsFile, h: &Host) -> Result<(), LaunchError> {
    use std::os::unix::process::CommandExt;
    let what = format!("start host \"{}\" (node {})", h.name, h.id);
    let (log, pid, root) = files(file, &h.name);
    std::fs::create_dir_all(&root)
        .map_err(|e| LaunchError(format!("{what}: cannot create {}: {e}", root.display())))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| LaunchError(format!("{what}: cannot open {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| LaunchError(format!("{what}: {e}")))?;
    let program = agent_program(file, false);
    let mut child = std::process::Command::new(&program)
        .args(agent_args(file, h))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C at `mozen up` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| LaunchError(format!("{what}: cannot run {program}: {e}")))?;
    std::fs::write(&pid, format!("{}\n", child.id()))
        .map_err(|e| LaunchError(format!("{what}: cannot write {}: {e}", pid.display())))?;
    // Reap it if it exits while this process lives (an autoscaler's agent lives long).
    std::thread::spawn(move || child.wait());
    Ok(())
}

async fn stop_local(file: &HostsFile, h: &Host) -> Result<(), LaunchError> {
    let what = format!("stop host \"{}\" (node {})", h.name, h.id);
    let (_, pid_file, _) = files(file, &h.name);
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            LaunchError(format!(
                "{what}: no pid in {}; stop the agent by hand",
                pid_file.display()
            ))
        })?;
    // The pid may have been reused since: only signal the agent using this data dir.
    let dir = file.data_dir_of(&h.name).display().to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline.split(|b| *b == 0).any(|w| w == dir.as_bytes());
    if !ours {
        return Err(LaunchError(format!(
            "{what}: process {pid} (from {}) is not the agent of {dir}; stop it by hand",
            pid_file.display()
        )));
    }
    run_command(&["kill".into(), "-TERM".into(), pid.to_string()], &what)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file() -> HostsFile {
        HostsFile::parse(
            r#"
[cluster]
voters = 1
data_dir = "/srv/mozen data"
agent = "/opt/mozen/bin/mozen-agent"
args = ["--token-file", "/etc/mozen/token"]
ssh = ["ssh", "-p", "2222", "-o", "BatchMode=yes"]
[cluster.autoscale]
enabled = true
[[hosts]]
name = "a1"
address = "10.0.0.11:7070"
launcher = "ssh"
ssh_host = "ops@a1.example"
cpus = 4
args = ["--advertise", "a1.example:7070"]
[[hosts]]
name = "spare-*"
launcher = "command"
start = ["./provision.sh", "{name}", "{id}", "{peers}", "{data_dir}"]
stop = ["./release.sh", "{name}", "{address}"]
max = 2
"#,
            Path::new("/etc/mozen/hosts.toml"),
        )
        .unwrap()
    }

    #[test]
    fn ssh_commands_quote_every_word() {
        let f = file();
        let h = &f.hosts[0];
        let argv = ssh_start(&f, h, "ops@a1.example").unwrap();
        assert_eq!(
            &argv[..6],
            ["ssh", "-p", "2222", "-o", "BatchMode=yes", "ops@a1.example"]
        );
        assert_eq!(argv.len(), 7);
        assert_eq!(
            argv[6],
            "mkdir -p '/srv/mozen data' && nohup /opt/mozen/bin/mozen-agent --id 1 \
             --listen 10.0.0.11:7070 --name a1 --data-dir '/srv/mozen data/a1' \
             --peers 1@10.0.0.11:7070 --voters 1 --cpus 4 --hosts /etc/mozen/hosts.toml \
             --token-file /etc/mozen/token --advertise a1.example:7070 \
             >> '/srv/mozen data/a1.log' 2>&1 < /dev/null & echo $! > '/srv/mozen data/a1.pid'"
        );
        // The remote shell splits it back into the same words.
        let words = shlex::split(&argv[6]).unwrap();
        assert_eq!(words[6], "--id");
        assert!(words.contains(&"/srv/mozen data/a1".to_string()));
        let stop = ssh_stop(&f, h, "ops@a1.example").unwrap();
        assert_eq!(stop[6], "kill -TERM \"$(cat '/srv/mozen data/a1.pid')\"");
    }

    #[test]
    fn placeholders_fill_in() {
        let f = file();
        let t = Target::pool(&f.pools[0], 7, "10.0.0.99:7070");
        assert_eq!(t.name, "spare-7");
        assert_eq!(
            expand(&f, &t, &f.pools[0].start),
            [
                "./provision.sh",
                "spare-7",
                "7",
                "1@10.0.0.11:7070",
                "/srv/mozen data/spare-7"
            ]
        );
        assert_eq!(
            expand(&f, &t, &f.pools[0].stop),
            ["./release.sh", "spare-7", "10.0.0.99:7070"]
        );
    }

    #[test]
    fn start_output_may_name_the_address() {
        assert_eq!(
            printed_address("started spare-7\nlistening on 10.0.0.9:7070\n"),
            Some("10.0.0.9:7070".into())
        );
        assert_eq!(printed_address("ok\n"), None);
    }

    #[tokio::test]
    async fn a_failing_command_says_which_and_why() {
        let e = run_command(
            &[
                "sh".into(),
                "-c".into(),
                "echo no capacity >&2; exit 3".into(),
            ],
            "start host \"spare-7\" (node 7)",
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "MZ-LAUNCH: start host \"spare-7\" (node 7): sh -c 'echo no capacity >&2; exit 3' exited with exit status: 3: no capacity"
        );
    }
}
