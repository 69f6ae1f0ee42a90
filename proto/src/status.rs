//! The one error contract of the API: a Mozen [`Code`] as a gRPC status.
//!
//! [`status`] makes every error status the agent sends: the gRPC code of the Mozen code
//! ([`grpc_code`]), the message `MZ-CODE: text` (the form older clients parse), and
//! `google.rpc.Status` details: an `ErrorInfo` whose reason is the code string, in the domain
//! [`ERROR_DOMAIN`], and a `RetryInfo` when calling again makes sense ([`retry_delay`]).
//! [`reason`] reads the code back: the `ErrorInfo` first, else the message prefix.
//! docs/protocol.md, "Error codes", has the table this module implements.

use mozen_model::Code;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of Mozen's errors.
pub const ERROR_DOMAIN: &str = "mozen";
/// The `ErrorInfo.metadata` key of a not-leader refusal naming the leader's address (the
/// same address as the `mozen-leader-addr` header).
pub const LEADER_ADDR_KEY: &str = "leader_addr";

/// The gRPC status code a Mozen code travels with. Codes that only travel inside replies
/// (task errors) or only reach operators of the tools still have one, so the table is whole.
pub const fn grpc_code(code: Code) -> tonic::Code {
    use tonic::Code as G;
    match code {
        Code::FunctionFailed | Code::ChildFailed | Code::JobFailed => G::Unknown,
        Code::UnknownFunction | Code::UnknownNode | Code::UnknownRequest | Code::BlobMissing => {
            G::NotFound
        }
        Code::BadArguments
        | Code::BadOp
        | Code::TooLarge
        | Code::BadJob
        | Code::BadInput
        | Code::Usage
        | Code::BadHosts => G::InvalidArgument,
        Code::AttemptsExhausted => G::Aborted,
        Code::Cancelled => G::Cancelled,
        Code::ExecRefused | Code::Forbidden => G::PermissionDenied,
        Code::Timeout | Code::UpTimeout | Code::ChaosNotReady => G::DeadlineExceeded,
        Code::ParentGone
        | Code::NotQueued
        | Code::NodeNotActive
        | Code::NoFreeSlot
        | Code::StaleAttempt
        | Code::Backoff
        | Code::BadTransition
        | Code::NotLeader
        | Code::NotReady
        | Code::Quorum
        | Code::Identity
        | Code::Quarantined
        | Code::Corrupt
        | Code::Repair
        | Code::StaleSlice
        | Code::ChaosSetup => G::FailedPrecondition,
        Code::NodeExists => G::AlreadyExists,
        Code::Raft
        | Code::ShuttingDown
        | Code::Server
        | Code::Unreachable
        | Code::Partitioned
        | Code::RaftCore
        | Code::TaskDied
        | Code::Launch => G::Unavailable,
        Code::Unauthenticated => G::Unauthenticated,
        Code::Internal | Code::ChaosViolations => G::Internal,
        Code::ResultTooLarge | Code::QueueFull | Code::TooManyStreams => G::ResourceExhausted,
        Code::Damaged | Code::StateConflict | Code::BadResult => G::DataLoss,
    }
}

/// How long a caller waits before calling again, for the codes where the same call may
/// succeed later (sent as `RetryInfo`); `None` where calling again the same way cannot help.
pub const fn retry_delay(code: Code) -> Option<Duration> {
    match code {
        // The next attempt goes to the leader the refusal names: no wait.
        Code::NotLeader => Some(Duration::ZERO),
        Code::NotReady | Code::ShuttingDown => Some(Duration::from_millis(200)),
        Code::Raft | Code::Unreachable => Some(Duration::from_millis(500)),
        Code::QueueFull | Code::TooManyStreams => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// The status for `code`: message `"<code>: <message>"` and the details (module docs).
pub fn status(code: Code, message: impl fmt::Display) -> Status {
    with_details(code, code.message(message), HashMap::new())
}

/// The status for a message that already starts with its code (a typed error's `Display`,
/// a state-machine rejection); a message without one is `MZ-INTERNAL`.
pub fn coded(message: impl fmt::Display) -> Status {
    let message = message.to_string();
    match mozen_model::code_of(&message) {
        Some(code) => with_details(code, message, HashMap::new()),
        None => status(Code::Internal, message),
    }
}

/// A `MZ-NOT-LEADER` refusal (`message` starts with the code); `leader_addr`, when known, goes
/// to the `mozen-leader-addr` header, which clients follow, and to the `ErrorInfo`.
pub fn not_leader(message: impl fmt::Display, leader_addr: &str) -> Status {
    let mut message = message.to_string();
    if mozen_model::code_of(&message) != Some(Code::NotLeader) {
        message = Code::NotLeader.message(message);
    }
    let mut meta = HashMap::new();
    if !leader_addr.is_empty() {
        meta.insert(LEADER_ADDR_KEY.to_string(), leader_addr.to_string());
    }
    let mut s = with_details(Code::NotLeader, message, meta);
    if let Ok(v) = leader_addr.parse()
        && !leader_addr.is_empty()
    {
        s.metadata_mut().insert(crate::LEADER_ADDR_HEADER, v);
    }
    s
}

fn with_details(code: Code, message: String, metadata: HashMap<String, String>) -> Status {
    let mut details = ErrorDetails::with_error_info(code.as_str(), ERROR_DOMAIN, metadata);
    if let Some(delay) = retry_delay(code) {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(grpc_code(code), message, details)
}

/// The Mozen code of a status: the `ErrorInfo` reason when it is in Mozen's domain, else the
/// message prefix (older agents send no details).
pub fn reason(status: &Status) -> Option<Code> {
    status
        .get_details_error_info()
        .filter(|i| i.domain == ERROR_DOMAIN)
        .and_then(|i| Code::parse(&i.reason))
        .or_else(|| mozen_model::code_of(status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the "gRPC status and retry" table of docs/protocol.md, by code string.
    fn doc_rows() -> HashMap<String, (String, String)> {
        let doc = include_str!("../../docs/protocol.md");
        let start = doc
            .find("| code | gRPC status | retry |")
            .expect("docs/protocol.md has the gRPC status table");
        doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let unquote = |s: &str| s.trim_matches('`').to_string();
                (unquote(cells[0]), (unquote(cells[1]), cells[2].to_string()))
            })
            .collect()
    }

    /// `FAILED_PRECONDITION` for `tonic::Code::FailedPrecondition`.
    fn screaming(code: tonic::Code) -> String {
        let mut out = String::new();
        for (i, ch) in format!("{code:?}").chars().enumerate() {
            if ch.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn the_protocol_doc_gives_every_code_its_grpc_status_and_retry() {
        let rows = doc_rows();
        for &c in Code::ALL {
            let (grpc, retry) = rows
                .get(c.as_str())
                .unwrap_or_else(|| panic!("docs/protocol.md: no gRPC status row for {c}"));
            assert_eq!(*grpc, screaming(grpc_code(c)), "{c}");
            let want = match retry_delay(c) {
                Some(d) => format!("yes, after {} ms", d.as_millis()),
                None => "no".to_string(),
            };
            assert_eq!(*retry, want, "{c}");
        }
        assert_eq!(
            rows.len(),
            Code::ALL.len(),
            "a row for a code that does not exist"
        );
    }

    #[test]
    fn statuses_carry_error_info_retry_info_and_the_prefix() {
        let s = status(Code::QueueFull, "100 queued");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "MZ-QUEUE-FULL: 100 queued");
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "MZ-QUEUE-FULL");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let retry = s.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
        assert_eq!(reason(&s), Some(Code::QueueFull));

        let bad = status(Code::BadOp, "frobnicate");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.get_details_retry_info().is_none());

        let c = coded(format!("{}: no node 9", Code::UnknownNode));
        assert_eq!(c.code(), tonic::Code::NotFound);
        assert_eq!(c.message(), "MZ-UNKNOWN-NODE: no node 9");
        assert_eq!(reason(&coded("no code")), Some(Code::Internal));
    }

    #[test]
    fn not_leader_names_the_leader_in_the_header_and_the_details() {
        let s = not_leader("MZ-NOT-LEADER: node 2 is a follower", "127.0.0.1:7001");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.message(), "MZ-NOT-LEADER: node 2 is a follower");
        assert_eq!(
            s.metadata().get(crate::LEADER_ADDR_HEADER).unwrap(),
            "127.0.0.1:7001"
        );
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "MZ-NOT-LEADER");
        assert_eq!(info.metadata[LEADER_ADDR_KEY], "127.0.0.1:7001");
        let unknown = not_leader("leadership changing", "");
        assert_eq!(unknown.message(), "MZ-NOT-LEADER: leadership changing");
        assert!(unknown.metadata().get(crate::LEADER_ADDR_HEADER).is_none());
    }

    #[test]
    fn the_reason_falls_back_to_the_prefix() {
        let old = Status::failed_precondition("MZ-NOT-LEADER: node 2");
        assert_eq!(reason(&old), Some(Code::NotLeader));
        // The details win over the message.
        let s = Status::with_error_details(
            tonic::Code::FailedPrecondition,
            "no prefix here",
            ErrorDetails::with_error_info("MZ-QUORUM", ERROR_DOMAIN, HashMap::new()),
        );
        assert_eq!(reason(&s), Some(Code::Quorum));
        let foreign = Status::with_error_details(
            tonic::Code::FailedPrecondition,
            "x",
            ErrorDetails::with_error_info("MZ-QUORUM", "elsewhere", HashMap::new()),
        );
        assert_eq!(reason(&foreign), None);
        assert_eq!(reason(&Status::internal("plain")), None);
    }
}
