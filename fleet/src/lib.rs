//! mozen-fleet: the hosts file and the launchers: what should run where, and how to start and
//! stop it. The `mozen` CLI uses it for `mozen up` and `mozen down`, the leader's autoscaler
//! to start and stop pool agents, and both sides share the fault file and the memory setting
//! of their processes.
//!
//! - [`hosts`]: the hosts file (machines, launchers, pools, autoscaling policy), validated.
//! - [`launch`]: starting and stopping agents locally, over ssh or with the operator's programs.
//! - [`faults`]: the test-only fault file: its format, and the partitions tests and
//!   `mozen chaos` write into it.
//! - [`memory`]: process-wide memory settings of Mozen's programs.
//!
//! Dependency rule: depends on mozen-model only (with tokio, serde, toml and process helpers);
//! never on the store, openraft, gRPC or the agent, so the CLI can use it without compiling
//! the daemon.

pub mod faults;
pub mod hosts;
pub mod launch;
pub mod memory;
