//! The batch built-ins' side that needs no cluster: the argument of every map ([`SliceArgs`]),
//! the pure work of the maps over one slice of a text file (`wordcount`, `linecount`, `grep`)
//! and of the associative reduces over a list of values (`merge_counts`, `sum`, `concat`), and
//! [`run_local`], which runs them in this process (`mozen plan` measures a map that way, and a
//! local run is the baseline a cluster run is compared with).
//!
//! The agent registers the same work as its functions (`mozen_agent::batch::builtins`). A map
//! there receives a [`SliceArgs`]: the hash of the slice's text, stored in the cluster by the
//! job (`ship = true`; the map fetches it as the memoized value of `blob([hash])`), the text
//! itself (direct calls), or the path, byte range and hash of the slice (`ship = false`), in
//! which case the agent reads the bytes itself and refuses when they no longer hash to what
//! the job saw.

use super::slice::BLOB;
pub use super::slice::SliceArgs;
use mozen_model::{Code, TaskError, codes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};
use std::collections::BTreeMap;

/// Error code of a slice whose file changed since the job was planned.
pub const STALE_SLICE: &str = Code::StaleSlice.as_str();

impl SliceArgs {
    /// The slice's text when it is in the request or on the shared filesystem (checked).
    pub fn text(&self) -> Result<String, TaskError> {
        if let Some(t) = &self.text {
            return Ok(t.clone());
        }
        let (Some([a, b]), Some(want)) = (self.bytes, &self.slice_hash) else {
            return Err(TaskError::new(
                codes::BAD_ARGUMENTS,
                format!(
                    "slice {}: neither text nor bytes + slice_hash given",
                    self.label()
                ),
            ));
        };
        let bytes = read_range(&self.file, a, b)
            .map_err(|e| failed(format!("slice {}: cannot read: {e}", self.label())))?;
        let got = blake3::hash(&bytes).to_hex().to_string();
        if &got != want {
            return Err(TaskError::new(
                STALE_SLICE,
                format!(
                    "slice {}: bytes {a}-{b} hash {} but the job expected {}: the file changed since the job was planned; run the job again",
                    self.label(),
                    &got[..12],
                    &want[..12.min(want.len())]
                ),
            ));
        }
        String::from_utf8(bytes).map_err(|e| {
            failed(format!(
                "slice {}: not UTF-8 text at byte {} of the slice",
                self.label(),
                e.utf8_error().valid_up_to()
            ))
        })
    }
}

fn read_range(path: &str, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Counts words: maximal runs of alphanumeric characters, lowercased.
pub fn wordcount(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        match counts.get_mut(&w) {
            Some(n) => *n += 1,
            None => {
                counts.insert(w, 1);
            }
        }
    }
    counts
}

/// Lines of `text` containing `pattern`, as `file:line: text` (1-based line numbers).
pub fn grep(file: &str, first_line: u64, text: &str, pattern: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(pattern))
        .map(|(i, l)| format!("{file}:{}: {l}", first_line + i as u64 + 1))
        .collect()
}

/// Sums maps key by key.
pub fn merge_counts(maps: Vec<BTreeMap<String, u64>>) -> Result<BTreeMap<String, u64>, String> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            let slot = out.entry(k).or_default();
            *slot = slot
                .checked_add(v)
                .ok_or_else(|| "a count overflows u64".to_string())?;
        }
    }
    Ok(out)
}

/// Sums numbers: an integer while every input is a non-negative integer, else a float.
pub fn sum(xs: &[Number]) -> Result<Number, String> {
    if let Some(ints) = xs.iter().map(Number::as_u64).collect::<Option<Vec<u64>>>() {
        return ints
            .into_iter()
            .try_fold(0u64, u64::checked_add)
            .map(Number::from)
            .ok_or_else(|| "the sum overflows u64".into());
    }
    let total: f64 = xs.iter().filter_map(Number::as_f64).sum();
    Number::from_f64(total).ok_or_else(|| format!("the sum {total} is not a finite number"))
}

/// Concatenates lists (into one list) or strings (into one string).
pub fn concat(parts: Vec<Value>) -> Result<Value, String> {
    if parts.iter().all(Value::is_string) {
        return Ok(Value::String(
            parts.iter().filter_map(Value::as_str).collect(),
        ));
    }
    let mut out = Vec::new();
    for (i, p) in parts.into_iter().enumerate() {
        match p {
            Value::Array(a) => out.extend(a),
            other => return Err(format!("item {i} is {other}, not a list")),
        }
    }
    Ok(Value::Array(out))
}

/// Arguments a built-in cannot work with (`MZ-BAD-ARGUMENTS`).
pub fn bad(function: &str, e: String) -> TaskError {
    TaskError::new(codes::BAD_ARGUMENTS, format!("{function}: {e}"))
}

/// The argument shapes of the built-ins, for the errors of arguments that do not match.
pub const SLICE_SHAPE: &str = "{\"file\", \"lines\": [start, end], \"file_hash\", \"blob\" | \"text\" | \"bytes\" + \"slice_hash\"}";
pub const GREP_SHAPE: &str = "a slice with \"params\": {\"pattern\": string}";
pub const COUNTS_SHAPE: &str = "list of {word: count} maps";
pub const NUMBERS_SHAPE: &str = "list of numbers";
pub const PARTS_SHAPE: &str = "list of lists or list of strings";

/// The batch built-ins, maps then reduces.
pub const NAMES: [&str; 6] = [
    "wordcount",
    "linecount",
    "grep",
    "merge_counts",
    "sum",
    "concat",
];

/// The `pattern` parameter of a `grep` slice.
pub fn grep_pattern(s: &SliceArgs) -> Result<String, TaskError> {
    match s.params.get("pattern").and_then(Value::as_str) {
        Some(p) => Ok(p.to_string()),
        None => Err(bad(
            "grep",
            "params.pattern (a string) is missing; set [process] args = { pattern = \"...\" }"
                .into(),
        )),
    }
}

/// Runs the batch built-in `function` on `args` in this process, on a blocking thread, as an
/// agent would but without a cluster: a map's slice carries its text or names a file this
/// machine reads. `None` when `function` is not a batch built-in.
pub async fn run_local(function: &str, args: Value) -> Option<Result<Value, TaskError>> {
    if !NAMES.contains(&function) {
        return None;
    }
    let name = function.to_string();
    let ran = tokio::task::spawn_blocking(move || run_here(&name, args)).await;
    Some(ran.unwrap_or_else(|e| Err(failed(format!("{function} panicked: {e}")))))
}

fn run_here(function: &str, args: Value) -> Result<Value, TaskError> {
    let value = match function {
        "wordcount" => {
            let s: SliceArgs = decode(function, SLICE_SHAPE, args)?;
            json(wordcount(&local_text(&s)?))
        }
        "linecount" => {
            let s: SliceArgs = decode(function, SLICE_SHAPE, args)?;
            json(local_text(&s)?.lines().count() as u64)
        }
        "grep" => {
            let s: SliceArgs = decode(function, GREP_SHAPE, args)?;
            let pattern = grep_pattern(&s)?;
            json(grep(&s.file, s.lines[0], &local_text(&s)?, &pattern))
        }
        "merge_counts" => json(
            merge_counts(decode(function, COUNTS_SHAPE, args)?).map_err(|e| bad(function, e))?,
        ),
        "sum" => {
            let xs: Vec<Number> = decode(function, NUMBERS_SHAPE, args)?;
            json(sum(&xs).map_err(|e| bad(function, e))?)
        }
        "concat" => concat(decode(function, PARTS_SHAPE, args)?).map_err(|e| bad(function, e))?,
        other => {
            return Err(TaskError::new(
                codes::UNKNOWN_FUNCTION,
                format!("no batch built-in named '{other}'"),
            ));
        }
    };
    Ok(value)
}

/// A slice's text in this process: in the request or on this machine's filesystem; a stored
/// blob is out of reach without a cluster.
fn local_text(s: &SliceArgs) -> Result<String, TaskError> {
    if s.text.is_none() && s.blob.is_some() {
        return Err(failed(format!(
            "{BLOB}: a local run cannot call the cluster"
        )));
    }
    s.text()
}

fn decode<A: DeserializeOwned>(function: &str, shape: &str, args: Value) -> Result<A, TaskError> {
    serde_json::from_value(args.clone()).map_err(|e| {
        TaskError::new(
            codes::BAD_ARGUMENTS,
            format!("{function}: arguments {args} do not match the expected shape {shape}: {e}"),
        )
    })
}

fn json(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A failure of the function itself (`MZ-FUNCTION-FAILED`).
fn failed(message: String) -> TaskError {
    TaskError::coded(Code::FunctionFailed, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn counts(v: Value) -> BTreeMap<String, u64> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn merge_counts_holds_the_design_example() {
        let merged = merge_counts(vec![
            counts(json!({"blue": 2, "red": 4, "black": 5})),
            counts(json!({"blue": 7, "brown": 3})),
            counts(json!({"black": 6})),
        ])
        .unwrap();
        assert_eq!(
            merged,
            counts(json!({"blue": 9, "red": 4, "black": 11, "brown": 3}))
        );
    }

    #[test]
    fn merge_counts_is_associative() {
        let a = counts(json!({"x": 1, "y": 2}));
        let b = counts(json!({"y": 3}));
        let c = counts(json!({"z": 4, "x": 5}));
        let left = merge_counts(vec![
            merge_counts(vec![a.clone(), b.clone()]).unwrap(),
            c.clone(),
        ]);
        let right = merge_counts(vec![a, merge_counts(vec![b, c]).unwrap()]);
        assert_eq!(left, right);
        assert!(
            merge_counts(vec![
                counts(json!({"x": u64::MAX})),
                counts(json!({"x": 1}))
            ])
            .is_err()
        );
    }

    #[test]
    fn wordcount_splits_on_non_alphanumerics_and_lowercases() {
        let c = wordcount("The blue bird, the RED bird.\n\nblue-bird 42");
        assert_eq!(
            c,
            counts(json!({"the": 2, "blue": 2, "bird": 3, "red": 1, "42": 1}))
        );
        assert!(wordcount("  \n,;").is_empty());
    }

    #[test]
    fn grep_reports_file_and_line() {
        let hits = grep("a.txt", 10, "blue\nred\nblue bird\n", "blue");
        assert_eq!(hits, vec!["a.txt:11: blue", "a.txt:13: blue bird"]);
    }

    #[test]
    fn sum_keeps_integers_and_falls_back_to_floats() {
        let n = |v: Value| serde_json::from_value::<Number>(v).unwrap();
        assert_eq!(
            sum(&[n(json!(1)), n(json!(2)), n(json!(39))]).unwrap(),
            n(json!(42))
        );
        assert_eq!(sum(&[n(json!(1)), n(json!(0.5))]).unwrap(), n(json!(1.5)));
        assert_eq!(sum(&[]).unwrap(), n(json!(0)));
        assert!(sum(&[n(json!(u64::MAX)), n(json!(1))]).is_err());
    }

    #[test]
    fn concat_joins_lists_or_strings() {
        assert_eq!(
            concat(vec![json!([1, 2]), json!([]), json!([3])]).unwrap(),
            json!([1, 2, 3])
        );
        assert_eq!(concat(vec![json!("ab"), json!("c")]).unwrap(), json!("abc"));
        assert!(
            concat(vec![json!([1]), json!(2)])
                .unwrap_err()
                .contains("item 1")
        );
    }

    #[test]
    fn a_read_slice_is_refused_when_its_bytes_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        let s = SliceArgs {
            file: path.display().to_string(),
            lines: [1, 2],
            file_hash: "x".into(),
            text: None,
            blob: None,
            bytes: Some([4, 8]),
            slice_hash: Some(blake3::hash(b"two\n").to_hex().to_string()),
            params: Value::Null,
        };
        assert_eq!(s.text().unwrap(), "two\n");
        std::fs::write(&path, "one\nTWO\nthree\n").unwrap();
        let e = s.text().unwrap_err();
        assert_eq!(e.code, STALE_SLICE);
        assert!(e.message.contains("f.txt:2-2"), "{}", e.message);
    }
}
