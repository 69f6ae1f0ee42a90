//! The batch built-ins: maps over one slice of a text file (`wordcount`, `linecount`, `grep`)
//! and associative reduces over a list of values (`merge_counts`, `sum`, `concat`).
//!
//! A map receives a [`SliceArgs`]: the hash of the slice's text, stored in the cluster by the
//! job (`ship = true`; the map fetches it as the memoized value of `blob([hash])`), the text
//! itself (direct calls), or the path, byte range and hash of the slice (`ship = false`), in
//! which case the agent reads the bytes itself and refuses when they no longer hash to what
//! the job saw.

use crate::functions::{Ctx, Functions, fail};
use mozen_model::{Code, TaskError, codes};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use std::collections::BTreeMap;

/// Error code of a slice whose file changed since the job was planned.
pub const STALE_SLICE: &str = Code::StaleSlice.as_str();

/// One slice of one file: the argument of every map function.
///
/// The request key is the content hash of these fields, so it is determined by
/// (function, file content hash, line range): re-running a job redoes only changed files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceArgs {
    /// The file, as the job named it (absolute path).
    pub file: String,
    /// Lines `[start, end)`, 0-based.
    pub lines: [u64; 2],
    /// blake3 of the whole file when the job was planned.
    pub file_hash: String,
    /// The slice's text when it travels in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// blake3 (hex) of the slice's text, stored in the cluster as `blob([hash])`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Byte range `[start, end)` of the slice in the file, when the agent reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    /// blake3 of the slice's bytes, checked by the agent that reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_hash: Option<String>,
    /// Extra parameters of the map function (e.g. `pattern` for `grep`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl SliceArgs {
    /// `file:first-last` (1-based, inclusive) for reports.
    pub fn label(&self) -> String {
        format!(
            "{}:{}-{}",
            self.file,
            self.lines[0] + 1,
            self.lines[1].max(self.lines[0] + 1)
        )
    }

    /// The slice's text from wherever it is: the cluster's stored blobs (checked against the
    /// hash), the request itself, or the shared filesystem.
    pub async fn load(self, ctx: &Ctx) -> Result<String, TaskError> {
        let Some(hash) = self.blob.clone() else {
            return blocking(move || self.text()).await;
        };
        let text: String = ctx.call(super::job::BLOB, [&hash]).await?;
        let label = self.label();
        blocking(move || {
            let got = blake3::hash(text.as_bytes()).to_hex();
            if got.as_str() != hash {
                return Err(fail(format!(
                    "slice {label}: the stored text hashes to {} instead of {}",
                    &got.as_str()[..12],
                    &hash[..12.min(hash.len())]
                )));
            }
            Ok(text)
        })
        .await
    }

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
            .map_err(|e| fail(format!("slice {}: cannot read: {e}", self.label())))?;
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
            fail(format!(
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

fn bad(function: &str, e: String) -> TaskError {
    TaskError::new(codes::BAD_ARGUMENTS, format!("{function}: {e}"))
}

/// Runs CPU-bound `f` off the async workers.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, TaskError> + Send + 'static,
) -> Result<R, TaskError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| fail(format!("batch function panicked: {e}")))?
}

/// Registers the batch built-ins.
pub fn register(f: &mut Functions) {
    const SLICE: &str = "{\"file\", \"lines\": [start, end], \"file_hash\", \"blob\" | \"text\" | \"bytes\" + \"slice_hash\"}";
    f.register("wordcount", SLICE, |c: Ctx, s: SliceArgs| async move {
        let text = s.load(&c).await?;
        blocking(move || Ok(wordcount(&text))).await
    });
    f.register("linecount", SLICE, |c: Ctx, s: SliceArgs| async move {
        let text = s.load(&c).await?;
        Ok(text.lines().count() as u64)
    });
    f.register(
        "grep",
        "a slice with \"params\": {\"pattern\": string}",
        |c: Ctx, s: SliceArgs| async move {
            let Some(pattern) = s.params.get("pattern").and_then(Value::as_str) else {
                return Err(bad(
                    "grep",
                    "params.pattern (a string) is missing; set [process] args = { pattern = \"...\" }".into(),
                ));
            };
            let pattern = pattern.to_string();
            let (file, first) = (s.file.clone(), s.lines[0]);
            let text = s.load(&c).await?;
            blocking(move || Ok(grep(&file, first, &text, &pattern))).await
        },
    );
    f.register(
        "merge_counts",
        "list of {word: count} maps",
        |_c: Ctx, maps: Vec<BTreeMap<String, u64>>| async move {
            blocking(move || merge_counts(maps).map_err(|e| bad("merge_counts", e))).await
        },
    );
    f.register(
        "sum",
        "list of numbers",
        |_c: Ctx, xs: Vec<Number>| async move { sum(&xs).map_err(|e| bad("sum", e)) },
    );
    f.register(
        "concat",
        "list of lists or list of strings",
        |_c: Ctx, parts: Vec<Value>| async move { concat(parts).map_err(|e| bad("concat", e)) },
    );
    super::job::register(f);
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
