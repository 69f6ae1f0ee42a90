//! Batch corpora for tests: a generated corpus in a temp dir with the word counts its
//! generator tallied, job files beside it, and `mozen run --json` on a cluster.

use crate::Cluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A generated corpus in a temp dir, with the counts its generator tallied.
pub struct Corpus {
    pub dir: tempfile::TempDir,
    pub counts: BTreeMap<String, u64>,
    pub files: Vec<PathBuf>,
}

/// `files` generated files of about `bytes_each` bytes in `data/` of a new temp dir.
pub fn corpus(files: usize, bytes_each: usize) -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let (files, counts) =
        mozen_client::batch::corpus::generate(&dir.path().join("data"), files, bytes_each).unwrap();
    Corpus { dir, counts, files }
}

impl Corpus {
    /// Writes a job file into the corpus dir and returns its path.
    pub fn job(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, body).unwrap();
        p
    }
}

/// A wordcount job over the corpus's `data/*.txt`.
pub fn wordcount_job(ship: bool, lines: &str, policy: &str) -> String {
    format!(
        "name = \"words\"\n[data]\nfiles = [\"data/*.txt\"]\nship = {ship}\n[slice]\nlines = {lines}\n\
         [process]\nfunction = \"wordcount\"\n[reduce]\nfunction = \"merge_counts\"\n\
         [error]\npolicy = \"{policy}\"\nretries = 1\n"
    )
}

/// The report of `mozen run JOB --json` on `c`.
pub fn run_json(c: &Cluster, job: &Path) -> Value {
    c.cli_json(&["run", job.to_str().unwrap(), "--json"])
}

/// A wordcount result as counts by word.
pub fn counts_of(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v.clone()).unwrap()
}
