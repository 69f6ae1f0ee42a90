//! wordcount throughput: one process locally against 1, 2 and 3 agents on this machine, with
//! what `mozen plan` predicted for each (not a test; prints numbers). `mozen bench --workload
//! batch` measures the same job on one cluster size with median, min and max over runs.
//!
//! ```sh
//! cargo build --release -p mozen-agent --bins && cargo build --release -p mozen-cli --example batch_bench
//! target/release/examples/batch_bench [MB]     # default 50
//! ```
//! The agents are the `mozen-agent` binary next to this example's directory.

use mozen_cli::bench::cluster::LocalCluster;
use mozen_cli::bench::wordcount::Corpus;
use mozen_client::batch::{SliceLines, plan};
use std::path::PathBuf;

#[tokio::main]
async fn main() {
    let mb: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50.0);
    let agent: PathBuf = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mozen-agent");
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = Corpus::generate(&dir.path().join("corpus"), mb).expect("corpus");
    assert_eq!(corpus.spec.lines, SliceLines::Auto);
    let (local_mbs, took) = corpus.run_local().await.expect("local run");
    println!(
        "corpus: about {mb} MB in {} files",
        mozen_cli::bench::wordcount::FILES
    );
    println!("local, one process, one core: {took:.2}s = {local_mbs:.1} MB/s");
    println!(
        "{:>6} {:>9} {:>8} {:>10} {:>10} {:>12}",
        "AGENTS", "SLICES", "TIME", "MB/S", "PLANNED", "PLANNED MB/S"
    );
    for n in 1..=3 {
        let cluster = LocalCluster::start(&agent, n, &dir.path().join(format!("n{n}")))
            .await
            .expect("cluster");
        let client = cluster.client();
        let job = corpus.prepare(&client).await.expect("prepare");
        let p = plan::plan(&job, &client).await.expect("plan");
        let planned = p.cluster[0].1.seconds;
        let report = corpus.run_cluster(&job, &client).await.expect("run");
        println!(
            "{n:>6} {:>9} {:>7.2}s {:>10.1} {:>9.2}s {:>12.1}",
            report.slices,
            report.elapsed_ms as f64 / 1e3,
            report.mb_per_s,
            planned,
            job.bytes() as f64 / 1e6 / planned
        );
        println!("        plan: {}", p.verdict);
    }
}
