//! Bounds on what a read returns: every list is cut by count and by bytes, and a reply cut
//! short says where to read on (`next_page_token`, opaque to clients).
//!
//! Tokens are short text: a tag naming the list and its version, then where the next page
//! starts: `q1:<priority>:<seq>` (the queue, after that position), `e1:<at_ms>:<n>` (events
//! older than the page read: those before `at_ms`, and at `at_ms` all but the `n` newest),
//! `t1:<n>` (a tree, after its first `n` entries), `f1:<name>` (functions after that name).
//! A token that does not parse is `INVALID_ARGUMENT` naming the list.

use mozen_model::Code;
use mozen_proto::status::status;
use tonic::Status;

/// Most entries of any one list a read returns, whatever the request asks.
pub const MAX_PAGE: usize = 10_000;

/// The byte budget of one reply: half of `--max-message`, the other half being room for
/// everything around the lists.
pub fn reply_budget(max_message: usize) -> usize {
    max_message / 2
}

/// Items kept while their encoded size fits a byte budget shared by several lists.
#[derive(Debug)]
pub struct Fit {
    left: usize,
    /// Something was left out for want of room.
    pub cut: bool,
}

impl Fit {
    pub fn new(budget: usize) -> Fit {
        Fit {
            left: budget,
            cut: false,
        }
    }

    /// Takes `m` when it fits what is left of the budget (with its field framing).
    pub fn take<M: prost::Message>(&mut self, m: &M) -> bool {
        let len = m.encoded_len() + 8;
        if self.cut || len > self.left {
            self.cut = true;
            return false;
        }
        self.left -= len;
        true
    }
}

/// A page size asked by a client: `asked` when set, else `default`, never above [`MAX_PAGE`].
pub fn page_size(asked: u32, default: usize) -> usize {
    if asked == 0 {
        default
    } else {
        (asked as usize).min(MAX_PAGE)
    }
}

fn bad(list: &str, token: &str) -> Status {
    status(
        Code::BadArguments,
        format_args!(
            "page_token {:?} is not a token of {list}: pass the next_page_token of a previous reply",
            mozen_model::quote(token, 64)
        ),
    )
}

/// Where a queue page starts: after (priority, seq).
pub fn queue_token(token: &str) -> Result<Option<(i32, u64)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.strip_prefix("q1:").and_then(|rest| {
        let (p, s) = rest.split_once(':')?;
        Some((p.parse().ok()?, s.parse().ok()?))
    });
    parsed.map(Some).ok_or_else(|| bad("the queue", token))
}

pub fn next_queue_token(priority: i32, seq: u64) -> String {
    format!("q1:{priority}:{seq}")
}

/// Where an events page starts: before `at_ms`, skipping the `n` newest at `at_ms`.
pub fn events_token(token: &str) -> Result<Option<(u64, usize)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.strip_prefix("e1:").and_then(|rest| {
        let (at, n) = rest.split_once(':')?;
        Some((at.parse().ok()?, n.parse().ok()?))
    });
    parsed.map(Some).ok_or_else(|| bad("events", token))
}

pub fn next_events_token(at_ms: u64, n: usize) -> String {
    format!("e1:{at_ms}:{n}")
}

/// Where a tree page starts: after its first `n` entries.
pub fn tree_token(token: &str) -> Result<usize, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    (token.strip_prefix("t1:").and_then(|n| n.parse().ok())).ok_or_else(|| bad("a tree", token))
}

pub fn next_tree_token(n: usize) -> String {
    format!("t1:{n}")
}

/// Where a functions page starts: after this name.
pub fn functions_token(token: &str) -> Result<Option<&str>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("f1:")
        .map(Some)
        .ok_or_else(|| bad("functions", token))
}

pub fn next_functions_token(name: &str) -> String {
    format!("f1:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mozen_proto as pb;

    #[test]
    fn fit_keeps_items_while_they_fit_and_then_none() {
        let e = |n: usize| pb::Event {
            message: "m".repeat(n),
            ..Default::default()
        };
        let mut fit = Fit::new(250);
        assert!(fit.take(&e(100)));
        assert!(fit.take(&e(100)));
        assert!(!fit.take(&e(100)));
        assert!(fit.cut);
        // Once cut, smaller items are not taken either: a page is a prefix.
        assert!(!fit.take(&e(1)));
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_invalid_arguments() {
        assert_eq!(
            queue_token(&next_queue_token(-3, 17)).unwrap(),
            Some((-3, 17))
        );
        assert_eq!(
            events_token(&next_events_token(99, 2)).unwrap(),
            Some((99, 2))
        );
        assert_eq!(tree_token(&next_tree_token(40)).unwrap(), 40);
        assert_eq!(functions_token("f1:a:b").unwrap(), Some("a:b"));
        assert_eq!(queue_token("").unwrap(), None);
        let invalid = |r: Result<(), Status>| r.unwrap_err().code() == tonic::Code::InvalidArgument;
        for bad in ["x", "q1:1", "q1:a:b", "e1:1:1"] {
            assert!(invalid(queue_token(bad).map(drop)), "{bad}");
        }
        for bad in ["x", "e1:1", "e1:a:1", "q1:1:1"] {
            assert!(invalid(events_token(bad).map(drop)), "{bad}");
        }
        for bad in ["x", "t1:-1", "t1:"] {
            assert!(invalid(tree_token(bad).map(drop)), "{bad}");
        }
        assert!(invalid(functions_token("g1:a").map(drop)));
        assert_eq!(page_size(0, 100), 100);
        assert_eq!(page_size(1 << 30, 100), MAX_PAGE);
    }
}
