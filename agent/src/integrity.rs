//! Corruption checks across members: voters compare their state checkpoints, and a voter
//! whose state differs from a majority's quarantines itself.
//!
//! Every state machine takes a checkpoint (index, digest of the whole state) right after
//! applying each multiple of `--checkpoint-every` (see [`mozen_store::checkpoint`]). [`crate::checks::watch`]
//! runs on every agent: once its state is current, and then every
//! `--corruption-check-interval`, a voter asks the other voters for their checkpoints
//! (`StateDigest` with `checkpoints_only`) and compares them with its own at the indexes they
//! share ([`mozen_store::checkpoint::compare`]); the checks themselves are in
//! [`crate::checks`], this module holds what they found. What it finds is kept here until a later
//! comparison shows the voter agreeing again, or the voter leaves the voter set:
//! - a voter outvoted (a majority of the voters holds another digest) is corrupt. If it is
//!   this agent, it quarantines itself ([`crate::checks::quarantine`]): it marks itself quarantined, writes
//!   `<data-dir>/quarantine` (so that a restart refuses to start), stops taking work and
//!   shuts its Raft member down (no votes, no appends), and keeps its gRPC server for
//!   `Status`, `Events` and `StateDigest`; reads are refused with `MZ-CORRUPT`.
//! - voters that differ with no digest held by a majority are each named, and nobody is
//!   quarantined: nothing says which of them is right.
//!
//! Findings show in `Status` (`mozen status` fails naming the voter), in the metrics, and as
//! an event the leader records once (kinds [`KIND_CORRUPT`] and [`KIND_CONFLICT`]). Design
//! notes: docs/architecture.md, "Corruption checks".

use mozen_model::{Code, NodeId};
use mozen_store::checkpoint::{Comparison, Mismatch};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Name of the marker file in the data dir of a quarantined agent; it holds why.
pub const QUARANTINE_FILE: &str = "quarantine";
/// Event kind of a voter outvoted by the majority.
pub const KIND_CORRUPT: &str = "corruption";
/// Event kind of voters that differ with no majority.
pub const KIND_CONFLICT: &str = "state-conflict";
/// How long a voter waits for another's checkpoints.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the leader retries recording an event for a finding not recorded yet.
pub(crate) const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

/// Why this agent quarantined itself.
#[derive(Clone, Debug)]
pub struct Quarantine {
    pub mismatch: Mismatch,
    pub reason: String,
}

#[derive(Clone, Debug)]
struct Finding {
    mismatch: Mismatch,
    /// An event about it is in the replicated state.
    announced: bool,
}

/// What the corruption checks found, shared by the check loop, the service and the metrics.
#[derive(Debug, Default)]
pub struct Integrity {
    /// Set once, before the Raft member is shut down, so that anyone watching Raft stop can
    /// tell this stop was deliberate.
    pub(crate) quarantine: OnceLock<Quarantine>,
    /// By voter: its standing mismatch (this agent included).
    findings: Mutex<BTreeMap<NodeId, Finding>>,
    /// Comparisons run.
    pub(crate) checks: AtomicU64,
    /// Some comparison had a common index to compare.
    pub(crate) compared_once: AtomicBool,
}

impl Integrity {
    /// Whether this agent quarantined itself (its state was outvoted).
    pub fn is_quarantined(&self) -> bool {
        self.quarantine.get().is_some()
    }

    pub fn quarantine(&self) -> Option<&Quarantine> {
        self.quarantine.get()
    }

    /// The standing mismatches, by node id.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        self.lock().values().map(|f| f.mismatch.clone()).collect()
    }

    /// Comparisons run since start.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The refusal of a read on a quarantined agent: `MZ-CORRUPT`, why, and what to do.
    pub fn refusal(&self, me: NodeId) -> Option<String> {
        self.quarantine.get().map(|q| {
            format!(
                "{}: node {me} is quarantined and serves no reads: {}; ask another \
                 member, and repair this one with `mozen-agent repair`",
                Code::Corrupt,
                q.reason
            )
        })
    }

    /// Takes in a comparison among `voters`: drops what concerns non-voters, clears findings
    /// a later agreement contradicts, adds new mismatches. Returns the mismatches that are new
    /// (or that turned from a conflict into an outvote).
    pub(crate) fn record(&self, voters: &BTreeSet<NodeId>, cmp: &Comparison) -> Vec<Mismatch> {
        let agreed_since = |m: &Mismatch| cmp.agreed.get(&m.node).is_some_and(|a| *a >= m.index);
        let mut findings = self.lock();
        findings.retain(|id, f| voters.contains(id) && !agreed_since(&f.mismatch));
        let mut new = Vec::new();
        for m in cmp.mismatches.iter().filter(|m| !agreed_since(m)) {
            let known = findings.get(&m.node);
            if known.is_some_and(|f| f.mismatch.outvoted || !m.outvoted) {
                continue;
            }
            findings.insert(
                m.node,
                Finding {
                    mismatch: m.clone(),
                    announced: false,
                },
            );
            new.push(m.clone());
        }
        new
    }

    pub(crate) fn unannounced(&self) -> Vec<Mismatch> {
        self.lock()
            .values()
            .filter(|f| !f.announced)
            .map(|f| f.mismatch.clone())
            .collect()
    }

    pub(crate) fn mark_announced(&self, m: &Mismatch) {
        if let Some(f) = self.lock().get_mut(&m.node)
            && f.mismatch == *m
        {
            f.announced = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Finding>> {
        self.findings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lists ids as "1, 2 and 3".
pub(crate) fn ids(list: &[NodeId]) -> String {
    match list {
        [] => "none".into(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|i| i.to_string()).collect();
            format!("{} and {last}", init.join(", "))
        }
    }
}

/// What a mismatch means, for people: the text of its event, its log line, and of the
/// failure of `mozen status`.
pub fn describe(m: &Mismatch) -> String {
    if m.outvoted {
        format!(
            "{}: voter {}'s replicated state differs at log index {} from the one \
             voters {} hold, a majority; it is quarantined (no reads, no part in Raft): repair \
             its data dir with `mozen-agent repair` on its machine",
            Code::Corrupt,
            m.node,
            m.index,
            ids(&m.others)
        )
    } else {
        format!(
            "{}: voter {}'s replicated state differs at log index {} from the \
             one voter(s) {} hold, and no state has a majority, so nobody is quarantined: \
             check these members' data dirs (`mozen-agent repair`) and their logs",
            Code::StateConflict,
            m.node,
            m.index,
            ids(&m.others)
        )
    }
}

/// The path of the quarantine marker in `data_dir`.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(QUARANTINE_FILE)
}

/// Why `data_dir` is quarantined, if it is. An unreadable marker counts as one.
pub fn read_marker(data_dir: &Path) -> Option<String> {
    let path = marker_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("the marker {} cannot be read: {e}", path.display())),
    }
}

/// Writes the marker durably: a temporary file, fsynced, renamed, and the directory fsynced.
pub(crate) fn write_marker(data_dir: &Path, reason: &str) -> std::io::Result<()> {
    let path = marker_path(data_dir);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{reason}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm(node: NodeId, index: u64, others: &[NodeId], outvoted: bool) -> Mismatch {
        Mismatch {
            node,
            index,
            others: others.to_vec(),
            outvoted,
        }
    }

    fn voters() -> BTreeSet<NodeId> {
        BTreeSet::from([1, 2, 3])
    }

    #[test]
    fn findings_stay_until_the_voter_agrees_again_or_leaves() {
        let i = Integrity::default();
        let found = Comparison {
            mismatches: vec![mm(3, 16, &[1, 2], true)],
            ..Default::default()
        };
        assert_eq!(i.record(&voters(), &found).len(), 1);
        assert!(i.record(&voters(), &found).is_empty(), "known already");
        // A later comparison that no longer covers index 16 keeps it.
        assert!(i.record(&voters(), &Comparison::default()).is_empty());
        assert_eq!(i.mismatches(), vec![mm(3, 16, &[1, 2], true)]);
        // Voter 3 agrees with the majority from index 24 on (it was repaired).
        let agreed = Comparison {
            agreed: BTreeMap::from([(1, 24), (2, 24), (3, 24)]),
            ..Default::default()
        };
        i.record(&voters(), &agreed);
        assert!(i.mismatches().is_empty());
        // A voter that left the voter set is forgotten.
        i.record(&voters(), &found);
        i.record(&BTreeSet::from([1, 2]), &Comparison::default());
        assert!(i.mismatches().is_empty());
    }

    #[test]
    fn a_conflict_that_becomes_an_outvote_is_new_again() {
        let i = Integrity::default();
        let conflict = Comparison {
            mismatches: vec![mm(1, 8, &[2], false), mm(2, 8, &[1], false)],
            ..Default::default()
        };
        assert_eq!(i.record(&voters(), &conflict).len(), 2);
        i.mark_announced(&mm(2, 8, &[1], false));
        assert_eq!(i.unannounced(), vec![mm(1, 8, &[2], false)]);
        // Voter 3 answers: it holds voter 1's digest at 8, so voter 2 is outvoted.
        let resolved = Comparison {
            mismatches: vec![mm(2, 8, &[1, 3], true)],
            agreed: BTreeMap::from([(1, 8), (3, 8)]),
            compared: 1,
        };
        assert_eq!(
            i.record(&voters(), &resolved),
            vec![mm(2, 8, &[1, 3], true)]
        );
        assert_eq!(i.mismatches(), vec![mm(2, 8, &[1, 3], true)]);
        assert_eq!(i.unannounced(), vec![mm(2, 8, &[1, 3], true)]);
    }

    #[test]
    fn messages_name_the_voter_the_index_and_the_others() {
        let m = describe(&mm(3, 4096, &[1, 2], true));
        assert!(m.starts_with("MZ-CORRUPT: voter 3's"), "{m}");
        assert!(
            m.contains("log index 4096") && m.contains("voters 1 and 2"),
            "{m}"
        );
        assert!(m.contains("mozen-agent repair"), "{m}");
        let c = describe(&mm(1, 8, &[2], false));
        assert!(c.starts_with("MZ-STATE-CONFLICT: voter 1's"), "{c}");
        assert!(c.contains("nobody is quarantined"), "{c}");
        assert_eq!(ids(&[1, 2, 3]), "1, 2 and 3");
    }

    #[test]
    fn the_marker_round_trips_and_its_absence_is_no_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(dir.path()), None);
        write_marker(dir.path(), "state differs at 16").unwrap();
        assert_eq!(
            read_marker(dir.path()).as_deref(),
            Some("state differs at 16")
        );
    }
}
