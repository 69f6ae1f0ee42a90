//! Bad input to the store's decoders: arbitrary bytes and damaged encodings of real commands
//! and log entries must decode to a value or to an error, never panic or allocate without
//! bound (postcard reads lengths from the input, and serde caps what a length may reserve).
//!
//! The default suite runs a few hundred cases; the `#[ignore]`d `*_long` versions run 200,000
//! each: `cargo nextest run -p mozen-store --run-ignored only -E 'test(bad_input)'`.

use crate::golden::fixtures;
use mozen_store::{ClusterState, Command, Entry};
use openraft::{EntryPayload, LogId};
use proptest::prelude::*;

/// Decodes `bytes` as every store type read from disk or the wire; returns how many decoded.
fn decode_all(bytes: &[u8]) -> usize {
    let mut ok = 0;
    ok += postcard::from_bytes::<Command>(bytes).is_ok() as usize;
    ok += postcard::from_bytes::<Entry>(bytes).is_ok() as usize;
    ok += postcard::from_bytes::<ClusterState>(bytes).is_ok() as usize;
    ok
}

/// The encoded fixtures of every Command variant, alone and inside a log entry.
fn valid_encodings() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (_, cmd)) in fixtures().into_iter().enumerate() {
        out.push(postcard::to_allocvec(&cmd).unwrap());
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 10 + i as u64),
            payload: EntryPayload::Normal(cmd),
        };
        out.push(postcard::to_allocvec(&entry).unwrap());
    }
    out
}

/// A damage to a valid encoding.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    /// A huge varint where a length or count may be.
    HugeLength(usize),
}

fn damage(bytes: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = |i: usize| if b.is_empty() { 0 } else { i % b.len() };
    match *d {
        Damage::Truncate(n) => b.truncate(at(n)),
        Damage::Flip(i, x) => {
            let i = at(i);
            if let Some(v) = b.get_mut(i) {
                *v ^= x.max(1);
            }
        }
        Damage::Insert(i, x) => {
            let i = at(i);
            b.insert(i, x);
        }
        Damage::HugeLength(i) => {
            let i = at(i);
            b.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
    }
    b
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Damage::Insert(i, x)),
        any::<usize>().prop_map(Damage::HugeLength),
    ]
}

fn check_damaged(which: usize, damages: &[Damage]) {
    let all = valid_encodings();
    let mut b = all[which % all.len()].clone();
    for d in damages {
        b = damage(&b, d);
    }
    decode_all(&b);
}

#[test]
fn valid_encodings_decode() {
    for b in valid_encodings() {
        assert!(decode_all(&b) >= 1);
    }
}

#[test]
fn a_huge_length_is_an_error_not_an_allocation() {
    // A Submit whose request count claims 2^32 - 1 entries, then nothing.
    let submit = postcard::to_allocvec(&fixtures()[3].1).unwrap();
    let mut b = submit[..1].to_vec();
    b.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let e = postcard::from_bytes::<Command>(&b).unwrap_err();
    assert!(!e.to_string().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bad_input_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn bad_input_damaged_commands_never_panic(
        which in any::<usize>(),
        damages in prop::collection::vec(damage_strategy(), 1..4),
    ) {
        check_damaged(which, &damages);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200_000))]

    #[test]
    #[ignore = "long: run with --run-ignored"]
    fn bad_input_arbitrary_bytes_never_panic_long(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }

    #[test]
    #[ignore = "long: run with --run-ignored"]
    fn bad_input_damaged_commands_never_panic_long(
        which in any::<usize>(),
        damages in prop::collection::vec(damage_strategy(), 1..8),
    ) {
        check_damaged(which, &damages);
    }
}
