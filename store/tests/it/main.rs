//! Integration tests of mozen-store: one binary, one module per concern.

mod bad_input;
mod checkpoints;
mod common;
mod crash;
mod damaged;
mod golden;
mod props;
mod restart;
mod suite;
