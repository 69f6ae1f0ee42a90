//! Integration tests of mozen-store: one binary, one module per concern.

mod bad_input;
mod common;
mod crash;
mod damaged;
mod golden;
mod props;
mod restart;
mod sled_recovery;
mod suite;
