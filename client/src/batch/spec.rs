//! The work spec: what a batch job reads, how it slices, which map and reduce it runs, and what
//! it does when a slice fails. Parsed from TOML (errors carry line and column) or built in Rust,
//! then validated as a whole before anything is submitted.

use mozen_model::Code;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// How many lines go into one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceLines {
    /// Sized from the cluster's free slots and the measured per-line cost.
    Auto,
    Fixed(u64),
}

/// What happens when a map fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorPolicy {
    /// Retry `retries` times, then fail the job.
    Retry,
    /// Retry `retries` times, then leave the slice out and report it.
    Skip,
    /// Stop the job at the first failure.
    Fail,
}

impl ErrorPolicy {
    pub fn name(self) -> &'static str {
        match self {
            ErrorPolicy::Retry => "retry",
            ErrorPolicy::Skip => "skip",
            ErrorPolicy::Fail => "fail",
        }
    }
}

/// A batch job as written; the same structure as the TOML file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// Globs or paths, relative to `base_dir`.
    pub files: Vec<String>,
    /// true: slice text travels in the request; false: agents read the files (shared filesystem).
    pub ship: bool,
    pub lines: SliceLines,
    pub map: String,
    /// Extra parameters handed to every map (`[process] args`).
    pub map_args: Value,
    pub reduce: String,
    /// How many values one reduce request combines.
    pub fan_in: usize,
    pub policy: ErrorPolicy,
    pub retries: u32,
    /// Where relative paths start.
    pub base_dir: PathBuf,
    /// Line and column of each field in the TOML source, for errors found after parsing.
    pub locations: BTreeMap<String, (usize, usize)>,
    /// The file the spec came from, if any.
    pub source: Option<PathBuf>,
}

impl JobSpec {
    /// A job mapping `map` over `files` and reducing with `reduce`, with the defaults of the
    /// TOML form (ship, auto slicing, retry twice, fan-in 16).
    pub fn new(map: &str, reduce: &str, files: &[&str]) -> JobSpec {
        JobSpec {
            name: "job".into(),
            files: files.iter().map(|s| s.to_string()).collect(),
            ship: true,
            lines: SliceLines::Auto,
            map: map.into(),
            map_args: Value::Null,
            reduce: reduce.into(),
            fan_in: DEFAULT_FAN_IN,
            policy: ErrorPolicy::Retry,
            retries: 2,
            base_dir: PathBuf::from("."),
            locations: BTreeMap::new(),
            source: None,
        }
    }

    /// Parses a TOML job file; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: Some(path.to_path_buf()),
            at: None,
            message: format!("cannot read the job file: {e}"),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut spec = Self::parse(&text, base).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        spec.source = Some(path.to_path_buf());
        if spec.name.is_empty() {
            spec.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(spec)
    }

    /// Parses TOML text.
    pub fn parse(text: &str, base_dir: &Path) -> Result<JobSpec, SpecError> {
        let raw: RawJob = toml::from_str(text).map_err(|e| SpecError {
            file: None,
            at: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut locations = BTreeMap::new();
        let mut at = |field: &str, span: std::ops::Range<usize>| {
            let lc = line_col(text, span.start);
            locations.insert(field.to_string(), lc);
            lc
        };
        let err = |lc: (usize, usize), message: String| SpecError {
            file: None,
            at: Some(lc),
            message,
        };
        let Some(data) = raw.data else {
            return Err(err(
                (1, 1),
                "missing [data] table with files = [\"...\"]".into(),
            ));
        };
        let files_at = at("data.files", data.files.span());
        let files: Vec<String> = data
            .files
            .into_inner()
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                at(&format!("data.files[{i}]"), f.span());
                f.into_inner()
            })
            .collect();
        if files.is_empty() {
            return Err(err(
                files_at,
                "data.files is empty: name at least one file or glob".into(),
            ));
        }
        let lines = match raw.slice.and_then(|s| s.lines) {
            None => SliceLines::Auto,
            Some(l) => {
                let lc = at("slice.lines", l.span());
                match l.into_inner() {
                    toml::Value::String(s) if s == "auto" => SliceLines::Auto,
                    toml::Value::Integer(n) if n > 0 => SliceLines::Fixed(n as u64),
                    other => {
                        return Err(err(
                            lc,
                            format!(
                                "slice.lines: expected \"auto\" or a positive number of lines, got {other}"
                            ),
                        ));
                    }
                }
            }
        };
        let missing = |table: &str| {
            err(
                (1, 1),
                format!("missing [{table}] table with function = \"...\""),
            )
        };
        let Some(process) = raw.process else {
            return Err(missing("process"));
        };
        let map = named(&mut at, "process.function", process.function)?;
        let map_args = match process.args {
            None => Value::Null,
            Some(a) => serde_json::to_value(a.into_inner()).unwrap_or(Value::Null),
        };
        let Some(reduce) = raw.reduce else {
            return Err(missing("reduce"));
        };
        let reduce_fn = named(&mut at, "reduce.function", reduce.function)?;
        let fan_in = in_range(&mut at, "reduce.fan_in", reduce.fan_in, 2..=1024)?
            .map_or(DEFAULT_FAN_IN, |n| n as usize);
        let (policy, retries) = match raw.error {
            None => (ErrorPolicy::Retry, 2),
            Some(e) => {
                let policy = match e.policy {
                    None => ErrorPolicy::Retry,
                    Some(p) => {
                        let lc = at("error.policy", p.span());
                        match p.into_inner().as_str() {
                            "retry" => ErrorPolicy::Retry,
                            "skip" => ErrorPolicy::Skip,
                            "fail" => ErrorPolicy::Fail,
                            other => {
                                return Err(err(
                                    lc,
                                    format!(
                                        "error.policy: '{other}' is not one of retry, skip, fail"
                                    ),
                                ));
                            }
                        }
                    }
                };
                let retries =
                    in_range(&mut at, "error.retries", e.retries, 0..=100)?.map_or(2, |n| n as u32);
                (policy, retries)
            }
        };
        Ok(JobSpec {
            name: raw.name.unwrap_or_default(),
            files,
            ship: data.ship.unwrap_or(true),
            lines,
            map,
            map_args,
            reduce: reduce_fn,
            fan_in,
            policy,
            retries,
            base_dir: base_dir.to_path_buf(),
            locations,
            source: None,
        })
    }

    /// An error about `field`, located where the TOML source wrote it.
    pub fn error_at(&self, field: &str, message: String) -> SpecError {
        SpecError {
            file: self.source.clone(),
            at: self.locations.get(field).copied(),
            message,
        }
    }

    /// Expands the globs into existing files (sorted, deduplicated, absolute).
    pub fn expand_files(&self) -> Result<Vec<PathBuf>, SpecError> {
        let mut out = std::collections::BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let field = format!("data.files[{i}]");
            let full = self.base_dir.join(f);
            let pattern = full.to_string_lossy().into_owned();
            let is_glob = f.contains(['*', '?', '[']);
            if !is_glob {
                if !full.is_file() {
                    let why = if full.exists() {
                        "is not a regular file"
                    } else {
                        "does not exist"
                    };
                    return Err(self.error_at(
                        &field,
                        format!("data.files: '{f}' {why} (looked at {})", full.display()),
                    ));
                }
                out.insert(absolute(&full));
                continue;
            }
            let paths = glob::glob(&pattern).map_err(|e| {
                self.error_at(
                    &field,
                    format!(
                        "data.files: '{f}' is not a valid glob: {} at character {}",
                        e.msg, e.pos
                    ),
                )
            })?;
            let mut n = 0;
            for p in paths {
                let p = p.map_err(|e| self.error_at(&field, format!("data.files: '{f}': {e}")))?;
                if p.is_file() {
                    out.insert(absolute(&p));
                    n += 1;
                }
            }
            if n == 0 {
                return Err(self.error_at(
                    &field,
                    format!("data.files: '{f}' matches no file (looked for {pattern})"),
                ));
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// A function name from the spec: recorded at its place and not empty.
fn named(
    at: &mut impl FnMut(&str, std::ops::Range<usize>) -> (usize, usize),
    field: &str,
    name: Spanned<String>,
) -> Result<String, SpecError> {
    let lc = at(field, name.span());
    let name = name.into_inner();
    if name.trim().is_empty() {
        return Err(SpecError {
            file: None,
            at: Some(lc),
            message: format!("{field} is empty: name a function (`mozen functions` lists them)"),
        });
    }
    Ok(name)
}

/// An optional integer from the spec, recorded at its place and within `range`.
fn in_range(
    at: &mut impl FnMut(&str, std::ops::Range<usize>) -> (usize, usize),
    field: &str,
    value: Option<Spanned<i64>>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, SpecError> {
    let Some(v) = value else { return Ok(None) };
    let lc = at(field, v.span());
    let n = v.into_inner();
    if !range.contains(&n) {
        return Err(SpecError {
            file: None,
            at: Some(lc),
            message: format!(
                "{field}: {n} is out of range {}-{}",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(Some(n))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Default number of values one reduce request combines.
pub const DEFAULT_FAN_IN: usize = 16;

/// A job spec that cannot run, with where the problem is.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub file: Option<PathBuf>,
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", Code::BadJob)?;
        if let Some(p) = &self.file {
            write!(f, "{}", p.display())?;
            if let Some((l, c)) = self.at {
                write!(f, ":{l}:{c}")?;
            }
            write!(f, ": ")?;
        } else if let Some((l, c)) = self.at {
            write!(f, "line {l}, column {c}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SpecError {}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    data: Option<RawData>,
    slice: Option<RawSlice>,
    process: Option<RawProcess>,
    reduce: Option<RawReduce>,
    error: Option<RawError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    files: Spanned<Vec<Spanned<String>>>,
    ship: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlice {
    lines: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    function: Spanned<String>,
    args: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReduce {
    function: Spanned<String>,
    fan_in: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawError {
    policy: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "birds"
[data]
files = ["data/*.txt"]
ship = false
[slice]
lines = 500
[process]
function = "grep"
args = { pattern = "owl" }
[reduce]
function = "concat"
fan_in = 8
[error]
policy = "skip"
retries = 1
"#;

    fn parse(text: &str) -> Result<JobSpec, SpecError> {
        JobSpec::parse(text, Path::new("/base"))
    }

    #[test]
    fn a_full_spec_parses() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "birds");
        assert_eq!(s.files, vec!["data/*.txt"]);
        assert!(!s.ship);
        assert_eq!(s.lines, SliceLines::Fixed(500));
        assert_eq!(s.map, "grep");
        assert_eq!(s.map_args, serde_json::json!({"pattern": "owl"}));
        assert_eq!((s.reduce.as_str(), s.fan_in), ("concat", 8));
        assert_eq!((s.policy, s.retries), (ErrorPolicy::Skip, 1));
        assert_eq!(s.locations["data.files[0]"], (3, 10));
        let d = parse("[data]\nfiles=[\"a\"]\n[process]\nfunction=\"wordcount\"\n[reduce]\nfunction=\"merge_counts\"\n").unwrap();
        assert_eq!(
            (d.lines, d.ship, d.policy, d.retries),
            (SliceLines::Auto, true, ErrorPolicy::Retry, 2)
        );
    }

    /// Replaces `from` by `to` in the good spec and expects an error at `at` saying `msg`.
    fn refused(from: &str, to: &str, at: &str, msg: &str) {
        let e = parse(&GOOD.replace(from, to)).unwrap_err();
        let shown = e.to_string();
        let (l, c) = at.split_once(':').unwrap();
        assert!(
            shown.contains(&format!("line {l}, column {c}: ")),
            "{at}: {shown}"
        );
        assert!(shown.contains(msg), "{msg}: {shown}");
    }

    #[test]
    fn bad_specs_name_the_field_and_its_place() {
        refused(
            "lines = 500",
            "lines = -3",
            "6:9",
            "slice.lines: expected \"auto\" or a positive",
        );
        refused(
            "lines = 500",
            "lines = \"many\"",
            "6:9",
            "lines, got \"many\"",
        );
        refused(
            "\"skip\"",
            "\"ignore\"",
            "14:10",
            "error.policy: 'ignore' is not one of",
        );
        refused(
            "retries = 1",
            "retries = 1000",
            "15:11",
            "retries: 1000 is out of range 0-100",
        );
        refused(
            "fan_in = 8",
            "fan_in = 1",
            "12:10",
            "reduce.fan_in: 1 is out of range 2-1024",
        );
        refused(
            "files = [\"data/*.txt\"]",
            "files = []",
            "3:9",
            "data.files is empty",
        );
        refused("ship = false", "shp = false", "4:1", "unknown field `shp`");
        refused("ship = false", "ship = \"no\"", "4:8", "invalid type");
        refused(
            "function = \"concat\"\n",
            "",
            "10:1",
            "missing field `function`",
        );
        refused(
            "name = \"birds\"",
            "name = \"birds",
            "1:14",
            "invalid basic string",
        );
        let e = parse("name = \"x\"\n").unwrap_err();
        assert!(e.message.contains("missing [data]"), "{e}");
    }

    #[test]
    fn globs_expand_and_missing_files_are_precise() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/b.txt"), "b\n").unwrap();
        std::fs::write(dir.path().join("data/a.txt"), "a\n").unwrap();
        let job = dir.path().join("job.toml");
        let write = |files: &str| {
            std::fs::write(&job, GOOD.replace("[\"data/*.txt\"]", files)).unwrap();
            JobSpec::load(&job).unwrap()
        };
        let files = write("[\"data/*.txt\", \"data/a.txt\"]")
            .expand_files()
            .unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("data/a.txt") && files[1].ends_with("data/b.txt"));
        let e = write("[\"data/*.txt\",\n  \"data/*.csv\"]")
            .expand_files()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("job.toml:4:3: data.files: 'data/*.csv' matches no file"),
            "{e}"
        );
        let e = write("[\"data/c.txt\"]").expand_files().unwrap_err();
        assert!(
            e.to_string()
                .contains(":3:10: data.files: 'data/c.txt' does not exist"),
            "{e}"
        );
        let e = write("[\"data/[.txt\"]").expand_files().unwrap_err();
        assert!(e.to_string().contains("is not a valid glob"), "{e}");
        let e = write("[\"data\"]").expand_files().unwrap_err();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
    }

    /// Parses `text` (arbitrary or damaged); an error must name what is wrong, and where when
    /// the TOML itself does not parse.
    fn check_bad_input(text: &str) {
        if let Err(e) = parse(text) {
            let shown = e.to_string();
            assert!(shown.starts_with("MZ-BAD-JOB: "), "{shown}");
            assert!(!e.message.is_empty(), "empty message for {text:?}");
        }
    }

    /// The good spec with `cut` bytes removed at `at` and `insert` put there instead.
    fn damaged(at: usize, cut: usize, insert: &str) -> String {
        let mut b = GOOD.as_bytes().to_vec();
        let at = at % b.len();
        let end = (at + cut).min(b.len());
        b.splice(at..end, insert.bytes());
        String::from_utf8_lossy(&b).into_owned()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn bad_input_arbitrary_job_files_give_clear_errors(text in ".{0,400}") {
            check_bad_input(&text);
        }

        #[test]
        fn bad_input_damaged_job_files_give_clear_errors(
            at in 0usize..1000,
            cut in 0usize..20,
            insert in "[\\[\\]{}=\"',.#\\n a-z0-9-]{0,12}",
        ) {
            check_bad_input(&damaged(at, cut, &insert));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        #[test]
        #[ignore = "long: run with --run-ignored"]
        fn bad_input_arbitrary_job_files_give_clear_errors_long(text in "(?s).{0,2000}") {
            check_bad_input(&text);
        }

        #[test]
        #[ignore = "long: run with --run-ignored"]
        fn bad_input_damaged_job_files_give_clear_errors_long(
            at in 0usize..1000,
            cut in 0usize..40,
            insert in "(?s).{0,24}",
        ) {
            check_bad_input(&damaged(at, cut, &insert));
        }
    }
}
