//! W1, W2 and memo of `mozen bench` against a cluster that is already running (not a test;
//! prints numbers). `mozen bench` starts fresh clusters itself; this measures any cluster.
//!
//! ```sh
//! cargo run --release -p mozen-cli --example calls_bench -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! ```

use mozen_cli::bench::{BenchConfig, Workload, calls, report::fmt};
use mozen_client::{Client, split_addrs};
use std::time::Duration;

#[tokio::main]
async fn main() {
    let addrs = split_addrs(
        &std::env::args()
            .nth(1)
            .unwrap_or_else(|| "127.0.0.1:7070".into()),
    );
    let cfg = BenchConfig {
        agents: addrs.len(),
        workloads: vec![Workload::W1, Workload::W2, Workload::Memo],
        runs: 1,
        json: None,
        scale: 1.0,
        batch_mb: 0.0,
        in_flight: Some(1000),
        agent_bin: Default::default(),
        flood_queue: mozen_cli::bench::flood::MAX_QUEUE,
    };
    let client = Client::with_options(addrs, 16 << 20, Duration::from_secs(60)).expect("client");
    let nonce = format!("{}", std::process::id());
    calls::warm_up(&client, &cfg, &nonce)
        .await
        .expect("warm-up");
    for (w, o) in [
        (
            Workload::W1,
            calls::w1(&client, &cfg, &nonce, || f64::NAN).await,
        ),
        (Workload::W2, calls::w2(&client, &cfg, &nonce).await),
        (Workload::Memo, calls::memo(&client, &cfg, &nonce).await),
    ] {
        if let Some(e) = &o.error {
            panic!("{}: {e}", w.name());
        }
        for (k, v) in &o.metrics {
            println!("{:<6} {k:<24} {}", w.name(), fmt(*v));
        }
    }
}
