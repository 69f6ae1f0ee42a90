//! A Mozen agent with one user function, `word_count(text) -> {words, lines}`, next to the
//! built-ins. Start it like `mozen-agent` (same flags):
//!
//! ```sh
//! cargo run -p custom-agent -- --id 1 --listen 127.0.0.1:7001 --voters 1
//! mozen --addr 127.0.0.1:7001 call word_count '"one two\nthree"'
//! ```

use mozen_agent::{Agent, Ctx, TaskError};
use serde::Serialize;

#[derive(Serialize)]
struct Counts {
    words: usize,
    lines: usize,
}

async fn word_count(_ctx: Ctx, text: String) -> Result<Counts, TaskError> {
    Ok(Counts {
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
    })
}

fn main() -> std::process::ExitCode {
    Agent::builder()
        .function_with_shape("word_count", "text (string)", word_count)
        .main()
}
