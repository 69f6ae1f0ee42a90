//! What a gRPC refusal means to a client: a redirect to the leader, a lost agent, or the
//! cluster's answer. Both the [`Client`](crate::Client) and programs that hold their own streams
//! (the console's `Watch`) classify with these, so they agree on what to retry.
//!
//! The Mozen code of a status is its `google.rpc.Status` `ErrorInfo` reason when the agent sent
//! one, else the `MZ-...` prefix of its message (agents from before the details).

use crate::error::ClientError;
use mozen_proto as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The leader address a follower put in its `MZ-NOT-LEADER` refusal, if any: the
/// `mozen-leader-addr` header, else the `ErrorInfo` metadata.
pub fn leader_hint(status: &Status) -> Option<String> {
    if !is_not_leader(status) {
        return None;
    }
    status
        .metadata()
        .get(pb::LEADER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| {
            status
                .get_details_error_info()
                .and_then(|i| i.metadata.get(pb::status::LEADER_ADDR_KEY).cloned())
        })
        .filter(|s| !s.is_empty())
}

/// A follower's refusal (`MZ-NOT-LEADER`): the operation belongs to the leader.
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && pb::status::reason(status) == Some(mozen_model::Code::NotLeader)
}

/// The agent could not be reached or the connection broke: another agent may answer.
pub fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted
    ) || (status.code() == Code::Internal && status.message().contains("transport"))
}

/// A refusal from the cluster as a client error (its `MZ-` code split from the message).
pub fn rejected(status: &Status) -> ClientError {
    let msg = status.message().to_string();
    let (code, message) = match (pb::status::reason(status), msg.split_once(": ")) {
        (Some(code), Some((c, m))) if c == code.as_str() => (c.to_string(), m.to_string()),
        (Some(code), _) => (code.as_str().to_string(), msg),
        (None, Some((c, m))) if c.starts_with("MZ-") => (c.to_string(), m.to_string()),
        (None, _) => (format!("MZ-RPC-{:?}", status.code()).to_uppercase(), msg),
    };
    ClientError::Rejected { code, message }
}

/// An operator-facing message for a failed RPC at `addr`, always starting with an `MZ-` code:
/// the cluster's own message when it has one, else `MZ-UNREACHABLE` for a lost agent or
/// `MZ-RPC-<CODE>` naming the address.
pub fn describe(addr: &str, status: &Status) -> String {
    let msg = status.message();
    if msg.starts_with("MZ-") {
        msg.to_string()
    } else if let Some(code) = pb::status::reason(status) {
        code.message(msg)
    } else if is_transport(status) {
        mozen_model::Code::Unreachable.message(format_args!(
            "{addr}: {}",
            if msg.is_empty() { "no answer" } else { msg }
        ))
    } else {
        format!(
            "MZ-RPC-{}: {addr}: {msg}",
            format!("{:?}", status.code()).to_uppercase()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_leader() {
        let mut s = Status::failed_precondition("MZ-NOT-LEADER: node 2 is not the leader");
        s.metadata_mut()
            .insert(pb::LEADER_ADDR_HEADER, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
        let mut other = Status::failed_precondition("MZ-DRAINING: node 2 drains");
        other
            .metadata_mut()
            .insert(pb::LEADER_ADDR_HEADER, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(
            leader_hint(&other),
            None,
            "only a not-leader refusal redirects"
        );
    }

    #[test]
    fn lost_agents_are_told_from_answers() {
        assert!(is_transport(&Status::unavailable("tcp connect error")));
        assert!(is_transport(&Status::internal(
            "h2 protocol error: transport"
        )));
        assert!(!is_transport(&Status::internal("MZ-INTERNAL: disk")));
        assert!(!is_transport(&Status::failed_precondition(
            "MZ-NOT-LEADER: node 2"
        )));
    }

    #[test]
    fn rejections_keep_their_code() {
        let e = rejected(&Status::not_found("MZ-UNKNOWN-NODE: node 9"));
        assert_eq!(e.code(), "MZ-UNKNOWN-NODE");
        assert_eq!(e.to_string(), "MZ-UNKNOWN-NODE: node 9");
        let e = rejected(&Status::invalid_argument("bad"));
        assert_eq!(e.to_string(), "MZ-RPC-INVALIDARGUMENT: bad");
    }

    /// The code and the leader's address come from the `ErrorInfo` when the message has no
    /// prefix, and from the prefix when there are no details.
    #[test]
    fn the_error_info_reason_is_read_before_the_prefix() {
        use std::collections::HashMap;
        use tonic_types::ErrorDetails;
        let info = |reason: &str, meta: HashMap<String, String>| {
            ErrorDetails::with_error_info(reason, pb::status::ERROR_DOMAIN, meta)
        };
        let s = Status::with_error_details(
            Code::ResourceExhausted,
            "queue is full",
            info("MZ-QUEUE-FULL", HashMap::new()),
        );
        let e = rejected(&s);
        assert_eq!(e.code(), "MZ-QUEUE-FULL");
        assert_eq!(e.to_string(), "MZ-QUEUE-FULL: queue is full");
        assert_eq!(describe("h:1", &s), "MZ-QUEUE-FULL: queue is full");

        let meta = HashMap::from([(
            pb::status::LEADER_ADDR_KEY.to_string(),
            "127.0.0.1:7001".to_string(),
        )]);
        let redirect = Status::with_error_details(
            Code::FailedPrecondition,
            "node 2 is a follower",
            info("MZ-NOT-LEADER", meta),
        );
        assert!(is_not_leader(&redirect));
        assert_eq!(leader_hint(&redirect).as_deref(), Some("127.0.0.1:7001"));

        // What the agent sends now: both forms, which agree.
        let both = pb::status::not_leader("MZ-NOT-LEADER: node 2", "127.0.0.1:7002");
        assert!(is_not_leader(&both));
        assert_eq!(leader_hint(&both).as_deref(), Some("127.0.0.1:7002"));
        let e = rejected(&pb::status::status(
            mozen_model::Code::UnknownNode,
            "node 9",
        ));
        assert_eq!(e.code(), "MZ-UNKNOWN-NODE");
        assert_eq!(e.to_string(), "MZ-UNKNOWN-NODE: node 9");

        // The prefix alone still classifies (agents without details).
        let old = Status::failed_precondition("MZ-NOT-LEADER: node 2");
        assert!(is_not_leader(&old));
        assert_eq!(rejected(&old).code(), "MZ-NOT-LEADER");
    }

    #[test]
    fn errors_carry_a_code() {
        let a = "h:1";
        assert_eq!(
            describe(a, &Status::not_found("MZ-UNKNOWN-NODE: node 9")),
            "MZ-UNKNOWN-NODE: node 9"
        );
        assert_eq!(
            describe(a, &Status::unavailable("tcp connect error")),
            "MZ-UNREACHABLE: h:1: tcp connect error"
        );
        assert_eq!(
            describe(a, &Status::invalid_argument("bad")),
            "MZ-RPC-INVALIDARGUMENT: h:1: bad"
        );
    }
}
