//! Integration tests of the daemon: real `mozen-agent` processes on 127.0.0.1 ephemeral ports
//! with real sled data dirs, killed with SIGKILL and restarted; some drive them with the `mozen`
//! CLI. The harness is mozen-testkit's; the binaries are the workspace's (`cargo build
//! --workspace --bins` first). The CLI's own commands and tools are tested in cli/tests/it.

use mozen_testkit as harness;

mod admission;
mod bad_input;
mod batch;
mod cluster;
mod connections;
mod core_death;
mod corruption;
mod execution;
mod express;
mod formation;
mod integrity;
mod limits;
mod partition;
mod roles;
mod security;
mod standard;
