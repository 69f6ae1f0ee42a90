//! What running a request produced: a result, or a structured error with its call chain.

use crate::{Code, NodeId, RequestKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The string forms of the codes task errors carry most often, for code that compares or
/// builds `TaskError::code` strings (defined from [`Code`], which lists every code).
pub mod codes {
    use crate::Code;

    pub const FUNCTION_FAILED: &str = Code::FunctionFailed.as_str();
    pub const UNKNOWN_FUNCTION: &str = Code::UnknownFunction.as_str();
    pub const BAD_ARGUMENTS: &str = Code::BadArguments.as_str();
    pub const CHILD_FAILED: &str = Code::ChildFailed.as_str();
    pub const ATTEMPTS_EXHAUSTED: &str = Code::AttemptsExhausted.as_str();
    pub const CANCELLED: &str = Code::Cancelled.as_str();
    pub const EXEC_REFUSED: &str = Code::ExecRefused.as_str();
    pub const TIMEOUT: &str = Code::Timeout.as_str();
    /// A child call refused: its calling request is not running (cancelled, or re-queued).
    pub const PARENT_GONE: &str = Code::ParentGone.as_str();
}

/// One hop of an error chain: the request that saw the failure and where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    pub key: RequestKey,
    pub function: String,
    /// Canonical JSON arguments, for display.
    pub args: String,
    pub node: Option<NodeId>,
}

/// A failure that crosses the cluster keeping its origin: `code` and `message` describe the
/// original failure on `node`; `chain` lists the requests it passed through, origin first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub node: Option<NodeId>,
    pub chain: Vec<ChainLink>,
}

impl TaskError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        TaskError {
            code: code.to_string(),
            message: message.into(),
            node: None,
            chain: Vec::new(),
        }
    }
}

/// Most links an error chain keeps: the origin's half and the caller's half; the calls
/// between are counted in one link whose function is [`OMITTED_LINKS`].
pub const MAX_CHAIN_LINKS: usize = 32;

/// The function name of the link standing for calls left out of a long chain; its `args`
/// say how many (`"17 calls"`).
pub const OMITTED_LINKS: &str = "...";

impl TaskError {
    /// Adds the next hop (the caller of the last one) to the chain, keeping at most
    /// [`MAX_CHAIN_LINKS`]: past that, the hops in the middle are counted, not kept, so an
    /// error from the bottom of a deep recursion stays small enough to read.
    pub fn push_link(&mut self, link: ChainLink) {
        self.chain.push(link);
        if self.chain.len() <= MAX_CHAIN_LINKS {
            return;
        }
        let mid = MAX_CHAIN_LINKS / 2;
        let counted = (self.chain[mid].function == OMITTED_LINKS)
            .then(|| {
                self.chain[mid]
                    .args
                    .strip_suffix(" calls")?
                    .parse::<u64>()
                    .ok()
            })
            .flatten();
        // The hop after the middle one leaves; the middle one counts it (and itself, the
        // first time).
        self.chain.remove(mid + 1);
        let count = counted.map_or(2, |n| n + 1);
        let key = self.chain[mid].key;
        self.chain[mid] = ChainLink {
            key,
            function: OMITTED_LINKS.into(),
            args: format!("{count} calls"),
            node: None,
        };
    }

    /// A task error with a code of the cluster's own.
    pub fn coded(code: Code, message: impl Into<String>) -> Self {
        TaskError::new(code.as_str(), message)
    }

    /// The code as a [`Code`], when it is one of the cluster's (functions may set their own).
    pub fn known_code(&self) -> Option<Code> {
        Code::parse(&self.code)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(n) = self.node {
            write!(f, " (on node {n})")?;
        }
        for (i, link) in self.chain.iter().enumerate() {
            let verb = if i == 0 { "in" } else { "called from" };
            write!(f, "\n  {verb} {}({})", link.function, link.args)?;
            if let Some(n) = link.node {
                write!(f, " on node {n}")?;
            }
            write!(f, " [{}]", link.key.short())?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

/// The outcome of a request: the result bytes (canonical JSON) or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(TaskError),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Value(_))
    }

    /// Approximate payload size, for limits and the memo-table bound.
    pub fn size(&self) -> usize {
        match self {
            Outcome::Value(v) => v.len(),
            Outcome::Error(e) => e.message.len() + e.chain.len() * 64,
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn link(i: u8) -> ChainLink {
        ChainLink {
            key: RequestKey([i; 32]),
            function: format!("f{i}"),
            args: i.to_string(),
            node: Some(1),
        }
    }

    #[test]
    fn a_deep_chain_keeps_both_ends_and_counts_the_middle() {
        let mut e = TaskError::new("MZ-FUNCTION-FAILED", "boom");
        for i in 0..100u8 {
            e.push_link(link(i));
        }
        assert_eq!(e.chain.len(), MAX_CHAIN_LINKS);
        let mid = MAX_CHAIN_LINKS / 2;
        // The origin's half, in order.
        for (i, l) in e.chain[..mid].iter().enumerate() {
            assert_eq!(l.function, format!("f{i}"));
        }
        assert_eq!(e.chain[mid].function, OMITTED_LINKS);
        assert_eq!(
            e.chain[mid].args,
            format!("{} calls", 100 - MAX_CHAIN_LINKS + 1)
        );
        // The caller's half, ending with the outermost call.
        assert_eq!(e.chain.last().unwrap().function, "f99");
        assert_eq!(
            e.chain[mid + 1].function,
            format!("f{}", 100 - (MAX_CHAIN_LINKS - mid - 1))
        );
    }

    #[test]
    fn a_short_chain_is_kept_whole() {
        let mut e = TaskError::new("MZ-FUNCTION-FAILED", "boom");
        for i in 0..MAX_CHAIN_LINKS as u8 {
            e.push_link(link(i));
        }
        assert!(e.chain.iter().all(|l| l.function != OMITTED_LINKS));
    }
}
