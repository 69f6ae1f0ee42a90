//! mozen-proto: the gRPC schema and its generated code.
//!
//! Two services in separate files: `proto/mozen.proto` (the public `Mozen` API used by the
//! CLI, the console, clients and workers) and `proto/raft.proto` (the peer-only `Raft`
//! transport). [`convert`] maps between wire messages and mozen-model types; [`status`] maps
//! error codes to gRPC statuses with their `google.rpc.Status` details. No other logic lives
//! here. [`FILE_DESCRIPTOR_SET`] is the compiled schema, which the agent serves through gRPC
//! server reflection.
//!
//! Dependency rule: depends on mozen-model and tonic/prost (with tonic-types) only.

#[allow(clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("mozen.v1");
}

pub mod convert;
pub mod status;

pub use v1::*;

/// The encoded `FileDescriptorSet` of both .proto files, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mozen_descriptor.bin"));

/// Metadata key carrying the leader's address when a follower refuses a write.
pub const LEADER_ADDR_HEADER: &str = "mozen-leader-addr";
/// Default bound on a single gRPC message, both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
