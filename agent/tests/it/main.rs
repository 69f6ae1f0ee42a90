//! Integration tests: real `mozen-agent` processes on 127.0.0.1 ephemeral ports with real sled
//! data dirs, killed with SIGKILL and restarted.

mod batch;
mod bench;
mod cluster;
mod execution;
mod formation;
mod harness;
mod partition;
mod security;
