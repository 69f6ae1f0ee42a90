//! mozen-cli: the `mozen` binary and its tools, for operators and benchmarks.
//!
//! - [`commands`]: the commands of `mozen` (status, nodes, call, submit, get, tree, run, plan,
//!   up, down, ...), their flags and their output.
//! - [`progress`]: the progress bar of `mozen run`.
//! - [`elastic`]: `mozen up` and `mozen down`: bring a hosts file's cluster up, take it down.
//! - [`bench`](mod@bench): `mozen bench`, the benchmark harness on local clusters of real agents.
//! - [`chaos`]: `mozen chaos`, chaos testing of real agent processes: nemesis, history, checker.
//!
//! Dependency rule: depends on model, proto, client and fleet; never on the agent, the store,
//! sled or openraft. It reaches the cluster through the public gRPC API and starts agents as
//! processes (the `mozen-agent` binary), so it compiles none of the daemon.

pub mod bench;
pub mod chaos;
pub mod commands;
pub mod elastic;
pub mod progress;
