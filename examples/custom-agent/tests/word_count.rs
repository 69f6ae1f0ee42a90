//! The example agent's user functions called through a real one-agent cluster.

use mozen_agent::client::Client;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn user_function_runs_on_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_custom-agent"))
        .args([
            "--id",
            "1",
            "--listen",
            &addr,
            "--voters",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("n1"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::with_options(
        [addr],
        mozen_proto::DEFAULT_MAX_MESSAGE_BYTES,
        Duration::from_secs(30),
    )
    .unwrap();
    let r: Result<Value, _> = client.call("word_count", "one two\nthree four five").await;
    // A blocking function and an async one with a computed section.
    let primes: Result<u64, _> = client.call("primes_below", 100).await;
    let digest: Result<u64, _> = client.call("digest_words", "one two").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.unwrap(), json!({"words": 5, "lines": 2}));
    assert_eq!(primes.unwrap(), 25);
    assert!(digest.is_ok(), "{digest:?}");
}
