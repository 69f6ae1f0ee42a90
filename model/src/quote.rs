//! Quoting user data in what readers get (error messages, error chains): never more than a
//! bounded length, with the whole size and a hash to recognise it by, so that one large
//! argument or message cannot make every later reply too large to send.

/// Most bytes of a request's arguments quoted in an error message or chain.
pub const QUOTED_ARGS_BYTES: usize = 1024;

/// Most bytes of a request's arguments shown in listings (requests, trees, the queue, the
/// console's feed).
pub const SHOWN_ARGS_BYTES: usize = 4096;

/// Most bytes of a function's own error message kept in its request's outcome.
pub const ERROR_MESSAGE_BYTES: usize = 4096;

/// `text` as a reader gets it: whole when it is at most `max` bytes, otherwise its first
/// `max` bytes (cut at a character boundary) followed by `... (N bytes, blake3 H)`, `H` being
/// the first 16 hex digits of the whole text's hash.
pub fn quote(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let hash = blake3::hash(text.as_bytes()).to_hex();
    format!(
        "{}... ({} bytes, blake3 {})",
        &text[..end],
        text.len(),
        &hash[..16]
    )
}

/// Bytes (expected to be UTF-8 JSON) quoted as [`quote`] does.
pub fn quote_bytes(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => quote(text, max),
        // Not UTF-8: quote the head without converting the whole.
        Err(_) => {
            let hash = blake3::hash(bytes).to_hex();
            format!(
                "{}... ({} bytes, blake3 {})",
                String::from_utf8_lossy(&bytes[..max]),
                bytes.len(),
                &hash[..16]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_whole_and_long_text_is_cut_with_its_size_and_hash() {
        assert_eq!(quote("[1,2]", 16), "[1,2]");
        let long = "x".repeat(5_000);
        let q = quote(&long, 100);
        assert!(q.starts_with(&"x".repeat(100)), "{q}");
        assert!(q.contains("... (5000 bytes, blake3 "), "{q}");
        assert!(q.len() < 100 + 50, "{}", q.len());
        // Another text of the same length has another hash.
        assert_ne!(q, quote(&"y".repeat(5_000), 100));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let text = "é".repeat(100); // 2 bytes each
        let q = quote(&text, 5);
        assert!(q.starts_with("éé..."), "{q}");
        assert_eq!(quote_bytes(&[0xff; 8], 4).chars().next(), Some('\u{fffd}'));
    }
}
