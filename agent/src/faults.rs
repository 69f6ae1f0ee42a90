//! Fault injection for tests: a per-agent table of peers this agent is cut off from, and a
//! simulated divergence of its replicated state.
//!
//! Enabled only by the hidden `--fault-file PATH` flag; an agent started without it has no
//! table and pays nothing. The agent re-reads the file every [`POLL`] and replaces the table
//! with what it lists; the file's format, and [`write_partition`] that tests and `mozen chaos`
//! write it with, are in [`mozen_fleet::faults`] (re-exported here). The digest fault
//! ([`CORRUPT_DIGESTS_FROM`]) alters the checkpoints this agent reports (see
//! [`crate::integrity`]).
//!
//! A blocked peer is cut in both directions:
//! - outgoing Raft RPCs to it fail at once as `Unreachable` (see `network::PeerClient`);
//! - incoming requests on either gRPC service that carry its id in the `mozen-node-id`
//!   header (every agent sends it) are refused with `UNAVAILABLE` (see `security::Guard`).
//!
//! A full partition is set on both sides: each agent lists the peers across the cut. Clients
//! that are not agents (the CLI, tests) are never blocked, so a test can still observe both
//! sides. Why this and not network namespaces: docs/reliability.md.
//!
//! Two faults test how the agent dies (see `supervise`): the word [`PANIC_RAFT_CORE`] in the
//! file makes the Raft core panic once; and the function [`PANIC_FUNCTION`], registered only
//! on an agent with a fault file, panics with the message it is given.

use crate::functions::Functions;
pub use mozen_fleet::faults::{
    CORRUPT_DIGESTS_FROM, FaultSpec, PANIC_RAFT_CORE, parse, parse_ids, write_partition,
};
use mozen_model::NodeId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the fault file is re-read.
pub const POLL: Duration = Duration::from_millis(50);

/// The test-only function that panics with its argument (a string).
pub const PANIC_FUNCTION: &str = "fault.panic";

/// The peers this agent is cut off from, and the faults asked for.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<BTreeSet<NodeId>>,
    /// Fires when the file asks for a Raft core panic.
    panic_raft_core: CancellationToken,
    /// Checkpoints at this index and above report an altered digest.
    corrupt_digests_from: RwLock<Option<u64>>,
}

impl Faults {
    pub fn blocks(&self, peer: NodeId) -> bool {
        self.blocked.read().expect("faults").contains(&peer)
    }

    /// Replaces the table of blocked peers; returns whether it changed.
    pub fn set(&self, peers: BTreeSet<NodeId>) -> bool {
        let mut b = self.blocked.write().expect("faults");
        let changed = *b != peers;
        *b = peers;
        changed
    }

    /// Replaces every fault; returns whether anything changed.
    pub fn set_all(&self, spec: FaultSpec) -> bool {
        let mut from = self.corrupt_digests_from.write().expect("faults");
        let changed = *from != spec.corrupt_digests_from;
        *from = spec.corrupt_digests_from;
        drop(from);
        self.set(spec.blocked) || changed
    }

    /// The index from which this agent's checkpoint digests are altered, if it is set.
    pub fn corrupt_digests_from(&self) -> Option<u64> {
        *self.corrupt_digests_from.read().expect("faults")
    }
}

/// Keeps `faults` equal to the ids listed in `path` until `stop` fires.
pub async fn watch_file(faults: Arc<Faults>, path: PathBuf, stop: CancellationToken) {
    let mut last_error = String::new();
    loop {
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(t) = &text
            && t.split(|c: char| c == ',' || c.is_whitespace())
                .any(|w| w == PANIC_RAFT_CORE)
            && !faults.panic_raft_core.is_cancelled()
        {
            warn!("fault control: the Raft core is made to panic");
            faults.panic_raft_core.cancel();
        }
        match text.and_then(|t| parse(&t)) {
            Ok(spec) => {
                let shown = format!("{spec:?}");
                if faults.set_all(spec) {
                    info!(faults = %shown, "fault control: table changed");
                }
                last_error.clear();
            }
            Err(e) if e != last_error => {
                warn!(path = %path.display(), "fault control: {e}; table unchanged");
                last_error = e;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Makes the Raft core panic once the fault file asks for it.
pub async fn panic_raft_core_on_request(
    faults: Arc<Faults>,
    raft: mozen_store::Raft,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = faults.panic_raft_core.cancelled() => {}
        _ = stop.cancelled() => return,
    }
    raft.external_request(|_| panic!("fault injection: the Raft core panics ({PANIC_RAFT_CORE})"));
}

/// Registers the test-only functions of an agent with a fault file.
pub fn register_functions(functions: &mut Functions) {
    functions.register(
        PANIC_FUNCTION,
        "a message (string); empty returns null",
        |_ctx, message: String| async move {
            if message.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            panic!("{message}")
        },
    );
    functions.register(
        SPIN_INLINE_FUNCTION,
        "milliseconds (integer)",
        |_ctx, ms: u64| async move {
            // The naive way: computes without ever awaiting, holding its thread throughout.
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut x: u64 = 1;
            while std::time::Instant::now() < until {
                for _ in 0..10_000 {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            }
            Ok(x % 2)
        },
    );
}

/// The test-only function that computes for its argument's milliseconds inside an `async fn`
/// without awaiting: what a naive CPU-bound user function does.
pub const SPIN_INLINE_FUNCTION: &str = "fault.spin_inline";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_digest_fault() {
        let spec = parse("corrupt-digests-from=64, 2").unwrap();
        assert_eq!(spec.corrupt_digests_from, Some(64));
        assert_eq!(spec.blocked, BTreeSet::from([2]));
        assert!(
            parse("corrupt-digests-from=x")
                .unwrap_err()
                .contains("INDEX")
        );
        let f = Faults::default();
        assert!(f.set_all(spec.clone()));
        assert!(!f.set_all(spec));
        assert_eq!(f.corrupt_digests_from(), Some(64));
        assert!(f.set_all(FaultSpec::default()));
        assert_eq!(f.corrupt_digests_from(), None);
    }

    #[test]
    fn table_reports_changes() {
        let f = Faults::default();
        assert!(f.set(BTreeSet::from([2])));
        assert!(!f.set(BTreeSet::from([2])));
        assert!(f.blocks(2) && !f.blocks(3));
    }
}
