//! Builders shared by the tests: options, keys, nodes, commands and log entries.

use mozen_model::{NodeId, NodeInfo, NodeRole, NodeState, Outcome, RequestKey, RetryPolicy};
use mozen_store::{Assignment, Command, Completion, Entry, LogId, NewRequest, StoreOptions};
use openraft::{CommittedLeaderId, EntryPayload};
use std::collections::BTreeMap;

/// A small sled cache: many stores are open at once in the tests.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        cache_capacity_bytes: 16 * 1024 * 1024,
    }
}

/// The function a test key belongs to: keys are spread over three functions.
pub fn function_of(k: u32) -> String {
    format!("f{}", k % 3)
}

pub fn key(k: u32) -> RequestKey {
    RequestKey::of(&function_of(k), &k.to_le_bytes())
}

pub fn node(id: NodeId, slots: u32) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("node-{id}"),
        addr: format!("127.0.0.1:{}", 7000 + id),
        cpus: 2,
        memory_bytes: 4 << 30,
        slots,
        state: NodeState::Active,
        role: NodeRole::Voter,
        labels: BTreeMap::new(),
    }
}

pub fn new_request(k: u32) -> NewRequest {
    NewRequest {
        key: key(k),
        function: function_of(k),
        args: k.to_le_bytes().to_vec(),
        parent: None,
        priority: 0,
        retry: RetryPolicy::default(),
        no_cache: false,
    }
}

/// Register one node with `slots`, submit, assign and complete keys `from..to` with values of
/// `value_len` bytes: one command per step.
pub fn lifecycle(from: u32, to: u32, value_len: usize, at: u64) -> Vec<Command> {
    vec![
        Command::Submit {
            requests: (from..to).map(new_request).collect(),
            at,
        },
        Command::Assign {
            assignments: (from..to)
                .map(|k| Assignment {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                })
                .collect(),
            at,
        },
        Command::Complete {
            completions: (from..to)
                .map(|k| Completion {
                    key: key(k),
                    node: 1,
                    attempt: 1,
                    outcome: Outcome::Value(value(k, value_len)),
                    duration_ms: 3,
                })
                .collect(),
            at,
        },
    ]
}

/// A deterministic result payload of `len` bytes for key `k`.
pub fn value(k: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (k as usize + i) as u8).collect()
}

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

pub fn entry(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Numbers the commands as log entries from `first_index` on.
pub fn entries(first_index: u64, cmds: Vec<Command>) -> Vec<Entry> {
    cmds.into_iter()
        .zip(first_index..)
        .map(|(c, i)| entry(1, i, c))
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A small event command, `i` in its message and time.
pub fn event(i: u64) -> Command {
    Command::Event {
        kind: "t".into(),
        node: None,
        message: format!("{i}"),
        at: i,
    }
}

/// Copies a directory tree (a data dir) to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
