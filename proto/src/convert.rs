//! Conversions between wire messages and model types.

use crate::v1;
use mozen_model as m;

impl From<&m::TaskError> for v1::TaskError {
    fn from(e: &m::TaskError) -> Self {
        v1::TaskError {
            code: e.code.clone(),
            code_enum: m::Code::parse(&e.code).map_or(v1::ErrorCode::Unspecified, Into::into)
                as i32,
            message: e.message.clone(),
            node: e.node,
            chain: e
                .chain
                .iter()
                .map(|l| v1::ChainLink {
                    key: l.key.to_hex(),
                    function: l.function.clone(),
                    args: l.args.clone(),
                    node: l.node,
                })
                .collect(),
        }
    }
}

impl From<&v1::TaskError> for m::TaskError {
    fn from(e: &v1::TaskError) -> Self {
        m::TaskError {
            // A sender that only set the enum still yields the code's string.
            code: match m::Code::try_from(e.code_enum()) {
                Ok(c) if e.code.is_empty() => c.as_str().to_string(),
                _ => e.code.clone(),
            },
            message: e.message.clone(),
            node: e.node,
            chain: e
                .chain
                .iter()
                .filter_map(|l| {
                    Some(m::ChainLink {
                        key: l.key.parse().ok()?,
                        function: l.function.clone(),
                        args: l.args.clone(),
                        node: l.node,
                    })
                })
                .collect(),
        }
    }
}

/// The same error-code variants on both sides (prost drops the `ERROR_CODE_` prefix), so
/// each direction is one exhaustive match: a code added to one enum and not the other does
/// not compile.
macro_rules! same_codes {
    ($($v:ident),* $(,)?) => {
        impl From<m::Code> for v1::ErrorCode {
            fn from(c: m::Code) -> Self {
                match c {
                    $( m::Code::$v => v1::ErrorCode::$v, )*
                }
            }
        }

        impl TryFrom<v1::ErrorCode> for m::Code {
            type Error = UnknownValue;

            fn try_from(c: v1::ErrorCode) -> Result<Self, UnknownValue> {
                match c {
                    $( v1::ErrorCode::$v => Ok(m::Code::$v), )*
                    v1::ErrorCode::Unspecified => Err(UnknownValue(0)),
                }
            }
        }
    };
}

same_codes!(
    FunctionFailed,
    UnknownFunction,
    BadArguments,
    ChildFailed,
    AttemptsExhausted,
    Cancelled,
    ExecRefused,
    Timeout,
    ParentGone,
    UnknownNode,
    UnknownRequest,
    NotQueued,
    NodeNotActive,
    NoFreeSlot,
    StaleAttempt,
    Backoff,
    BadTransition,
    NotLeader,
    Raft,
    ShuttingDown,
    NotReady,
    Quorum,
    NodeExists,
    BadOp,
    Identity,
    Server,
    Unreachable,
    Partitioned,
    Unauthenticated,
    Internal,
    TooLarge,
    ResultTooLarge,
    QueueFull,
    TooManyStreams,
    Damaged,
    Quarantined,
    Corrupt,
    StateConflict,
    RaftCore,
    TaskDied,
    Repair,
    BadJob,
    BadInput,
    JobFailed,
    BlobMissing,
    StaleSlice,
    Usage,
    BadHosts,
    Launch,
    UpTimeout,
    ChaosSetup,
    ChaosNotReady,
    ChaosViolations,
    BadResult,
    Forbidden
);

/// A wire enum value with no model counterpart: UNSPECIFIED, or a value from a newer peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue(pub i32);

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "enum value {} has no model counterpart", self.0)
    }
}

impl std::error::Error for UnknownValue {}

impl v1::TaskError {
    /// The error's code as a [`m::Code`]: from `code_enum`, else from the `code` string
    /// (senders before `code_enum` existed); None for a function's own code.
    pub fn known_code(&self) -> Option<m::Code> {
        m::Code::try_from(self.code_enum())
            .ok()
            .or_else(|| m::Code::parse(&self.code))
    }
}

impl From<m::NodeState> for v1::NodeState {
    fn from(s: m::NodeState) -> Self {
        match s {
            m::NodeState::Active => v1::NodeState::Active,
            m::NodeState::Draining => v1::NodeState::Draining,
            m::NodeState::Drained => v1::NodeState::Drained,
            m::NodeState::Down => v1::NodeState::Down,
        }
    }
}

impl TryFrom<v1::NodeState> for m::NodeState {
    type Error = UnknownValue;

    fn try_from(s: v1::NodeState) -> Result<Self, UnknownValue> {
        match s {
            v1::NodeState::Active => Ok(m::NodeState::Active),
            v1::NodeState::Draining => Ok(m::NodeState::Draining),
            v1::NodeState::Drained => Ok(m::NodeState::Drained),
            v1::NodeState::Down => Ok(m::NodeState::Down),
            v1::NodeState::Unspecified => Err(UnknownValue(0)),
        }
    }
}

impl From<&m::RequestState> for v1::RequestState {
    fn from(s: &m::RequestState) -> Self {
        match s {
            m::RequestState::Queued => v1::RequestState::Queued,
            m::RequestState::Running { .. } => v1::RequestState::Running,
            m::RequestState::Done => v1::RequestState::Done,
            m::RequestState::Failed => v1::RequestState::Failed,
            m::RequestState::Cancelled => v1::RequestState::Cancelled,
        }
    }
}

impl v1::RequestState {
    /// The enum for a `state` string of the wire ("queued", ..., "unknown");
    /// UNSPECIFIED for any other string.
    pub fn from_name(name: &str) -> Self {
        match name {
            "queued" => v1::RequestState::Queued,
            "running" => v1::RequestState::Running,
            "done" => v1::RequestState::Done,
            "failed" => v1::RequestState::Failed,
            "cancelled" => v1::RequestState::Cancelled,
            "unknown" => v1::RequestState::Unknown,
            _ => v1::RequestState::Unspecified,
        }
    }

    /// The `state` string of the wire for this enum ("" for UNSPECIFIED).
    pub fn name(self) -> &'static str {
        match self {
            v1::RequestState::Queued => "queued",
            v1::RequestState::Running => "running",
            v1::RequestState::Done => "done",
            v1::RequestState::Failed => "failed",
            v1::RequestState::Cancelled => "cancelled",
            v1::RequestState::Unknown => "unknown",
            v1::RequestState::Unspecified => "",
        }
    }
}

impl v1::CallReply {
    /// Sets the request state, string and enum together.
    pub fn set_state(&mut self, state: v1::RequestState) {
        self.state = state.name().to_string();
        self.state_enum = state as i32;
    }
}

/// Parses a 32-byte key from the worker hot path.
pub fn key_from_bytes(b: &[u8]) -> Option<m::RequestKey> {
    <[u8; 32]>::try_from(b).ok().map(m::RequestKey)
}

impl v1::Node {
    pub fn from_info(n: &m::NodeInfo) -> Self {
        v1::Node {
            id: n.id,
            name: n.name.clone(),
            addr: n.addr.clone(),
            cpus: n.cpus,
            memory_bytes: n.memory_bytes,
            slots: n.slots,
            state: n.state.as_str().to_string(),
            role: n.role.as_str().to_string(),
            score: n.score(),
            is_leader: false,
            busy_slots: 0,
            running: 0,
            heartbeat_age_ms: -1,
            tasks_per_sec: 0.0,
            labels: n.labels.clone().into_iter().collect(),
            state_enum: v1::NodeState::from(n.state) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_carries_its_state_as_string_and_enum() {
        for state in [
            m::NodeState::Active,
            m::NodeState::Draining,
            m::NodeState::Drained,
            m::NodeState::Down,
        ] {
            let info = m::NodeInfo {
                id: 1,
                name: "n".into(),
                addr: "a:1".into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                slots: 6,
                state,
                role: m::NodeRole::Voter,
                labels: Default::default(),
            };
            let n = v1::Node::from_info(&info);
            assert_eq!(n.state, state.as_str());
            assert_eq!(m::NodeState::try_from(n.state_enum()), Ok(state));
        }
    }

    #[test]
    fn every_code_round_trips_through_the_wire_enum() {
        for &c in m::Code::ALL {
            let wire = v1::ErrorCode::from(c);
            assert_ne!(wire, v1::ErrorCode::Unspecified);
            assert_eq!(m::Code::try_from(wire), Ok(c));
            // The proto value's name is the code's string, so the .proto stays readable.
            let proto_name = wire.as_str_name().trim_start_matches("ERROR_CODE_");
            assert_eq!(proto_name.replace('_', "-"), &c.as_str()[3..]);
        }
        assert!(m::Code::try_from(v1::ErrorCode::Unspecified).is_err());
    }

    #[test]
    fn node_states_round_trip() {
        use m::NodeState::*;
        for s in [Active, Draining, Drained, Down] {
            let wire = v1::NodeState::from(s);
            assert_eq!(m::NodeState::try_from(wire), Ok(s));
            assert_eq!(
                wire.as_str_name().to_lowercase(),
                format!("node_state_{}", s.as_str())
            );
        }
        assert!(m::NodeState::try_from(v1::NodeState::Unspecified).is_err());
    }

    #[test]
    fn request_states_match_their_names() {
        let states = [
            m::RequestState::Queued,
            m::RequestState::Running {
                node: 1,
                attempt: 1,
                since: 0,
            },
            m::RequestState::Done,
            m::RequestState::Failed,
            m::RequestState::Cancelled,
        ];
        for s in &states {
            let wire = v1::RequestState::from(s);
            assert_eq!(wire.name(), s.name());
            assert_eq!(v1::RequestState::from_name(s.name()), wire);
        }
        assert_eq!(
            v1::RequestState::from_name("unknown"),
            v1::RequestState::Unknown
        );
        assert_eq!(
            v1::RequestState::from_name("bogus"),
            v1::RequestState::Unspecified
        );
    }

    #[test]
    fn task_errors_carry_the_code_twice() {
        let e = m::TaskError::coded(m::Code::ChildFailed, "divide([1,0]): division by zero");
        let wire = v1::TaskError::from(&e);
        assert_eq!(wire.code, "MZ-CHILD-FAILED");
        assert_eq!(wire.code_enum(), v1::ErrorCode::ChildFailed);
        assert_eq!(wire.known_code(), Some(m::Code::ChildFailed));
        assert_eq!(m::TaskError::from(&wire), e);

        let own = m::TaskError::new("APP-E42", "a function's own code");
        let wire = v1::TaskError::from(&own);
        assert_eq!(wire.code_enum(), v1::ErrorCode::Unspecified);
        assert_eq!(m::TaskError::from(&wire), own);

        let enum_only = v1::TaskError {
            code_enum: v1::ErrorCode::Timeout as i32,
            ..Default::default()
        };
        assert_eq!(m::TaskError::from(&enum_only).code, "MZ-TIMEOUT");
    }

    #[test]
    fn call_reply_state_is_set_twice() {
        let mut r = v1::CallReply::default();
        r.set_state(v1::RequestState::Done);
        assert_eq!(
            (r.state.as_str(), r.state_enum()),
            ("done", v1::RequestState::Done)
        );
    }
}
