//! mozen-agent: the daemon every machine runs, the builder for custom agents, and the `mozen`
//! CLI.
//!
//! - [`config`]: flags of `mozen-agent`, validated into `AgentConfig`.
//! - [`error`]: the agent's errors and exit codes.
//! - [`node`]: `run`: store, Raft, gRPC server, cluster formation, graceful shutdown.
//! - [`membership`]: node operations (drain, undrain, promote, demote, remove) as a typed
//!   `NodeOp` with a typed error.
//! - [`network`]: the peer-only Raft transport over gRPC.
//! - [`security`]: the cluster token and TLS on both services: the flags and the server side
//!   here, the client side re-exported from mozen-client.
//! - [`faults`]: test-only fault injection (cutting links between agents, diverging digests).
//! - [`integrity`], [`checks`]: corruption checks across members: voters compare state
//!   checkpoints; an outvoted one quarantines itself.
//! - [`proposer`]: batches many facts into one log entry.
//! - [`hub`]: reacts to applied commands (wakes waiters; shows them to the leadership).
//! - [`leadership`]: what only the leader has, owned by one `Leadership` value: scheduling,
//!   liveness, express calls, the autoscaler, the workers' Work streams.
//! - [`repair`]: `mozen-agent repair`: a damaged member moved aside and rejoined from its peers.
//! - [`failover`]: a follower stands for election as soon as a silent leader's lease is over.
//! - [`supervise`]: the Raft core and the essential tasks watched; a death stops the agent.
//! - [`worker`]: runs assigned requests and reports outcomes.
//! - [`work`]: the work runtime functions run on, below the agent's own priority.
//! - [`functions`]: the function registry, `Ctx` for re-entrant calls, and the built-ins.
//! - [`service`], [`view`]: the public `Mozen` gRPC service and its read views.
//! - [`client`]: the client library (`Client::connect`, `call`, `submit`, `map`, `call_or_local`),
//!   re-exported from mozen-client so `mozen_agent::client::Client` keeps working.
//! - [`bench`]: `mozen bench`, the benchmark harness on local clusters of real agents.
//! - [`batch`]: batch jobs: work specs, map/reduce over file slices, cost model and plans.
//! - [`builder`]: `Agent::builder()`-style entry point for agents with user functions.
//! - [`metrics`]: Prometheus text exposition.
//! - [`hosts`]: the hosts file (machines, launchers, pools, autoscaling policy), validated.
//! - [`launch`]: starting and stopping agents locally, over ssh or with the operator's programs.
//! - [`elastic`]: `mozen up` and `mozen down`: bring a hosts file's cluster up, take it down.
//! - [`limits`]: argument, result, queue and per-client stream limits of the public API.
//! - [`chaos`]: chaos testing of real agent processes (`mozen chaos`): nemesis, history, checker.
//!
//! Dependency rule: depends on model, proto, store, scheduler and client; nothing depends on it
//! but its binaries and user agents.

pub mod agent;
pub mod batch;
pub mod bench;
pub mod builder;
pub mod chaos;
pub mod checks;
pub mod client;
pub mod config;
pub mod context;
pub mod elastic;
pub mod error;
pub mod failover;
pub mod faults;
pub mod functions;
pub mod hosts;
pub mod hub;
pub mod integrity;
pub mod launch;
pub mod leadership;
pub mod leading;
pub mod limits;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod repair;
pub mod security;
pub mod service;
pub mod supervise;
pub mod view;
pub mod work;
pub mod worker;

pub use agent::Agent;
pub use builder::AgentBuilder;
pub use client::{Client, ClientError};
pub use functions::{Ctx, Functions, fail};
pub use mozen_model::TaskError;
