//! `mozen-agent`: a Mozen cluster member. See `mozen-agent --help` and docs/operations.md.

fn main() -> std::process::ExitCode {
    mozen_agent::node::Agent::builder().main()
}
