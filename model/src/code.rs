//! The stable error codes of the cluster: one [`Code`] per `MZ-...` string an operator or a
//! client may see, with what it means and what to do about it.
//!
//! The strings are part of the wire protocol: messages start with `MZ-CODE: ` and clients
//! classify failures by that prefix, so a code's string never changes and a code is never
//! removed (docs/protocol.md lists them). New codes are added at the end, and get a new value
//! in the `ErrorCode` enum of the .proto.

use std::fmt;
use std::str::FromStr;

/// Defines [`Code`] and its tables from one list, so the string, meaning and remedy of a code
/// cannot drift apart.
macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident => $s:literal, $meaning:literal, $remedy:literal; )*) => {
        /// A stable error code. Its [`as_str`](Code::as_str) form prefixes every message that
        /// carries it: `MZ-NOT-LEADER: node 2 is not the leader`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in declaration order (the order of the proto `ErrorCode` values).
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The stable string, e.g. `"MZ-NOT-LEADER"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $s, )*
                }
            }

            /// What the code says happened, in one sentence.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $( Code::$variant => $meaning, )*
                }
            }

            /// What the operator or caller does about it, in one sentence.
            pub const fn remedy(self) -> &'static str {
                match self {
                    $( Code::$variant => $remedy, )*
                }
            }

            /// The code whose string is exactly `s`, if any.
            pub fn parse(s: &str) -> Option<Code> {
                match s {
                    $( $s => Some(Code::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    // --- calls and their outcomes ---
    FunctionFailed => "MZ-FUNCTION-FAILED",
        "The function returned an error or panicked while running the request.",
        "Read the message for the function's own error; the call is retried only as its retry policy says.";
    UnknownFunction => "MZ-UNKNOWN-FUNCTION",
        "No agent of the cluster implements the function called.",
        "Check the function name, or start an agent that registers it.";
    BadArguments => "MZ-BAD-ARGUMENTS",
        "The arguments, a key or a flag of the call are malformed.",
        "Fix the value the message quotes and call again.";
    ChildFailed => "MZ-CHILD-FAILED",
        "A call made by the function on the cluster failed, and the failure propagated.",
        "Follow the error chain to the origin and fix that failure.";
    AttemptsExhausted => "MZ-ATTEMPTS-EXHAUSTED",
        "The request lost its node as many times as its attempts allow.",
        "Check why nodes went down while it ran, or call again with more --max-attempts.";
    Cancelled => "MZ-CANCELLED",
        "The request was cancelled before it finished.",
        "Call again if the result is still needed.";
    ExecRefused => "MZ-EXEC-REFUSED",
        "The built-in exec function is disabled on the node that was to run it.",
        "Start the agent with --allow-exec, or do not call exec.";
    Timeout => "MZ-TIMEOUT",
        "A call, a program or an answer did not finish within its time limit.",
        "Wait longer (`mozen get KEY --wait` re-attaches to a call), or raise the timeout.";
    ParentGone => "MZ-PARENT-GONE",
        "A child call was refused because its calling request is no longer running.",
        "Nothing: the worker retries briefly, and the parent's new attempt calls again.";
    // --- state-machine rejections ---
    UnknownNode => "MZ-UNKNOWN-NODE",
        "The node named is not in the cluster's node table.",
        "Check the node id with `mozen nodes`, or let the agent join first.";
    UnknownRequest => "MZ-UNKNOWN-REQUEST",
        "No request has this key: it was never submitted, or it was forgotten.",
        "Check the key, or submit the call again.";
    NotQueued => "MZ-NOT-QUEUED",
        "The request cannot be assigned because it is not queued.",
        "Nothing: another assignment or its completion got there first.";
    NodeNotActive => "MZ-NODE-NOT-ACTIVE",
        "Work was offered to a node that is draining, drained or down.",
        "Undrain the node, or let the scheduler place the work elsewhere.";
    NoFreeSlot => "MZ-NO-FREE-SLOT",
        "The node has no free slot for the assignment.",
        "Nothing: the scheduler places the request on the next free slot.";
    StaleAttempt => "MZ-STALE-ATTEMPT",
        "An assignment names another attempt than the one the request expects next.",
        "Nothing: the newer attempt's outcome counts.";
    Backoff => "MZ-BACKOFF",
        "The request is waiting out its retry backoff.",
        "Nothing: it is assigned again when the backoff ends.";
    BadTransition => "MZ-BAD-TRANSITION",
        "A node operation does not apply to the node's current state or role.",
        "Check the node's state with `mozen nodes` and pick an operation that applies.";
    // --- cluster, leadership and membership ---
    NotLeader => "MZ-NOT-LEADER",
        "The agent asked is not the Raft leader; the message and the mozen-leader-addr header name the leader when known.",
        "Send the call to the leader (clients follow the redirect by themselves).";
    Raft => "MZ-RAFT",
        "Raft could not commit or carry out the operation.",
        "Retry once the cluster has a leader; `mozen status` shows the Raft state.";
    ShuttingDown => "MZ-SHUTTING-DOWN",
        "The agent is stopping and accepts no more writes.",
        "Send the call to another agent.";
    NotReady => "MZ-NOT-READY",
        "A new leader has not yet applied what earlier leaders committed.",
        "Retry in a moment.";
    Quorum => "MZ-QUORUM",
        "Removing or demoting this voter would leave the cluster without a majority.",
        "Promote or start another voter first.";
    NodeExists => "MZ-NODE-EXISTS",
        "A node with this id is already in the node table.",
        "Pick another id, or remove the old node first.";
    BadOp => "MZ-BAD-OP",
        "The node operation is not one the agent knows.",
        "Use drain, undrain, promote, demote or remove.";
    Identity => "MZ-IDENTITY",
        "The data dir belongs to another node id than the one given.",
        "Start with the node id stored in the data dir, or use another --data-dir.";
    Server => "MZ-SERVER",
        "The agent's gRPC server could not start or failed.",
        "Check the listen address and port (in use? allowed?) and start again.";
    Unreachable => "MZ-UNREACHABLE",
        "No agent answered at the addresses tried.",
        "Check that an agent runs there and that the address and port are right.";
    Partitioned => "MZ-PARTITIONED",
        "The fault control cuts this node off from the peer (a test partition).",
        "Heal the partition with the fault control.";
    Unauthenticated => "MZ-UNAUTHENTICATED",
        "The call carried no token, or not this cluster's token.",
        "Pass the cluster's token with --token-file (MOZEN_TOKEN_FILE for the mozen CLI).";
    Internal => "MZ-INTERNAL",
        "A call's task ended without an answer (a bug).",
        "Report it with the agent's log; the call may be made again.";
    // --- admission limits ---
    TooLarge => "MZ-TOO-LARGE",
        "Arguments, a blob or a name exceed the cluster's size limit.",
        "Send less data per call (ship large data as blobs or files), or raise the limit on all agents.";
    ResultTooLarge => "MZ-RESULT-TOO-LARGE",
        "The function's result exceeds the cluster's result size limit.",
        "Return less data (write large results elsewhere and return a reference), or raise the limit.";
    QueueFull => "MZ-QUEUE-FULL",
        "The cluster already holds as many queued requests as it allows.",
        "Retry after the hint in the message, or add capacity.";
    TooManyStreams => "MZ-TOO-MANY-STREAMS",
        "The connection already has as many open calls as allowed.",
        "Wait for open calls to finish, or spread calls over more connections.";
    // --- stored state and integrity ---
    Damaged => "MZ-DAMAGED",
        "The agent's data dir is damaged, or lost its log and vote while it is a registered voter.",
        "Repair it with `mozen-agent repair` and the same flags.";
    Quarantined => "MZ-QUARANTINED",
        "The data dir is quarantined after a corruption check, and the agent does not start on it.",
        "Repair it with `mozen-agent repair`, then start the agent again.";
    Corrupt => "MZ-CORRUPT",
        "This voter's replicated state differs from the one a majority holds; it is quarantined and serves no reads.",
        "Ask another agent, and repair the quarantined data dir with `mozen-agent repair`.";
    StateConflict => "MZ-STATE-CONFLICT",
        "Voters' replicated states differ and no state has a majority.",
        "Check the named members' data dirs before repairing any of them.";
    RaftCore => "MZ-RAFT-CORE",
        "The agent's Raft core stopped, so this member no longer follows the cluster.",
        "Read the cause in the log, fix it, and restart the agent (exit code 4).";
    TaskDied => "MZ-TASK-DIED",
        "A task the agent cannot run without ended or panicked.",
        "Read the cause in the log and restart the agent (exit code 4).";
    Repair => "MZ-REPAIR",
        "`mozen-agent repair` could not repair the data dir.",
        "Read the cause, make the peers reachable, and run the repair again.";
    // --- batch jobs ---
    BadJob => "MZ-BAD-JOB",
        "The batch job file is invalid.",
        "Fix the job file at the place the message names.";
    BadInput => "MZ-BAD-INPUT",
        "An input file of the batch job cannot be used.",
        "Fix or replace the input file the message names.";
    JobFailed => "MZ-JOB-FAILED",
        "A slice or the reduce of the batch job failed under its failure policy.",
        "Follow the error chain to the failing slice, fix it and run the job again (finished slices are memoized).";
    BlobMissing => "MZ-BLOB-MISSING",
        "A blob the job refers to is not stored in the cluster.",
        "Run the job again so it ships its data.";
    StaleSlice => "MZ-STALE-SLICE",
        "An input slice changed since the job was planned.",
        "Run the job again to plan it on the current inputs.";
    // --- operator tools ---
    Usage => "MZ-USAGE",
        "A tool was called with flags that do not fit together or miss a value.",
        "Check the command's --help and call it again.";
    BadHosts => "MZ-BAD-HOSTS",
        "The hosts file is invalid.",
        "Fix the hosts file at the line the message names.";
    Launch => "MZ-LAUNCH",
        "An agent could not be started or stopped on a host.",
        "Check the host's launcher and the command output the message quotes.";
    UpTimeout => "MZ-UP-TIMEOUT",
        "The cluster did not reach the wanted size in time.",
        "Check the new agents' logs and hosts, then run the command again.";
    ChaosSetup => "MZ-CHAOS-SETUP",
        "A chaos run could not set up its cluster.",
        "Read the cause and check the binaries and ports the run needs.";
    ChaosNotReady => "MZ-CHAOS-NOT-READY",
        "The chaos run's cluster did not become ready.",
        "Read the agents' logs in the run directory.";
    ChaosViolations => "MZ-CHAOS-VIOLATIONS",
        "The chaos run found histories that break the cluster's guarantees.",
        "Read the report and reproduce with the run's seed.";
    BadResult => "MZ-BAD-RESULT",
        "A result the chaos workload read back is not valid JSON.",
        "Treat it as a violation and reproduce with the run's seed.";
    // --- roles ---
    Forbidden => "MZ-FORBIDDEN",
        "The caller's credential lacks the role the RPC needs, or speaks for a node or an attempt it does not hold.",
        "Use a credential with that role (docs/operations.md, \"Roles\"), or the node's own credential.";
}

impl Code {
    /// The message `"<code>: <message>"`, the form clients parse.
    pub fn message(self, message: impl fmt::Display) -> String {
        format!("{}: {message}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the cluster's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a Mozen error code")]
pub struct UnknownCode(pub String);

impl FromStr for Code {
    type Err = UnknownCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Code::parse(s).ok_or_else(|| UnknownCode(s.to_string()))
    }
}

impl PartialEq<Code> for str {
    fn eq(&self, code: &Code) -> bool {
        self == code.as_str()
    }
}

impl PartialEq<Code> for &str {
    fn eq(&self, code: &Code) -> bool {
        *self == code.as_str()
    }
}

impl PartialEq<Code> for String {
    fn eq(&self, code: &Code) -> bool {
        self == code.as_str()
    }
}

/// The code a message starts with (`"MZ-X: ..."` or just `"MZ-X"`), if it is one of ours.
pub fn code_of(message: &str) -> Option<Code> {
    let head = message.split_once(':').map_or(message, |(c, _)| c);
    Code::parse(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_round_trips_and_strings_are_unique() {
        let mut seen = HashSet::new();
        for &c in Code::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.starts_with("MZ-") && !s.contains(':') && !s.contains(' '),
                "{s}"
            );
            assert_eq!(Code::parse(s), Some(c));
            assert_eq!(s.parse::<Code>(), Ok(c));
            assert_eq!(c.to_string(), s);
            assert_eq!(code_of(&c.message("x: y")), Some(c));
            assert!(
                c.meaning().ends_with('.') && c.remedy().ends_with('.'),
                "{s}"
            );
        }
        assert!(Code::ALL.len() >= 50);
    }

    /// docs/protocol.md lists every code with the same meaning and remedy.
    #[test]
    fn the_protocol_doc_lists_every_code() {
        let doc = include_str!("../../docs/protocol.md");
        for &c in Code::ALL {
            let row = format!("| `{}` | {} | {} |", c.as_str(), c.meaning(), c.remedy());
            assert!(doc.contains(&row), "docs/protocol.md lacks the row\n{row}");
        }
    }

    #[test]
    fn unknown_strings_are_not_codes() {
        assert_eq!(Code::parse("MZ-RPC-INTERNAL"), None);
        assert_eq!(Code::parse("mz-not-leader"), None);
        assert!("MZ-NOPE".parse::<Code>().is_err());
        assert_eq!(code_of("no code here"), None);
    }

    #[test]
    fn messages_keep_the_prefix_form() {
        assert_eq!(
            Code::NotLeader.message("node 2 is not the leader"),
            "MZ-NOT-LEADER: node 2 is not the leader"
        );
        assert_eq!(format!("{}: x", Code::Quorum), "MZ-QUORUM: x");
        assert!("MZ-QUORUM" == Code::Quorum);
    }
}
