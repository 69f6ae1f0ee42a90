//! The chaos workload: clients calling built-in functions whose results are known in advance.
//!
//! - `tree [depth, fanout, nonce]` with a nonce unique to the run, client and operation: a
//!   fresh tree of `1 + fanout + ... + fanout^depth` nested requests, whose value is that count;
//! - `fib n` for n drawn from 1-90: the same keys again and again, sharing memoized children
//!   across clients, so a key acknowledged twice must carry the same value;
//! - `echo [..]` with a unique argument: one request that returns its argument.

use super::history::{Entry, History};
use mozen_client::{CallOptions, Client, ClientError};
use mozen_model::{Code, RequestKey, canonical_args};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one call may take before the client records it as indeterminate.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The n-th Fibonacci number (n ≤ 93 fits in u64).
pub fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        let c = a.wrapping_add(b);
        a = b;
        b = c;
    }
    a
}

/// The value a correct cluster returns for `function(args)`, when the workload knows it.
pub fn expected(function: &str, args: &Value) -> Option<Value> {
    match function {
        "fib" => args.as_u64().filter(|n| *n <= 93).map(|n| json!(fib(n))),
        "tree" => {
            let depth = args.get(0)?.as_u64()?;
            let fanout = args.get(1)?.as_u64()?;
            let mut total = 0u64;
            let mut level = 1u64;
            for _ in 0..=depth {
                total = total.checked_add(level)?;
                level = level.checked_mul(fanout)?;
            }
            Some(json!(total))
        }
        "echo" => Some(args.clone()),
        _ => None,
    }
}

/// The `i`-th operation of `client`: a function and its arguments.
pub fn next_op(rng: &mut ChaCha8Rng, seed: u64, client: usize, i: u64) -> (&'static str, Value) {
    match rng.random_range(0..10) {
        0..=3 => {
            let depth = rng.random_range(1..=3u32);
            let fanout = rng.random_range(2..=3u32);
            (
                "tree",
                json!([depth, fanout, format!("{seed}-{client}-{i}")]),
            )
        }
        4..=6 => ("fib", json!(rng.random_range(1..=90u64))),
        _ => ("echo", json!(["chaos", seed, client, i])),
    }
}

/// Runs one client until `stop` fires: one call at a time, each recorded as invoke and then
/// ok, fail or info. The operation in flight when `stop` fires is finished first.
pub async fn client_loop(
    client_id: usize,
    client: Client,
    seed: u64,
    ops: Arc<AtomicU64>,
    history: Arc<History>,
    stop: CancellationToken,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (client_id as u64 + 1).wrapping_mul(0x9e37));
    let opts = CallOptions {
        timeout: Some(CALL_TIMEOUT),
        // Pauses and kills re-queue running work; allow more than the default three attempts
        // so that a request survives a run of faults.
        max_attempts: 10,
        ..Default::default()
    };
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let (function, args) = next_op(&mut rng, seed, client_id, i);
        i += 1;
        let op = ops.fetch_add(1, Ordering::Relaxed);
        let key = RequestKey::of(function, &canonical_args(&args)).to_hex();
        history.record(Entry::Invoke {
            op,
            client: client_id,
            at_ms: history.now_ms(),
            function: function.to_string(),
            args: args.clone(),
            key,
        });
        let r = client.call_json(function, args, &opts).await;
        let at_ms = history.now_ms();
        history.record(match r {
            Ok(reply) => {
                let text = reply.result_json.as_deref().unwrap_or("null");
                match serde_json::from_str::<Value>(text) {
                    Ok(value) => Entry::Ok {
                        op,
                        client: client_id,
                        at_ms,
                        value,
                    },
                    Err(e) => Entry::Fail {
                        op,
                        client: client_id,
                        at_ms,
                        code: Code::BadResult.as_str().into(),
                        message: format!("result {text} is not JSON: {e}"),
                    },
                }
            }
            Err(e @ (ClientError::Timeout { .. } | ClientError::Unreachable { .. })) => {
                Entry::Info {
                    op,
                    client: client_id,
                    at_ms,
                    message: e.to_string(),
                }
            }
            Err(e) => Entry::Fail {
                op,
                client: client_id,
                at_ms,
                code: e.code().to_string(),
                message: e.to_string(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_values() {
        assert_eq!(fib(90), 2880067194370816120);
        assert_eq!(expected("fib", &json!(10)), Some(json!(55)));
        assert_eq!(expected("tree", &json!([2, 3, "x"])), Some(json!(13)));
        assert_eq!(expected("tree", &json!([0, 3, "x"])), Some(json!(1)));
        assert_eq!(expected("echo", &json!([1])), Some(json!([1])));
        assert_eq!(expected("nope", &json!(1)), None);
    }

    #[test]
    fn operations_follow_the_seed() {
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|i| next_op(&mut rng, seed, 0, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
