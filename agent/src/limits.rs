//! Limits the public API enforces, each set by an agent flag (docs/operations.md#limits):
//!
//! - `--max-args`: the JSON arguments of one call; larger is refused with `INVALID_ARGUMENT`
//!   and `MZ-TOO-LARGE` before anything is proposed;
//! - `--max-result`: the result of one execution; a larger one is recorded as the request's
//!   failure `MZ-RESULT-TOO-LARGE` (not retried: the function is pure and would return the same);
//! - `--max-queue`, `--max-queued-bytes`: outstanding requests (queued or running: a running
//!   request that sleeps gives its slot back, so counting the queue alone would let any number
//!   in) and their argument bytes, in the cluster; `--max-queue-per-client`,
//!   `--max-queued-bytes-per-client`: the same for one client identity (`Caller::name`; by
//!   default half the cluster's, so no client fills the cluster alone).
//!   A new top-level request beyond any of them is refused with `RESOURCE_EXHAUSTED`,
//!   `MZ-QUEUE-FULL` and a `RetryInfo` hint, before anything is written ([`Admission`]: calls
//!   admitted but not applied yet count, so calls arriving together cannot all pass one look
//!   at the queue). Calls that join a queued or running request or hit the memo table are
//!   still answered, and child calls of running functions are exempt (they count against
//!   their root caller once queued): refusing them would fail work already admitted instead
//!   of holding new work back. A CallBatch is admitted whole or refused whole;
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
use mozen_model::RequestKey;
use mozen_model::{Code, Outcome, TaskError};
use mozen_proto::status::status;
use mozen_store::ClusterState;
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
    pub max_queued_bytes: u64,
    pub max_queue_per_client: usize,
    pub max_queued_bytes_per_client: u64,
    pub max_client_streams: usize,
    pub max_streams_per_connection: u32,
    pub max_client_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: mozen_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_result: mozen_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_queue: 100_000,
            max_queued_bytes: 256 << 20,
            max_queue_per_client: 50_000,
            max_queued_bytes_per_client: 128 << 20,
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

    /// Admits `calls` of `client` together, or refuses them all: each that would add a new
    /// top-level request counts against the cluster's and the client's bounds, with what is
    /// queued in `state` and what was admitted but is not applied yet (see the module docs).
    /// Returns one permit per call, to hold until its submission is applied.
    pub fn admit(
        &self,
        admission: &Admission,
        state: &ClusterState,
        client: &Arc<str>,
        calls: &[Candidate<'_>],
    ) -> Result<Vec<AdmitPermit>, Status> {
        use mozen_model::RequestState::{Cancelled, Done, Failed};
        let is_new = |c: &Candidate<'_>| {
            !c.child
                && match state.request_state(c.key) {
                    None | Some(Failed | Cancelled) => true,
                    Some(Done) => c.no_cache,
                    Some(_) => false,
                }
        };
        let new: Vec<usize> = calls
            .iter()
            .map(|c| if is_new(c) { c.bytes } else { usize::MAX })
            .collect();
        let n = new.iter().filter(|b| **b != usize::MAX).count();
        if n == 0 {
            return Ok(calls.iter().map(|_| AdmitPermit::none()).collect());
        }
        let bytes: u64 = new
            .iter()
            .filter(|b| **b != usize::MAX)
            .map(|b| *b as u64)
            .sum();
        let mut pending = admission.pending.lock().expect("admission");
        let owners = state.owners();
        let (total, usage) = (owners.total(), owners.usage_of(client));
        let (p_mine, p_mine_bytes) = pending.by.get(client).copied().unwrap_or((0, 0));
        let queued = total.requests + pending.count;
        let queued_bytes = total.bytes + pending.bytes;
        let refuse = |what: String, flag: &str, bound: String| {
            let whose = if flag.ends_with("-per-client") {
                "one client may hold"
            } else {
                "this cluster holds"
            };
            Err(status(
                Code::QueueFull,
                format_args!(
                    "{what}, the most {whose} ({flag} {bound}); {n} more from client \
                     '{client}' refused; retry later"
                ),
            ))
        };
        if queued + n > self.max_queue {
            return refuse(
                format!("{queued} requests are outstanding (queued or running)"),
                "--max-queue",
                self.max_queue.to_string(),
            );
        }
        // A request larger than a byte bound alone is still admitted into an empty queue.
        if queued_bytes > 0 && queued_bytes + bytes > self.max_queued_bytes {
            return refuse(
                format!("{queued_bytes} argument bytes are outstanding"),
                "--max-queued-bytes",
                self.max_queued_bytes.to_string(),
            );
        }
        let (mine, mine_bytes) = (usage.requests + p_mine, usage.bytes + p_mine_bytes);
        if mine + n > self.max_queue_per_client {
            return refuse(
                format!("client '{client}' has {mine} requests outstanding"),
                "--max-queue-per-client",
                self.max_queue_per_client.to_string(),
            );
        }
        if mine_bytes > 0 && mine_bytes + bytes > self.max_queued_bytes_per_client {
            return refuse(
                format!("client '{client}' has {mine_bytes} argument bytes outstanding"),
                "--max-queued-bytes-per-client",
                self.max_queued_bytes_per_client.to_string(),
            );
        }
        Ok(new
            .into_iter()
            .map(|b| {
                if b == usize::MAX {
                    return AdmitPermit::none();
                }
                pending.add(client, 1, b as u64);
                AdmitPermit {
                    slot: Some((client.clone(), b as u64, admission.pending.clone())),
                }
            })
            .collect())
    }
}

/// One call to admit.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub key: &'a RequestKey,
    /// Its argument bytes.
    pub bytes: usize,
    /// A child call of a running request (exempt).
    pub child: bool,
    pub no_cache: bool,
}

/// Calls admitted and not applied yet, in total and per client: counted with the queue, so
/// that calls arriving together (a batch, a stream) cannot all pass one look at it.
#[derive(Debug, Default)]
struct Pending {
    count: usize,
    bytes: u64,
    by: HashMap<Arc<str>, (usize, u64)>,
}

impl Pending {
    fn add(&mut self, client: &Arc<str>, n: usize, bytes: u64) {
        self.count += n;
        self.bytes += bytes;
        let e = self.by.entry(client.clone()).or_default();
        e.0 += n;
        e.1 += bytes;
    }

    fn sub(&mut self, client: &Arc<str>, n: usize, bytes: u64) {
        self.count -= n;
        self.bytes -= bytes;
        if let Some(e) = self.by.get_mut(client) {
            e.0 -= n;
            e.1 -= bytes;
            if e.0 == 0 {
                self.by.remove(client);
            }
        }
    }
}

/// The admission state of an agent: the calls it admitted whose submissions are not applied
/// yet (meaningful on the leader, where calls are admitted).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pending: Arc<Mutex<Pending>>,
}

impl Admission {
    /// Calls admitted and not applied yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("admission").count
    }
}

/// One admitted call: counted as pending until dropped (once its submission is applied, or
/// refused).
#[derive(Debug)]
pub struct AdmitPermit {
    slot: Option<(Arc<str>, u64, Arc<Mutex<Pending>>)>,
}

impl AdmitPermit {
    /// A permit for a call that adds nothing to the queue.
    pub fn none() -> Self {
        AdmitPermit { slot: None }
    }
}

impl Drop for AdmitPermit {
    fn drop(&mut self) {
        if let Some((client, bytes, pending)) = self.slot.take() {
            pending.lock().expect("admission").sub(&client, 1, bytes);
        }
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
    }

    #[test]
    fn admission_counts_pending_calls_per_cluster_and_client() {
        let l = Limits {
            max_queue: 4,
            max_queue_per_client: 2,
            max_queued_bytes: 100,
            max_queued_bytes_per_client: 100,
            ..Limits::default()
        };
        let adm = Admission::default();
        let state = ClusterState::new();
        let keys: Vec<RequestKey> = (0..6u8).map(|n| RequestKey::of("f", &[n])).collect();
        let call = |k| Candidate {
            key: k,
            bytes: 10,
            child: false,
            no_cache: false,
        };
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let first = l.admit(&adm, &state, &a, &[call(&keys[0]), call(&keys[1])]);
        assert_eq!(first.as_ref().map(Vec::len).ok(), Some(2));
        // Nothing is applied yet, and still the client's bound holds.
        let e = l.admit(&adm, &state, &a, &[call(&keys[2])]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().starts_with("MZ-QUEUE-FULL"), "{}", e.message());
        assert!(e.message().contains("client 'a'"), "{}", e.message());
        assert!(
            e.message().contains("--max-queue-per-client 2"),
            "{}",
            e.message()
        );
        let details = tonic_types::StatusExt::get_error_details(&e);
        assert!(details.retry_info().is_some(), "a retry hint");
        // A whole batch over the cluster's bound is refused whole.
        let e = l
            .admit(
                &adm,
                &state,
                &b,
                &[call(&keys[3]), call(&keys[4]), call(&keys[5])],
            )
            .unwrap_err();
        assert!(e.message().contains("--max-queue 4"), "{}", e.message());
        let child = Candidate {
            child: true,
            ..call(&keys[5])
        };
        assert!(
            l.admit(&adm, &state, &a, &[child]).is_ok(),
            "children are exempt"
        );
        assert_eq!(adm.pending(), 2);
        drop(first);
        assert_eq!(adm.pending(), 0);
        assert!(l.admit(&adm, &state, &a, &[call(&keys[2])]).is_ok());
        let bytes = Limits {
            max_queued_bytes_per_client: 15,
            ..l
        };
        let _one = bytes.admit(&adm, &state, &b, &[call(&keys[3])]).unwrap();
        let e = bytes
            .admit(&adm, &state, &b, &[call(&keys[4])])
            .unwrap_err();
        assert!(e.message().contains("argument bytes"), "{}", e.message());
    }
}
