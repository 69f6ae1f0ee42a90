//! mozen-agent: the daemon every machine runs, the Rust client library, and the `mozen` CLI.
//!
//! - [`config`]: flags of `mozen-agent`, validated into `AgentConfig`.
//! - [`node`]: `run`: store, Raft, gRPC server, cluster formation, graceful shutdown;
//!   node operations (drain, promote, demote, remove).
//! - [`network`]: the peer-only Raft transport over gRPC.
//! - [`security`]: the cluster token and TLS on both services, for servers and clients.
//! - [`faults`]: test-only fault injection (cutting links between agents).
//! - [`proposer`]: batches many facts into one log entry.
//! - [`hub`]: reacts to applied commands (wakes waiters, pushes work, nudges the scheduler).
//! - [`leader`]: the leader's scheduler and liveness loops.
//! - [`worker`]: runs assigned requests and reports outcomes.
//! - [`functions`]: the function registry, `Ctx` for re-entrant calls, and the built-ins.
//! - [`service`], [`view`]: the public `Mozen` gRPC service and its read views.
//! - [`client`]: the client library (`Client::connect`, `call`, `submit`, `map`, `call_or_local`).
//! - [`bench`]: `mozen bench`, the benchmark harness on local clusters of real agents.
//! - [`batch`]: batch jobs: work specs, map/reduce over file slices, cost model and plans.
//! - [`builder`]: `Agent::builder()`-style entry point for agents with user functions.
//! - [`metrics`]: Prometheus text exposition.
//!
//! Dependency rule: depends on model, proto, store and scheduler; nothing depends on it but
//! its binaries and user agents.

pub mod batch;
pub mod bench;
pub mod builder;
pub mod client;
pub mod config;
pub mod faults;
pub mod functions;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod security;
pub mod service;
pub mod view;
pub mod worker;

pub use builder::AgentBuilder;
pub use client::{Client, ClientError};
pub use functions::{Ctx, Functions, fail};
pub use mozen_model::TaskError;
pub use node::Agent;
