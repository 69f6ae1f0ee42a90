//! Integration tests of mozen-store: one binary, one module per concern.

mod bad_input;
mod checkpoints;
mod committed;
mod common;
mod corruption;
mod crash;
mod damaged;
mod golden;
mod props;
mod restart;
mod sled_recovery;
mod suite;
mod upgrade;
