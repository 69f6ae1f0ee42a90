//! `mozen-agent`: a Mozen cluster member. See `mozen-agent --help` and docs/operations.md.

/// mimalloc: the agent allocates many small, short-lived buffers on several threads, where
/// it costs less CPU than the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mozen_agent::node::Agent::builder().main()
}
