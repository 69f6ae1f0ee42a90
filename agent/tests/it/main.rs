//! Integration tests: real `mozen-agent` processes on 127.0.0.1 ephemeral ports with real sled
//! data dirs, killed with SIGKILL and restarted.

mod bad_input;
mod batch;
mod bench;
mod chaos;
mod cluster;
mod core_death;
mod corruption;
mod elastic;
mod execution;
mod express;
mod formation;
mod harness;
mod integrity;
mod limits;
mod partition;
mod security;
