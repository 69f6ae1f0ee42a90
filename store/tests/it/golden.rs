//! Golden encodings: the postcard bytes of fixed Commands must not change, or a rolling
//! upgrade would misread the log. A failure here means the wire form of `Command` (or a type
//! inside it) changed: add new variants at the end instead. To accept an intended change of a
//! *new* fixture, run with `MOZEN_BLESS=1` and commit `tests/it/fixtures/commands.hex`.

use crate::common::*;
use mozen_model::{ChainLink, NodeRole, NodeState, Outcome, RetryPolicy, TaskError, codes};
use mozen_store::{Assignment, Command, Completion, ForgetSelector, Memo, NewRequest, Run};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) fn fixtures() -> Vec<(&'static str, Command)> {
    let mut labelled = node(7, 6);
    labelled.labels.insert("zone".into(), "a".into());
    vec![
        (
            "register_node",
            Command::RegisterNode {
                node: labelled,
                at: 1_700_000_000_000,
            },
        ),
        (
            "set_node_state",
            Command::SetNodeState {
                id: 7,
                state: NodeState::Draining,
                at: 5,
            },
        ),
        ("remove_node", Command::RemoveNode { id: 7, at: 6 }),
        (
            "submit",
            Command::Submit {
                requests: vec![NewRequest {
                    key: key(1),
                    function: "fib".into(),
                    args: b"[10]".to_vec(),
                    parent: Some(key(2)),
                    priority: -3,
                    retry: RetryPolicy {
                        retries: 2,
                        backoff_ms: 250,
                        max_attempts: 4,
                    },
                    no_cache: true,
                }],
                at: 7,
            },
        ),
        (
            "assign",
            Command::Assign {
                assignments: vec![Assignment {
                    key: key(1),
                    node: 7,
                    attempt: 2,
                }],
                at: 8,
            },
        ),
        (
            "complete",
            Command::Complete {
                completions: vec![
                    Completion {
                        key: key(1),
                        node: 7,
                        attempt: 2,
                        outcome: Outcome::Value(b"55".to_vec()),
                        duration_ms: 12,
                    },
                    Completion {
                        key: key(3),
                        node: 7,
                        attempt: 1,
                        outcome: Outcome::Error(TaskError {
                            code: codes::CHILD_FAILED.into(),
                            message: "boom".into(),
                            node: Some(7),
                            chain: vec![ChainLink {
                                key: key(4),
                                function: "child".into(),
                                args: "[1]".into(),
                                node: None,
                            }],
                        }),
                        duration_ms: 0,
                    },
                ],
                at: 9,
            },
        ),
        (
            "requeue",
            Command::Requeue {
                node: 7,
                keys: Some(vec![key(1)]),
                reason: "lease expired".into(),
                at: 10,
            },
        ),
        (
            "cancel",
            Command::Cancel {
                key: key(1),
                at: 11,
            },
        ),
        (
            "forget",
            Command::Forget {
                selector: ForgetSelector::Function("fib".into()),
                at: 12,
            },
        ),
        (
            "forget_oldest",
            Command::Forget {
                selector: ForgetSelector::Oldest(1000),
                at: 13,
            },
        ),
        (
            "batch",
            Command::Batch(vec![
                Command::RemoveNode { id: 1, at: 14 },
                Command::Cancel {
                    key: key(5),
                    at: 14,
                },
            ]),
        ),
        (
            "set_node_role",
            Command::SetNodeRole {
                id: 7,
                role: NodeRole::Learner,
                at: 15,
            },
        ),
        (
            "event",
            Command::Event {
                kind: "note".into(),
                node: None,
                message: "hello".into(),
                at: 16,
            },
        ),
        (
            "park",
            Command::Park {
                key: key(1),
                node: 7,
                attempt: 2,
                parked: true,
                at: 17,
            },
        ),
        (
            "memoize",
            Command::Memoize {
                memos: vec![Memo {
                    key: key(3),
                    function: "blob".into(),
                    args: b"[\"ab\"]".to_vec(),
                    value: b"\"text\"".to_vec(),
                }],
                at: 18,
            },
        ),
        (
            "ran",
            Command::Ran {
                runs: vec![Run {
                    request: NewRequest {
                        key: key(4),
                        function: "noop".into(),
                        args: b"[1]".to_vec(),
                        parent: Some(key(5)),
                        priority: 0,
                        retry: RetryPolicy::default(),
                        no_cache: false,
                    },
                    node: 2,
                    duration_ms: 0,
                    value: b"[1]".to_vec(),
                }],
                at: 19,
            },
        ),
        (
            "submit_from",
            Command::SubmitFrom {
                client: "team-a".into(),
                requests: vec![NewRequest {
                    key: key(6),
                    function: "noop".into(),
                    args: b"[2]".to_vec(),
                    parent: None,
                    priority: 1,
                    retry: RetryPolicy::default(),
                    no_cache: false,
                }],
                at: 20,
            },
        ),
        (
            "cancel_many",
            Command::CancelMany {
                keys: vec![key(1), key(2)],
                at: 21,
            },
        ),
    ]
}

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/commands.hex")
}

fn committed() -> BTreeMap<String, String> {
    std::fs::read_to_string(fixture_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, h)| (n.to_string(), h.trim().to_string()))
        .collect()
}

#[test]
fn command_encodings_match_committed_fixtures() {
    let committed = committed();
    let current: Vec<(&str, String)> = fixtures()
        .into_iter()
        .map(|(name, cmd)| {
            (
                name,
                hex::encode(postcard::to_allocvec(&cmd).expect("encodes")),
            )
        })
        .collect();
    if std::env::var_os("MOZEN_BLESS").is_some() {
        let mut text =
            String::from("# postcard encodings of fixed Commands; see tests/it/golden.rs\n");
        for (name, hex) in &current {
            if let Some(old) = committed.get(*name) {
                assert_eq!(
                    old, hex,
                    "MOZEN_BLESS does not rewrite existing fixture '{name}'"
                );
            }
            text.push_str(&format!("{name} {hex}\n"));
        }
        std::fs::write(fixture_path(), text).expect("write fixtures");
        return;
    }
    for (name, hex) in &current {
        let Some(want) = committed.get(*name) else {
            panic!("no committed fixture '{name}'; run with MOZEN_BLESS=1 to add it");
        };
        assert_eq!(
            want, hex,
            "the wire form of Command '{name}' changed; Commands are append-only"
        );
    }
    // And the fixtures decode back to the same commands.
    for (name, cmd) in fixtures() {
        let bytes = hex::decode(&committed[name]).expect("fixture is hex");
        let back: Command = postcard::from_bytes(&bytes).expect("fixture decodes");
        assert_eq!(back, cmd, "fixture '{name}' decodes");
    }
}
