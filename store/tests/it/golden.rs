//! The wire form of `Command` must not change silently: a rolling upgrade mixes versions.

use mozen_model::{NodeState, Outcome, RequestKey, RetryPolicy, TaskError};
use mozen_store::*;

fn fixtures() -> Vec<(&'static str, Command)> {
    let key = RequestKey([7u8; 32]);
    vec![
        (
            "set_node_state",
            Command::SetNodeState {
                id: 3,
                state: NodeState::Draining,
                at: 1000,
            },
        ),
        (
            "submit",
            Command::Submit {
                requests: vec![NewRequest {
                    key,
                    function: "fib".into(),
                    args: b"90".to_vec(),
                    parent: None,
                    priority: 1,
                    retry: RetryPolicy::default(),
                    no_cache: false,
                }],
                at: 5,
            },
        ),
        (
            "assign",
            Command::Assign {
                assignments: vec![Assignment {
                    key,
                    node: 2,
                    attempt: 1,
                }],
                at: 6,
            },
        ),
        (
            "complete_error",
            Command::Complete {
                completions: vec![Completion {
                    key,
                    node: 2,
                    attempt: 1,
                    outcome: Outcome::Error(TaskError::new("MZ-FUNCTION-FAILED", "boom")),
                    duration_ms: 4,
                }],
                at: 7,
            },
        ),
        (
            "batch_cancel",
            Command::Batch(vec![
                Command::Cancel { key, at: 8 },
                Command::RemoveNode { id: 9, at: 9 },
            ]),
        ),
    ]
}

/// Regenerate with MOZEN_UPDATE_GOLDEN=1 only when a change of the wire form is intended.
#[test]
fn command_encodings_match_golden_fixtures() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/commands.golden");
    let actual: String = fixtures()
        .iter()
        .map(|(name, c)| {
            format!(
                "{name} {}\n",
                hex::encode(postcard::to_allocvec(c).unwrap())
            )
        })
        .collect();
    if std::env::var_os("MOZEN_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("golden fixture file");
    assert_eq!(actual, expected, "the postcard encoding of Command changed");
    for (line, (_, c)) in expected.lines().zip(fixtures()) {
        let bytes = hex::decode(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), c);
    }
}
