//! The fault file: what a test or `mozen chaos` writes to cut links between local agents, and
//! what an agent started with the hidden `--fault-file PATH` flag reads (the agent's fault
//! control re-reads it and applies it; see `mozen_agent::faults`).
//!
//! The file lists, separated by commas or whitespace (a missing or empty file sets no fault):
//! - node ids: peers this agent is cut off from;
//! - `corrupt-digests-from=INDEX` ([`CORRUPT_DIGESTS_FROM`]): the state checkpoints the agent
//!   reports and compares at INDEX and above have their digest altered, as if its state had
//!   diverged there. The state itself is left alone;
//! - [`PANIC_RAFT_CORE`]: the agent's Raft core panics once.
//!
//! A full partition is set on both sides: each agent lists the peers across the cut
//! ([`write_partition`]).

use mozen_model::NodeId;
use std::collections::BTreeSet;

/// The word in the fault file that makes the Raft core panic.
pub const PANIC_RAFT_CORE: &str = "panic-raft-core";

/// The fault-file word that simulates a diverged state (see the module docs).
pub const CORRUPT_DIGESTS_FROM: &str = "corrupt-digests-from=";

/// What a fault file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    pub blocked: BTreeSet<NodeId>,
    pub corrupt_digests_from: Option<u64>,
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
}
