//! The checker: what a history must satisfy, and what the healed cluster must hold.
//!
//! From the history alone ([`analyze`]):
//! - every acknowledged value is the one the workload expects for its call;
//! - no key is acknowledged with two different values, nor failed after it was acknowledged
//!   done (a done request is memoized: later calls must be answered with its value).
//!
//! From the cluster after the faults are undone (and, with restarts enabled, after one last
//! full-cluster restart) ([`verify`]):
//! - every acknowledged key is done with the expected value, asked through the leader and
//!   asked of every voter alone (its own applied state and its own sled);
//! - all voters converge to the same state digest at the same applied index;
//! - how many requests ran more than once (allowed, since functions are pure) is counted.

use super::history::Entry;
use super::procs::LocalCluster;
use super::workload::expected;
use futures::StreamExt;
use mozen_client::{Client, ClientError};
use mozen_proto as pb;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// What a history says, before the cluster is asked anything.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Analysis {
    pub invoked: u64,
    pub ok: u64,
    pub failed: u64,
    pub indeterminate: u64,
    /// Failures by code.
    pub failures: BTreeMap<String, u64>,
    /// Acknowledged keys with their call and expected value.
    #[serde(skip)]
    pub acknowledged: BTreeMap<String, Acked>,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Acked {
    pub function: String,
    pub args: Value,
    pub value: Value,
}

struct Invoked<'a> {
    function: &'a str,
    args: &'a Value,
    key: &'a str,
    at_ms: u64,
}

/// Checks a history on its own; see the module docs.
pub fn analyze(entries: &[Entry]) -> Analysis {
    let mut a = Analysis::default();
    let mut invokes: HashMap<u64, Invoked<'_>> = HashMap::new();
    // Per key: the first time a client was told it was done.
    let mut first_ok: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut fails: Vec<(u64, &str, u64, &str)> = Vec::new();
    for e in entries {
        match e {
            Entry::Invoke {
                op,
                at_ms,
                function,
                args,
                key,
                ..
            } => {
                a.invoked += 1;
                invokes.insert(
                    *op,
                    Invoked {
                        function,
                        args,
                        key,
                        at_ms: *at_ms,
                    },
                );
            }
            Entry::Ok {
                op, at_ms, value, ..
            } => {
                a.ok += 1;
                let Some(inv) = invokes.get(op) else {
                    a.violations
                        .push(format!("op {op}: acknowledged but never invoked"));
                    continue;
                };
                match expected(inv.function, inv.args) {
                    Some(exp) if &exp != value => a.violations.push(format!(
                        "op {op}: {}({}) acknowledged {value}, expected {exp}",
                        inv.function, inv.args
                    )),
                    _ => {}
                }
                match a.acknowledged.get(inv.key) {
                    Some(prev) if &prev.value != value => a.violations.push(format!(
                        "key {}: {}({}) acknowledged with two values, {} and {value} (op {op})",
                        inv.key, inv.function, inv.args, prev.value
                    )),
                    Some(_) => {}
                    None => {
                        a.acknowledged.insert(
                            inv.key.to_string(),
                            Acked {
                                function: inv.function.to_string(),
                                args: inv.args.clone(),
                                value: value.clone(),
                            },
                        );
                    }
                }
                let f = first_ok.entry(inv.key).or_insert((*at_ms, *op));
                if *at_ms < f.0 {
                    *f = (*at_ms, *op);
                }
            }
            Entry::Fail { op, code, .. } => {
                a.failed += 1;
                *a.failures.entry(code.clone()).or_default() += 1;
                if let Some(inv) = invokes.get(op) {
                    fails.push((*op, inv.key, inv.at_ms, code));
                }
            }
            Entry::Info { .. } => a.indeterminate += 1,
            Entry::Fault { .. } => {}
        }
    }
    for (op, key, invoked_at, code) in fails {
        if let Some((ok_at, ok_op)) = first_ok.get(key)
            && *ok_at < invoked_at
        {
            a.violations.push(format!(
                "key {key}: acknowledged done at {ok_at} ms (op {ok_op}), then op {op} invoked \
                 at {invoked_at} ms failed with {code}"
            ));
        }
    }
    a
}

/// What the healed cluster holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verification {
    /// Acknowledged keys checked through the leader and on every voter.
    pub keys_checked: u64,
    pub voters: Vec<u64>,
    /// The applied index and digest all voters agreed on (hex), if they did.
    pub digest_index: Option<u64>,
    pub digest: Option<String>,
    /// Distinct requests in the trees of the acknowledged keys, and those of them that ran
    /// more than once (assigned in more than one attempt).
    pub requests_seen: u64,
    pub requests_rerun: u64,
    pub violations: Vec<String>,
}

async fn get(client: &Client, key: &str, wait: bool) -> Result<pb::CallReply, ClientError> {
    let req = pb::GetRequest {
        key: key.to_string(),
        wait,
        timeout_ms: if wait { 5_000 } else { 0 },
    };
    client
        .rpc(|mut c| {
            let r = req.clone();
            async move { c.get(r).await }
        })
        .await
}

/// Asks `client` for `key` until it is done (or `limit` passes); returns what went wrong.
async fn check_key(
    client: &Client,
    key: &str,
    acked: &Acked,
    wait: bool,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut last;
    loop {
        match get(client, key, wait).await {
            Ok(r) if r.state == "done" => {
                let text = r.result_json.as_deref().unwrap_or("null");
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let exp = expected(&acked.function, &acked.args).unwrap_or(acked.value.clone());
                return (v != exp || v != acked.value).then(|| {
                    format!(
                        "{}({}) holds {v}; acknowledged {}, expected {exp}",
                        acked.function, acked.args, acked.value
                    )
                });
            }
            Ok(r) => last = format!("state {}", r.state),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Some(format!(
                "{}({}) acknowledged {} but not done after {limit:?}: {last}",
                acked.function, acked.args, acked.value
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every voter reports the same digest at the same applied index.
async fn converge(
    cluster: &LocalCluster,
    voters: &[u64],
    limit: Duration,
) -> Result<(u64, String), String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut seen = Vec::new();
        for id in voters {
            let c = cluster.agent(*id).client(Duration::from_secs(1));
            match c
                .rpc(|mut c| async move { c.state_digest(pb::StateDigestRequest::default()).await })
                .await
            {
                Ok(r) => seen.push((*id, r.applied_index, hex::encode(r.digest))),
                Err(e) => seen.push((*id, 0, format!("error: {e}"))),
            }
        }
        let distinct: BTreeSet<(u64, &str)> =
            seen.iter().map(|(_, i, d)| (*i, d.as_str())).collect();
        if distinct.len() == 1 && !seen[0].2.starts_with("error") {
            return Ok((seen[0].1, seen[0].2.clone()));
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = seen
                .iter()
                .map(|(id, i, d)| format!("voter {id}: index {i} digest {}", &d[..d.len().min(16)]))
                .collect();
            return Err(format!(
                "voters did not converge within {limit:?}: {}",
                shown.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the healed cluster against the acknowledged keys; see the module docs.
pub async fn verify(cluster: &LocalCluster, analysis: &Analysis) -> Verification {
    let mut v = Verification {
        keys_checked: analysis.acknowledged.len() as u64,
        voters: cluster.voter_ids(),
        ..Default::default()
    };
    let limit = Duration::from_secs(60);
    let all = cluster.client(Duration::from_secs(20));
    let mut targets: Vec<(String, Client, bool)> = vec![("the leader".into(), all.clone(), true)];
    for id in &v.voters {
        targets.push((
            format!("voter {id} alone"),
            cluster.agent(*id).client(Duration::from_secs(5)),
            false,
        ));
    }
    for (name, client, wait) in &targets {
        let problems: Vec<String> = futures::stream::iter(&analysis.acknowledged)
            .map(|(key, acked)| async move {
                check_key(client, key, acked, *wait, limit)
                    .await
                    .map(|p| format!("key {key} via {name}: {p}"))
            })
            .buffer_unordered(16)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        v.violations.extend(problems);
    }
    match converge(cluster, &v.voters, limit).await {
        Ok((index, digest)) => {
            v.digest_index = Some(index);
            v.digest = Some(digest);
        }
        Err(e) => v.violations.push(e),
    }
    // Re-executions: attempts of every request in the acknowledged trees.
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let trees: Vec<Vec<pb::TreeEntry>> = futures::stream::iter(analysis.acknowledged.keys())
        .map(|key| {
            let all = all.clone();
            let req = pb::TreeRequest {
                key: key.clone(),
                ..Default::default()
            };
            async move {
                all.rpc(|mut c| {
                    let r = req.clone();
                    async move { c.tree(r).await }
                })
                .await
                .map(|t| t.entries)
                .unwrap_or_default()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for e in trees.into_iter().flatten() {
        if let Some(r) = e.request {
            attempts.insert(r.key, r.attempts);
        }
    }
    v.requests_seen = attempts.len() as u64;
    v.requests_rerun = attempts.values().filter(|a| **a > 1).count() as u64;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invoke(op: u64, at_ms: u64, function: &str, args: Value) -> Entry {
        let key = mozen_model::RequestKey::of(function, &mozen_model::canonical_args(&args));
        Entry::Invoke {
            op,
            client: 0,
            at_ms,
            function: function.into(),
            args,
            key: key.to_hex(),
        }
    }

    fn ok(op: u64, at_ms: u64, value: Value) -> Entry {
        Entry::Ok {
            op,
            client: 0,
            at_ms,
            value,
        }
    }

    fn fail(op: u64, at_ms: u64) -> Entry {
        Entry::Fail {
            op,
            client: 0,
            at_ms,
            code: "MZ-FUNCTION-FAILED".into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let h = [
            invoke(0, 0, "fib", json!(10)),
            invoke(1, 1, "fib", json!(10)),
            ok(0, 5, json!(55)),
            ok(1, 6, json!(55)),
            invoke(2, 7, "tree", json!([2, 2, "n"])),
            fail(2, 9),
            invoke(3, 10, "echo", json!([1])),
            Entry::Info {
                op: 3,
                client: 0,
                at_ms: 20,
                message: "timeout".into(),
            },
        ];
        let a = analyze(&h);
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!((a.invoked, a.ok, a.failed, a.indeterminate), (4, 2, 1, 1));
        assert_eq!(a.acknowledged.len(), 1);
    }

    #[test]
    fn wrong_and_conflicting_values_are_violations() {
        let h = [
            invoke(0, 0, "fib", json!(10)),
            ok(0, 5, json!(56)),
            invoke(1, 6, "fib", json!(10)),
            ok(1, 7, json!(55)),
        ];
        let a = analyze(&h);
        assert_eq!(a.violations.len(), 2, "{:?}", a.violations);
        assert!(a.violations[0].contains("expected 55"));
        assert!(a.violations[1].contains("two values"));
    }

    #[test]
    fn failing_after_done_is_a_violation_but_not_while_overlapping() {
        let overlapping = [
            invoke(0, 0, "fib", json!(3)),
            invoke(1, 1, "fib", json!(3)),
            ok(0, 5, json!(2)),
            fail(1, 6),
        ];
        assert!(analyze(&overlapping).violations.is_empty());
        let after = [
            invoke(0, 0, "fib", json!(3)),
            ok(0, 5, json!(2)),
            invoke(1, 6, "fib", json!(3)),
            fail(1, 7),
        ];
        let a = analyze(&after);
        assert_eq!(a.violations.len(), 1);
        assert!(a.violations[0].contains("then op 1"), "{:?}", a.violations);
    }
}
