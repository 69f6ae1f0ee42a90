//! mozen-client: the Rust client of a Mozen cluster, for programs that call it (the `mozen`
//! CLI, the console, user programs, and agents calling each other).
//!
//! - [`client`]: [`Client`]: `connect`, `call`, `submit`, `map`, `call_or_local`, and `rpc`
//!   for any other operation; it follows the leader (`MZ-NOT-LEADER` redirects, one search
//!   for the leader when an agent is lost) and re-attaches to a call in flight by its key.
//! - [`status`]: what a gRPC refusal means (a redirect, a lost agent, the cluster's answer)
//!   and operator messages with their `MZ-` code.
//! - [`transport`]: channels with the cluster token and TLS ([`ClientTransport`]), the TLS
//!   files, and (feature `clap`) the security flags of client programs.
//! - [`worker`]: the agents' own worker RPCs, on `MozenWorker` (or `Mozen`'s old names for a
//!   leader of the previous release).
//! - [`error`]: [`ClientError`], typed and with a stable code.
//! - [`batch`]: batch jobs from the client's side: job files, slicing, running and planning a
//!   job on a cluster (the agent runs the job's root request and the built-ins).
//!
//! Dependency rule: depends on mozen-model, mozen-proto and tonic (with tokio, serde and
//! futures, and toml, glob and blake3 for batch jobs); never on sled, openraft, the store or
//! the agent. It sees the cluster only
//! through the public gRPC API.

pub mod batch;
pub mod client;
pub mod error;
pub mod status;
pub mod transport;
pub mod worker;

pub use client::{CallOptions, Client, Handle, call_request, split_addrs};
pub use error::ClientError;
pub use status::{describe, is_not_leader, is_transport, leader_hint, rejected};
#[cfg(feature = "clap")]
pub use transport::ClientArgs;
pub use transport::{AuthChannel, ClientTransport, Credentials, TlsFiles, Token};
