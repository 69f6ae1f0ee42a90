//! The agent's errors: flags that make no sense ([`ConfigError`]), and why the agent could
//! not start or run ([`AgentError`]) with the exit code each gives.

use crate::supervise::Death;
use mozen_model::{Code, NodeId};

/// A flag that does not make sense, with the text to show the operator.
pub use mozen_model::flags::ConfigError;

/// Exit code of a runtime error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a damaged data dir (see [`crate::repair`]).
pub const EXIT_DAMAGED: u8 = 3;

/// Exit code of an agent whose Raft core or essential task died (see [`crate::supervise`]).
pub const EXIT_DIED: u8 = 4;

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] mozen_store::StoreError),
    #[error(
        "{}: data dir {dir} belongs to node {stored}, but --id is {given}; use --id {stored} or another --data-dir",
        Code::Identity
    )]
    Identity {
        dir: String,
        stored: NodeId,
        given: NodeId,
    },
    #[error("{code}: {0}", code = Code::Raft)]
    Raft(String),
    #[error("{code}: {0}", code = Code::Server)]
    Server(String),
    #[error("{code}: {0}", code = Code::Repair)]
    Repair(String),
    #[error(
        "{}: data dir {dir} is empty, but node {id} is a registered voter of the cluster (peer {peer} says so): its log and vote were lost, and it must not vote with an empty log; repair it with `mozen-agent repair` and the same flags (it leaves the voters, rejoins from the peers and is promoted back once caught up)",
        Code::Damaged
    )]
    LostLog {
        dir: String,
        id: NodeId,
        peer: String,
    },
    /// The data dir holds the marker a quarantined agent writes (see [`crate::integrity`]).
    #[error(
        "{}: data dir {dir} is quarantined ({reason}); this agent does not start on it: repair it with `mozen-agent repair`, then start the agent again",
        Code::Quarantined
    )]
    Quarantined { dir: String, reason: String },
    /// The Raft core or an essential task died while the agent ran (see [`crate::supervise`]).
    #[error("{death} [node {id}, data dir {dir}]")]
    Died {
        death: Death,
        id: NodeId,
        dir: String,
    },
}

impl AgentError {
    /// The process exit code for this error (the table is in [`crate::builder`]): 3 when the
    /// data dir is damaged (the member must be repaired, see [`crate::repair`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            // A read that failed its checksum stopped the core: the data dir is damaged.
            AgentError::Died {
                death: Death::RaftCore { cause },
                ..
            } if cause.contains(Code::Damaged.as_str()) => EXIT_DAMAGED,
            AgentError::Died {
                death: Death::Damaged { .. },
                ..
            } => EXIT_DAMAGED,
            AgentError::Died { .. } => EXIT_DIED,
            AgentError::Store(e) if e.is_damage() => EXIT_DAMAGED,
            AgentError::LostLog { .. } | AgentError::Quarantined { .. } => EXIT_DAMAGED,
            _ => EXIT_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_found_at_start_or_while_running_exits_3_and_other_deaths_4() {
        let died = |death| AgentError::Died {
            death,
            id: 1,
            dir: "d".into(),
        };
        let corrupt = mozen_store::StoreError::Corrupt {
            tree: "raft_log",
            key: "index 3".into(),
            reason: "checksum mismatch".into(),
        };
        let damaged_read = died(Death::Damaged {
            detail: corrupt.to_string(),
        });
        let core_on_damage = died(Death::RaftCore {
            cause: format!("storage error: {corrupt}"),
        });
        let core_panic = died(Death::RaftCore {
            cause: "it panicked".into(),
        });
        let task = died(Death::Task {
            name: "gRPC server",
            how: "ended".into(),
        });
        assert_eq!(AgentError::Store(corrupt).exit_code(), 3);
        assert_eq!(damaged_read.exit_code(), 3);
        assert_eq!(core_on_damage.exit_code(), 3);
        assert_eq!(core_panic.exit_code(), 4);
        assert_eq!(task.exit_code(), 4);
        assert_eq!(AgentError::Repair("x".into()).exit_code(), 1);
    }
}
