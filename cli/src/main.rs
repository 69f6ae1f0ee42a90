//! `mozen`: submit and inspect work, operate nodes, bring a hosts file's cluster up and down,
//! benchmark and attack local clusters. Exit codes: 0 ok, 1 runtime error, 2 usage.
//!
//! Thin on purpose: sets the process up, parses the flags and runs the command on a
//! single-threaded runtime; the commands are the library's (`mozen_cli::commands`).

use clap::Parser;
use mozen_cli::commands::{Cli, Fail, run};
use std::process::ExitCode;

/// mimalloc: the agent allocates many small, short-lived buffers on several threads, where
/// it costs less CPU than the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mozen_fleet::memory::no_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Diagnostics of the client library (leader changes, broken streams) when asked for.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MOZEN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(m)) => {
            eprintln!("mozen: {m}");
            ExitCode::from(2)
        }
        Err(Fail::Runtime(m)) => {
            eprintln!("mozen: {m}");
            ExitCode::from(1)
        }
    }
}
