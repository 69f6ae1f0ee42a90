//! wordcount throughput: one process locally against 1, 2 and 3 agents on this machine, with
//! what `mozen plan` predicted for each (not a test; prints numbers).
//!
//! ```sh
//! cargo build --release -p mozen-agent --bins --example batch_bench
//! target/release/examples/batch_bench [MB]     # default 50
//! ```
//! The agents are the `mozen-agent` binary next to this example's directory.

use mozen_agent::batch::{self, JobSpec, SliceLines, plan};
use mozen_agent::client::Client;
use mozen_proto as pb;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts `n` agents, returns them and their addresses.
fn start(n: usize, dir: &std::path::Path) -> (Vec<Child>, Vec<String>) {
    let agent: PathBuf = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mozen-agent");
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = mozen_agent::config::peers_arg(&addrs);
    let children = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Command::new(&agent)
                .args(["--id", &(i + 1).to_string(), "--listen", a, "--data-dir"])
                .arg(dir.join(format!("n{n}-{}", i + 1)))
                .args(["--peers", &peers])
                .env("MOZEN_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", agent.display()))
        })
        .collect();
    (children, addrs)
}

async fn ready(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = client
            .rpc(|mut c| async move { c.nodes(pb::NodesRequest {}).await })
            .await
            .map(|r| r.nodes)
            .unwrap_or_default();
        if nodes.len() == n && nodes.iter().all(|x| x.state == "active") {
            return;
        }
        assert!(Instant::now() < deadline, "cluster of {n} not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("temp dir");
    let files = 100;
    let (_, counts) =
        batch::corpus::generate(&dir.path().join("data"), files, mb * 1_000_000 / files)
            .expect("corpus");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[data]\nfiles = [\"data/*.txt\"]\n[process]\nfunction = \"wordcount\"\n[reduce]\nfunction = \"merge_counts\"\n",
    )
    .expect("job file");
    let spec = JobSpec::load(&job).expect("job");
    assert_eq!(spec.lines, SliceLines::Auto);
    let local = batch::prepare(spec.clone(), None).await.expect("prepare");
    let (result, took) = batch::run::run_local_job(&local, 20_000)
        .await
        .expect("local run");
    assert_eq!(serde_json::to_value(&counts).ok(), Some(result));
    let local_mbs = batch::run::mb_per_s(local.bytes(), took);
    println!(
        "corpus: {:.1} MB in {files} files, {} lines",
        local.bytes() as f64 / 1e6,
        local.lines()
    );
    println!("local, one process, one core: {took:.2?} = {local_mbs:.1} MB/s");
    println!(
        "{:>6} {:>9} {:>8} {:>10} {:>10} {:>12}",
        "AGENTS", "SLICES", "TIME", "MB/S", "PLANNED", "PLANNED MB/S"
    );
    for n in 1..=3 {
        let (mut children, addrs) = start(n, dir.path());
        let client = Client::with_options(
            addrs,
            pb::DEFAULT_MAX_MESSAGE_BYTES,
            Duration::from_secs(60),
        )
        .expect("client");
        ready(&client, n).await;
        let job = batch::prepare(spec.clone(), Some(&client))
            .await
            .expect("prepare");
        let p = plan::plan(&job, &client).await.expect("plan");
        let planned = p.cluster[0].1.seconds;
        let report = batch::run(&job, &client, &|_| {}).await.expect("run");
        assert_eq!(
            serde_json::to_value(&counts).ok(),
            Some(report.result.clone())
        );
        println!(
            "{n:>6} {:>9} {:>7.2}s {:>10.1} {:>9.2}s {:>12.1}",
            report.slices,
            report.elapsed_ms as f64 / 1e3,
            report.mb_per_s,
            planned,
            job.bytes() as f64 / 1e6 / planned
        );
        println!("        plan: {}", p.verdict);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
