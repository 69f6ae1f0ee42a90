//! Conversions between wire messages and model types.

use crate::v1;
use mozen_model as m;

impl From<&m::TaskError> for v1::TaskError {
    fn from(e: &m::TaskError) -> Self {
        v1::TaskError {
            code: e.code.clone(),
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
            code: e.code.clone(),
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
        }
    }
}
