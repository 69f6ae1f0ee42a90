//! Fault injection for tests: a per-agent table of peers this agent is cut off from, and a
//! simulated divergence of its replicated state.
//!
//! Enabled only by the hidden `--fault-file PATH` flag; an agent started without it has no
//! table and pays nothing. The agent re-reads the file every [`POLL`] and replaces the table
//! with what it lists, separated by commas or whitespace (a missing or empty file sets no
//! fault):
//! - node ids: peers this agent is cut off from;
//! - `corrupt-digests-from=INDEX`: the state checkpoints this agent reports and compares at
//!   INDEX and above have their digest altered, as if its state had diverged there (see
//!   [`crate::integrity`]). The state itself is left alone.
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
use mozen_model::NodeId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the fault file is re-read.
pub const POLL: Duration = Duration::from_millis(50);

/// The word in the fault file that makes the Raft core panic.
pub const PANIC_RAFT_CORE: &str = "panic-raft-core";

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

/// What a fault file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    pub blocked: BTreeSet<NodeId>,
    pub corrupt_digests_from: Option<u64>,
}

/// The fault-file word that simulates a diverged state (see the module docs).
pub const CORRUPT_DIGESTS_FROM: &str = "corrupt-digests-from=";

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

/// Parses the fault file (see the module docs).
pub fn parse(text: &str) -> Result<FaultSpec, String> {
    let mut spec = FaultSpec::default();
    for t in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty() && *t != PANIC_RAFT_CORE)
    {
        if let Some(index) = t.strip_prefix(CORRUPT_DIGESTS_FROM) {
            let index = index
                .parse::<u64>()
                .map_err(|_| format!("'{t}': expected {CORRUPT_DIGESTS_FROM}INDEX"))?;
            spec.corrupt_digests_from = Some(index);
        } else {
            let id = t
                .parse::<NodeId>()
                .map_err(|_| format!("'{t}' is not a node id"))?;
            spec.blocked.insert(id);
        }
    }
    Ok(spec)
}

/// Parses a fault file that lists node ids only.
pub fn parse_ids(text: &str) -> Result<BTreeSet<NodeId>, String> {
    let spec = parse(text)?;
    match spec.corrupt_digests_from {
        None => Ok(spec.blocked),
        Some(_) => Err(format!("{CORRUPT_DIGESTS_FROM} is not a node id")),
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

/// Writes the fault files of a cluster so that every link between the agents in `side` and
/// the others is cut in both directions (an empty `side` heals everything). `files` pairs each
/// agent's id with its fault file; each file is replaced in one step, so an agent never reads
/// half a file.
pub fn write_partition(
    files: &[(NodeId, &std::path::Path)],
    side: &[NodeId],
) -> std::io::Result<()> {
    for (id, path) in files {
        let blocked: Vec<String> = files
            .iter()
            .filter(|(other, _)| side.contains(id) != side.contains(other))
            .map(|(other, _)| other.to_string())
            .collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, blocked.join(","))?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_rejects_garbage() {
        assert_eq!(parse_ids("2, 3\n5").unwrap(), BTreeSet::from([2, 3, 5]));
        assert_eq!(
            parse_ids("2 panic-raft-core").unwrap(),
            BTreeSet::from([2]),
            "the fault word is no id"
        );
        assert!(parse_ids("").unwrap().is_empty());
        assert_eq!(parse_ids("2,x").unwrap_err(), "'x' is not a node id");
    }

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
