//! A Mozen agent with user functions next to the built-ins. Start it like `mozen-agent` (same
//! flags):
//!
//! ```sh
//! cargo run -p custom-agent -- --id 1 --listen 127.0.0.1:7001 --voters 1
//! mozen --addr 127.0.0.1:7001 call word_count '"one two\nthree"'
//! mozen --addr 127.0.0.1:7001 call primes_below 100000
//! mozen --addr 127.0.0.1:7001 call digest_words '"one two three"'
//! ```
//!
//! Functions run on the agent's work runtime, below the priority of its Raft and gRPC
//! threads (docs/functions.md). Quick ones can be plain `async fn`s; CPU-heavy or blocking
//! ones are registered with `function_blocking`, or move their heavy section into
//! `ctx.compute`.

use mozen_agent::{Agent, Ctx, TaskError};
use serde::Serialize;

#[derive(Serialize)]
struct Counts {
    words: usize,
    lines: usize,
}

/// Quick: an `async fn` that does little work between awaits.
async fn word_count(_ctx: Ctx, text: String) -> Result<Counts, TaskError> {
    Ok(Counts {
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
    })
}

/// CPU-heavy: a plain function, registered with `function_blocking`, runs on a blocking
/// thread of the work runtime.
fn primes_below(_ctx: Ctx, n: u64) -> Result<u64, TaskError> {
    let n = usize::try_from(n.min(50_000_000))
        .map_err(|_| mozen_agent::fail("n does not fit in memory"))?;
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            for j in (i * i..n).step_by(i) {
                composite[j] = true;
            }
        }
    }
    Ok(count)
}

/// Mixed: an `async fn` that calls the cluster, with its CPU-heavy section in `ctx.compute`.
async fn digest_words(ctx: Ctx, text: String) -> Result<u64, TaskError> {
    let heavy: String = ctx.call("echo", &text).await?;
    ctx.compute(move || {
        (0..10_000u64).fold(0u64, |h, i| {
            heavy
                .bytes()
                .fold(h ^ i, |h, b| h.rotate_left(5) ^ u64::from(b))
        })
    })
    .await
}

fn main() -> std::process::ExitCode {
    Agent::builder()
        .function_with_shape("word_count", "text (string)", word_count)
        .function_blocking("primes_below", "n (integer)", primes_below)
        .function_with_shape("digest_words", "text (string)", digest_words)
        .main()
}
