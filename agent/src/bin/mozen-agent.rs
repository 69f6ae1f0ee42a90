//! `mozen-agent`: a Mozen cluster member. See `mozen-agent --help` and docs/operations.md.

/// mimalloc: the agent allocates many small, short-lived buffers on several threads, where
/// it costs less CPU than the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `mozen bench` measures the leader's scheduling in this binary (see bench_scale).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == mozen_agent::bench_scale::COMMAND)
    {
        return mozen_agent::bench_scale::main();
    }
    mozen_agent::node::Agent::builder().main()
}
