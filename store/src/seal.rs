//! Checksummed records: every value the store keeps in sled ends with a CRC32 of its tree, its
//! key and its payload, checked on every read.
//!
//! sled checks its own log messages, but its recovery silently drops what follows a bad one
//! (see [`crate::mark`]) and a page read back later is only as good as the check sled did when
//! writing it. The seal catches what gets past sled, and a value found under another key or
//! in another tree (the key and tree are in the sum). A value that fails its seal is
//! [`StoreError::Corrupt`], naming the tree, the key and what was found; nothing is decoded
//! from it.

use crate::error::StoreError;

/// Bytes the seal adds to a value.
pub const SEAL_LEN: usize = 4;

fn sum(tree: &str, key: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(tree.as_bytes());
    h.update(&[0]);
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(payload);
    h.finalize()
}

/// Appends the seal of (`tree`, `key`, `payload`) to `payload`.
pub fn seal(tree: &str, key: &[u8], mut payload: Vec<u8>) -> Vec<u8> {
    let s = sum(tree, key, &payload);
    payload.extend_from_slice(&s.to_le_bytes());
    payload
}

/// Whether `value` carries a valid seal for `tree` and `key` (used to tell records already
/// converted from unsealed ones when an older data dir is upgraded).
pub fn is_sealed(tree: &str, key: &[u8], value: &[u8]) -> bool {
    value
        .split_last_chunk::<SEAL_LEN>()
        .is_some_and(|(payload, stored)| u32::from_le_bytes(*stored) == sum(tree, key, payload))
}

/// The payload of a sealed value, once its seal checks out.
pub fn unseal<'a>(tree: &'static str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let Some((payload, stored)) = value.split_last_chunk::<SEAL_LEN>() else {
        return Err(StoreError::Corrupt {
            tree,
            key: describe_key(key),
            reason: format!(
                "a sealed value has at least {SEAL_LEN} bytes, this one {}",
                value.len()
            ),
        });
    };
    let stored = u32::from_le_bytes(*stored);
    let expected = sum(tree, key, payload);
    if stored != expected {
        return Err(StoreError::Corrupt {
            tree,
            key: describe_key(key),
            reason: format!(
                "checksum mismatch: the {}-byte value carries crc32 {stored:08x}, its content sums to {expected:08x}",
                value.len()
            ),
        });
    }
    Ok(payload)
}

/// A key as an operator reads it: a log index, a name, or hex.
pub fn describe_key(key: &[u8]) -> String {
    if let Ok(b) = <[u8; 8]>::try_from(key) {
        return format!("index {}", u64::from_be_bytes(b));
    }
    match std::str::from_utf8(key) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) => s.to_string(),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_and_any_flipped_bit_is_caught() {
        let v = seal("t", b"k", b"payload".to_vec());
        assert_eq!(unseal("t", b"k", &v).ok(), Some(&b"payload"[..]));
        for byte in 0..v.len() {
            for bit in 0..8 {
                let mut bad = v.clone();
                bad[byte] ^= 1 << bit;
                assert!(unseal("t", b"k", &bad).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn a_value_under_another_key_or_tree_or_cut_short_is_refused() {
        let v = seal("t", b"k", b"payload".to_vec());
        assert!(unseal("t", b"other", &v).is_err());
        assert!(unseal("u", b"k", &v).is_err());
        assert!(unseal("t", b"k", &v[..v.len() - 1]).is_err());
        assert!(unseal("t", b"k", &[1, 2]).is_err());
        let msg = unseal("t", &7u64.to_be_bytes(), &v)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("index 7") && msg.contains("checksum"), "{msg}");
    }
}
