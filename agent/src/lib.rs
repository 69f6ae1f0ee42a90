//! mozen-agent: the daemon every machine runs (a Raft member: leadership, workers, the gRPC
//! service) and the builder for custom agents. The `mozen` CLI and its tools are mozen-cli's.
//!
//! - [`builder`]: `Agent::builder()`: an agent binary with the built-ins, the batch functions
//!   and user functions; its command line, exit codes and signals.
//! - [`config`]: flags of `mozen-agent`, validated into `AgentConfig`.
//! - [`error`]: the agent's errors and exit codes.
//! - [`node`]: `run`: store, Raft, gRPC server, cluster formation, graceful shutdown.
//! - [`membership`]: node operations (drain, undrain, promote, demote, remove) as a typed
//!   `NodeOp` with a typed error.
//! - [`network`]: the peer-only Raft transport over gRPC.
//! - [`security`]: tokens (scoped by role with an access file) and TLS on every service: the
//!   flags and the server side here, the client side re-exported from mozen-client.
//! - [`faults`]: test-only fault injection (cutting links between agents, diverging digests);
//!   the fault file's format is mozen-fleet's.
//! - [`integrity`], [`checks`]: corruption checks across members: voters compare state
//!   checkpoints; an outvoted one quarantines itself.
//! - [`proposer`]: batches many facts into one log entry.
//! - [`provenance`]: outcomes taken only from the node holding the attempt; refusals counted.
//! - [`hub`]: reacts to applied commands (wakes waiters; shows them to the leadership).
//! - [`leadership`]: what only the leader has, owned by one `Leadership` value: scheduling,
//!   liveness, express calls, the autoscaler, the workers' Work streams; [`leading`] follows
//!   Raft's metrics to make and end it.
//! - [`context`], [`agent`]: the handles every part shares, and the agent its services take.
//! - [`repair`]: `mozen-agent repair`: a damaged member moved aside and rejoined from its peers.
//! - [`failover`]: a follower stands for election as soon as a silent leader's lease is over.
//! - [`supervise`]: the Raft core and the essential tasks watched; a death stops the agent.
//! - [`worker`]: runs assigned requests and reports outcomes.
//! - [`work`]: the work runtime functions run on, below the agent's own priority.
//! - [`functions`]: the function registry, `Ctx` for re-entrant calls, and the core built-ins.
//! - [`batch`]: the batch job's root request and the batch built-ins as functions; the
//!   client's side of batch jobs is re-exported from mozen-client.
//! - [`service`], [`view`]: the public `Mozen` gRPC service and its read views.
//! - [`limits`]: argument, result, queue and per-client stream limits of the public API;
//!   [`connections`]: the open-file limit and the cap on accepted connections.
//! - [`metrics`]: Prometheus text exposition.
//! - [`hosts`], [`launch`], [`memory`]: the hosts file, the launchers and the memory setting,
//!   re-exported from mozen-fleet, which the CLI shares.
//! - [`client`]: the client library (`Client::connect`, `call`, `submit`, `map`, `call_or_local`),
//!   re-exported from mozen-client so `mozen_agent::client::Client` keeps working.
//! - [`bench_scale`]: the `scale` workload of `mozen bench` (the leader's scheduling pass and the
//!   state machine in-process), run as `mozen-agent bench-scale`.
//!
//! Dependency rule: depends on model, proto, store, scheduler, client and fleet; nothing depends
//! on it but its binaries and user agents (the CLI and the console do not).

pub mod agent;
pub mod batch;
pub mod bench_scale;
pub mod builder;
pub mod checks;
pub mod client;
pub mod config;
pub mod connections;
pub mod context;
pub mod error;
pub mod failover;
pub mod faults;
pub mod functions;
pub mod hub;
pub mod integrity;
pub mod leadership;
pub mod leading;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod paging;
pub mod proposer;
pub mod provenance;
pub mod repair;
pub mod security;
pub mod service;
pub mod supervise;
pub mod view;
pub mod work;
pub mod worker;

pub use mozen_fleet::{hosts, launch, memory};

pub use agent::Agent;
pub use builder::AgentBuilder;
pub use client::{Client, ClientError};
pub use functions::{Ctx, Functions, fail};
pub use mozen_model::TaskError;

#[cfg(test)]
mod tests {
    /// The sizes the client library uses for the agent, which it cannot take from the agent's
    /// own modules (it does not depend on it).
    #[test]
    fn what_is_restated_outside_the_agent_matches_its_own() {
        assert_eq!(
            mozen_client::batch::UPLOAD_BYTES,
            crate::proposer::MAX_ENTRY_BYTES
        );
    }
}
