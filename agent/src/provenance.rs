//! Whose completions count: an outcome (a completion, a child value reported early, a park)
//! is taken only from the node that holds that attempt, and only from a caller that may speak
//! for that node ([`crate::security::Speaker`]). The leader judges each one before anything
//! is proposed or handed to a waiting caller or parent: [`judge`] for attempts written down in
//! the log, the express flights for attempt 0.
//!
//! A refused one is counted in `mozen_refused_completions_total{reason}` and told in a cluster
//! event (kind [`EVENT_KIND`]), at most one per speaker every [`EVENT_EVERY`] with the count
//! since the previous one, so a flood of forgeries cannot flood the log. A merely stale
//! completion (an earlier attempt's, from a node that may have run it) is dropped without a
//! word, as the state machine would drop it.

use mozen_model::{NodeId, Request, RequestState};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Kind of the cluster event that tells refused completions.
pub const EVENT_KIND: &str = "refused-completion";

/// Shortest time between two events about one speaker.
pub const EVENT_EVERY: Duration = Duration::from_secs(5);

/// Why an outcome was refused: the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The caller may not speak for the node the outcome names (its credential is bound to
    /// another node, or its `mozen-node-id` header names another).
    Node,
    /// No such attempt runs on that node: the request is unknown, runs elsewhere, or never
    /// had that attempt.
    Attempt,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::Node, Reason::Attempt];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Node => "node",
            Reason::Attempt => "attempt",
        }
    }
}

/// What the leader does with one reported outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node holds that attempt: take it.
    Holds,
    /// An earlier attempt's: drop it, harmless.
    Stale,
    Refused(Reason),
}

/// The verdict on an outcome of `attempt` (1 or more) of `req` reported for `node`, as the
/// leader's applied state shows `req`.
pub fn judge(req: Option<&Request>, node: NodeId, attempt: u32) -> Verdict {
    let Some(req) = req else {
        return Verdict::Refused(Reason::Attempt);
    };
    match req.state {
        RequestState::Running {
            node: n,
            attempt: a,
            ..
        } if n == node && a == attempt => Verdict::Holds,
        // Attempts are numbered in order: a number this request never reached is made up.
        _ if attempt == 0 || attempt > req.attempts => Verdict::Refused(Reason::Attempt),
        // The latest attempt ran on one node only.
        _ if attempt == req.attempts && req.last_node.is_some_and(|n| n != node) => {
            Verdict::Refused(Reason::Attempt)
        }
        _ => Verdict::Stale,
    }
}

/// Refused outcomes counted by this agent, and the events still to tell.
#[derive(Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<Reason, u64>>,
    /// Per speaker: when its last event was proposed, and refusals since then.
    told: Mutex<HashMap<String, (Option<Instant>, u64)>>,
}

impl Refusals {
    /// Counts one refusal of `speaker`'s; returns the event message to propose now, if one is
    /// due (the first refusal of a speaker, then at most one every [`EVENT_EVERY`]).
    pub fn refused(&self, reason: Reason, speaker: &str, detail: &str) -> Option<String> {
        *self
            .counts
            .lock()
            .expect("refusals")
            .entry(reason)
            .or_default() += 1;
        tracing::warn!(reason = reason.as_str(), "refused: {detail}");
        let mut told = self.told.lock().expect("refusals");
        let (last, pending) = told.entry(speaker.to_string()).or_default();
        *pending += 1;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < EVENT_EVERY) {
            return None;
        }
        let n = std::mem::take(pending);
        *last = Some(now);
        Some(if n == 1 {
            format!("refused ({}): {detail}", reason.as_str())
        } else {
            format!(
                "{n} outcomes refused since the last event, the latest ({}): {detail}",
                reason.as_str()
            )
        })
    }

    /// Refusals by reason, every reason present.
    pub fn counts(&self) -> Vec<(Reason, u64)> {
        let c = self.counts.lock().expect("refusals");
        Reason::ALL
            .iter()
            .map(|r| (*r, c.get(r).copied().unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mozen_model::RequestKey;

    fn running(node: NodeId, attempt: u32) -> Request {
        Request {
            key: RequestKey([1; 32]),
            function: "f".into(),
            args: b"null".to_vec(),
            parents: vec![],
            priority: 0,
            state: RequestState::Running {
                node,
                attempt,
                since: 0,
            },
            attempts: attempt,
            failures: 0,
            created: 0,
            updated: 0,
            retry: Default::default(),
            last_node: Some(node),
            duration_ms: 0,
            waiting: 0,
            not_before: 0,
            seq: 0,
        }
    }

    #[test]
    fn only_the_node_holding_the_attempt_completes_it() {
        let r = running(2, 3);
        assert_eq!(judge(Some(&r), 2, 3), Verdict::Holds);
        assert_eq!(judge(Some(&r), 1, 3), Verdict::Refused(Reason::Attempt));
        assert_eq!(judge(Some(&r), 2, 4), Verdict::Refused(Reason::Attempt));
        assert_eq!(judge(Some(&r), 2, 99), Verdict::Refused(Reason::Attempt));
        assert_eq!(judge(None, 2, 3), Verdict::Refused(Reason::Attempt));
        // An earlier attempt's late completion is harmless.
        assert_eq!(judge(Some(&r), 1, 2), Verdict::Stale);
        let mut done = running(2, 3);
        done.state = RequestState::Done;
        assert_eq!(judge(Some(&done), 2, 3), Verdict::Stale);
        assert_eq!(judge(Some(&done), 5, 3), Verdict::Refused(Reason::Attempt));
    }

    #[test]
    fn events_are_rate_limited_per_speaker() {
        let r = Refusals::default();
        assert!(r.refused(Reason::Node, "mallory", "a").is_some());
        assert!(r.refused(Reason::Node, "mallory", "b").is_none());
        assert!(r.refused(Reason::Attempt, "eve", "c").is_some());
        assert_eq!(r.counts(), vec![(Reason::Node, 2), (Reason::Attempt, 1)]);
    }
}
