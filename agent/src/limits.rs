//! Limits the public API enforces, each set by an agent flag (docs/operations.md#limits):
//!
//! - `--max-args`: the JSON arguments of one call; larger is refused with `INVALID_ARGUMENT`
//!   and `MZ-TOO-LARGE` before anything is proposed;
//! - `--max-result`: the result of one execution; a larger one is recorded as the request's
//!   failure `MZ-RESULT-TOO-LARGE` (not retried: the function is pure and would return the same);
//! - `--max-queue`: queued requests; a new top-level request while the queue is full is refused
//!   with `RESOURCE_EXHAUSTED` and `MZ-QUEUE-FULL`, so the queue cannot grow without bound.
//!   Calls that join a queued or running request or hit the memo table are still answered,
//!   and child calls of running functions are exempt: refusing them would fail work already
//!   admitted instead of holding new work back;
//! - `--max-client-streams`: RPCs that stay open (Call, CallBatch, Submit, Get, Watch) held
//!   at once by one client connection; one more is refused with `RESOURCE_EXHAUSTED` and
//!   `MZ-TOO-MANY-STREAMS`. Agents (requests carrying `mozen-node-id`) are exempt: their
//!   child calls nest as deep as the call trees they serve.
//!
//! - `--max-streams-per-connection`: HTTP/2 streams open at once on one connection, advertised
//!   in the server's HTTP/2 settings; a client queues more until one ends;
//! - `--max-client-connections`: connections accepted at once (see [`crate::connections`]);
//! - [`HTTP2_KEEPALIVE_INTERVAL`], [`HTTP2_KEEPALIVE_TIMEOUT`]: the server pings every
//!   connection this often and closes one that does not answer in time, so a vanished client
//!   does not keep its connection and streams.
//!
//! `--max-message` (the gRPC message bound) is older and lives in the config alone.

use crate::security::NODE_ID_HEADER;
use mozen_model::{Code, Outcome, TaskError};
use mozen_proto::status::status;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

/// Stable codes of the limit refusals.
pub const TOO_LARGE: &str = Code::TooLarge.as_str();
pub const RESULT_TOO_LARGE: &str = Code::ResultTooLarge.as_str();
pub const QUEUE_FULL: &str = Code::QueueFull.as_str();
pub const TOO_MANY_STREAMS: &str = Code::TooManyStreams.as_str();

/// Bytes a message may hold past `--max-message` around one value at its bound.
pub const FRAMING: usize = 64 << 10;

/// Longest function name accepted. Names are quoted in errors, and gRPC errors travel in
/// headers that peers bound (a 100 KB name made the client drop the connection).
pub const MAX_FUNCTION_NAME: usize = 256;

/// Refuses function names longer than [`MAX_FUNCTION_NAME`] bytes.
pub fn check_function_name(name: &str) -> Result<(), Status> {
    if name.len() > MAX_FUNCTION_NAME {
        let cut = name.char_indices().nth(40).map_or(name.len(), |(i, _)| i);
        return Err(status(
            Code::BadArguments,
            format_args!(
                "function name '{}...' is {} bytes; at most {MAX_FUNCTION_NAME}",
                &name[..cut],
                name.len()
            ),
        ));
    }
    Ok(())
}

/// How often the server pings each HTTP/2 connection.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The configured limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_args: usize,
    pub max_result: usize,
    pub max_queue: usize,
    pub max_client_streams: usize,
    pub max_streams_per_connection: u32,
    pub max_client_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: mozen_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_result: mozen_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_queue: 1_000_000,
            max_client_streams: 256,
            max_streams_per_connection: 256,
            max_client_connections: crate::connections::default_cap(
                crate::connections::open_files_limit(),
            ),
        }
    }
}

impl Limits {
    /// Refuses arguments longer than `--max-args`.
    pub fn check_args(&self, function: &str, len: usize) -> Result<(), Status> {
        if len > self.max_args {
            return Err(status(
                Code::TooLarge,
                format_args!(
                    "arguments of {function} are {len} bytes; this cluster accepts at \
                 most {} (--max-args)",
                    self.max_args
                ),
            ));
        }
        Ok(())
    }

    /// Turns a value larger than `--max-result` into a failure naming the limit.
    pub fn check_result(&self, node: u64, value: Vec<u8>) -> Outcome {
        if value.len() <= self.max_result {
            return Outcome::Value(value);
        }
        let mut e = TaskError::new(
            RESULT_TOO_LARGE,
            format!(
                "the result is {} bytes; this cluster keeps at most {} (--max-result)",
                value.len(),
                self.max_result
            ),
        );
        e.node = Some(node);
        Outcome::Error(e)
    }

    /// Admits a call of `key` unless it would add a new top-level request to a full queue
    /// (see the module docs).
    pub fn admit(
        &self,
        state: &mozen_store::ClusterState,
        key: &mozen_model::RequestKey,
        child: bool,
    ) -> Result<(), Status> {
        use mozen_model::RequestState::{Cancelled, Failed};
        let known = state
            .request_state(key)
            .is_some_and(|s| !matches!(s, Failed | Cancelled));
        if child || known {
            return Ok(());
        }
        self.check_queue(state.queue_len())
    }

    /// Refuses a new top-level request while `queued` requests wait.
    pub fn check_queue(&self, queued: usize) -> Result<(), Status> {
        if queued >= self.max_queue {
            return Err(status(
                Code::QueueFull,
                format_args!(
                    "{queued} requests are queued, the most this cluster holds \
                 (--max-queue {}); retry later",
                    self.max_queue
                ),
            ));
        }
        Ok(())
    }
}

/// Open RPCs by client connection (its remote address).
type OpenCounts = Arc<Mutex<HashMap<SocketAddr, usize>>>;

/// Open RPCs per client connection; see the module docs.
#[derive(Debug, Clone)]
pub struct StreamLimiter {
    max: usize,
    open: OpenCounts,
}

/// One open RPC of a client; released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    slot: Option<(SocketAddr, OpenCounts)>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some((addr, open)) = self.slot.take() {
            let mut open = open.lock().expect("streams");
            if let Some(n) = open.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&addr);
                }
            }
        }
    }
}

impl StreamLimiter {
    pub fn new(max: usize) -> Self {
        StreamLimiter {
            max,
            open: Arc::default(),
        }
    }

    /// A permit for one more open RPC of the client that sent `req`, or the refusal.
    pub fn acquire<T>(&self, req: &tonic::Request<T>) -> Result<StreamPermit, Status> {
        let Some(addr) = req.remote_addr() else {
            return Ok(StreamPermit { slot: None });
        };
        if req.metadata().contains_key(NODE_ID_HEADER) {
            return Ok(StreamPermit { slot: None });
        }
        let mut open = self.open.lock().expect("streams");
        let n = open.entry(addr).or_default();
        if *n >= self.max {
            return Err(status(
                Code::TooManyStreams,
                format_args!(
                    "the connection from {addr} already has {n} calls open, \
                 the most one client may hold (--max-client-streams {}); wait for one to end \
                 or open another connection",
                    self.max
                ),
            ));
        }
        *n += 1;
        Ok(StreamPermit {
            slot: Some((addr, self.open.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_from(port: u16) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            });
        r
    }

    #[test]
    fn streams_are_counted_per_connection_and_released() {
        let l = StreamLimiter::new(2);
        let a = l.acquire(&req_from(1)).unwrap();
        let _b = l.acquire(&req_from(1)).unwrap();
        let e = l.acquire(&req_from(1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with("MZ-TOO-MANY-STREAMS"),
            "{}",
            e.message()
        );
        assert!(l.acquire(&req_from(2)).is_ok(), "another connection");
        drop(a);
        assert!(l.acquire(&req_from(1)).is_ok());
        let mut agent = req_from(1);
        agent
            .metadata_mut()
            .insert(NODE_ID_HEADER, "3".parse().unwrap());
        for _ in 0..5 {
            std::mem::forget(l.acquire(&agent).unwrap());
        }
    }

    #[test]
    fn sizes_and_queue() {
        let l = Limits {
            max_args: 10,
            max_result: 4,
            max_queue: 2,
            max_client_streams: 1,
            ..Limits::default()
        };
        assert!(l.check_args("f", 10).is_ok());
        let e = l.check_args("f", 11).unwrap_err();
        assert!(
            e.message().contains("arguments of f are 11 bytes"),
            "{}",
            e.message()
        );
        assert_eq!(
            l.check_result(1, b"1234".to_vec()),
            Outcome::Value(b"1234".to_vec())
        );
        match l.check_result(1, b"12345".to_vec()) {
            Outcome::Error(e) => assert_eq!(e.code, RESULT_TOO_LARGE),
            o => panic!("{o:?}"),
        }
        assert!(l.check_queue(1).is_ok());
        assert_eq!(
            l.check_queue(2).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
}
