//! Call throughput and latency against a running cluster (not a test; prints numbers).
//!
//! ```sh
//! cargo run --release -p mozen-agent --example calls_bench -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! ```

use mozen_agent::client::{Client, split_addrs};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let addrs = split_addrs(
        &std::env::args()
            .nth(1)
            .unwrap_or_else(|| "127.0.0.1:7070".into()),
    );
    let client = Client::with_options(addrs, 16 << 20, Duration::from_secs(60)).expect("client");
    let nonce = std::process::id();
    let n = 10_000;
    let t0 = Instant::now();
    let rs = client
        .map::<_, Value, _>("noop", (0..n).map(|i| json!([nonce, "tp", i])), 1000)
        .await;
    let dt = t0.elapsed();
    assert!(rs.iter().all(Result::is_ok));
    println!(
        "throughput: {n} concurrent distinct noop calls in {:.2}s = {:.0} calls/s",
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64()
    );
    let mut lat = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        let _: Value = client
            .call("noop", json!([nonce, "seq", i]))
            .await
            .expect("call");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("sequential noop: p50 {:?} p99 {:?}", lat[500], lat[990]);
    let mut hit = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        let _: Value = client
            .call("noop", json!([nonce, "seq", i]))
            .await
            .expect("call");
        hit.push(t.elapsed());
    }
    hit.sort();
    println!("memo hit: p50 {:?} p99 {:?}", hit[500], hit[990]);
}
