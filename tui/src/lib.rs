//! mozen-console: the live terminal console for Mozen operators.
//!
//! The shape follows the ratatui component template and bottom's collection thread:
//!
//! - [`app`]: the state, one [`app::Action`] enum and the synchronous
//!   [`app::App::update`], which may return an [`app::Effect`] (an RPC to perform). Unit-tested
//!   by replaying keys; no I/O.
//! - [`ui`]: drawing, `impl Widget for &App`, one file per view (nodes, queues, requests, raft,
//!   events). Never awaits.
//! - [`client`]: the background task feeding the UI: a `Watch` stream from the leader
//!   (following `MZ-NOT-LEADER` redirects, reconnecting with backoff) and the effects, whose
//!   outcomes come back as actions. Calls, leader following and error classification are
//!   mozen-client's.
//! - [`access`]: the cluster token and TLS flags (`--token-file`, `--tls-ca/-cert/-key`), read
//!   into mozen-client's `ClientTransport`.
//! - [`demo`]: `--demo`, a local 3-agent cluster with a steady workload.
//! - [`error`]: errors and flag validation.
//!
//! `main.rs` is thin: flags, terminal setup and restore, and the run loop.
//!
//! Dependency rule: mozen-model, mozen-proto and mozen-client; never sled, openraft, the store,
//! the agent or the CLI. The console sees the cluster only through the public gRPC API.

pub mod access;
pub mod app;
pub mod client;
pub mod demo;
pub mod error;
pub mod ui;
