//! batch: `wordcount` + `merge_counts` over a generated corpus with the batch runner (auto
//! slicing, text shipped in the requests), checked against the generator's own count; the same
//! job in one local process gives the reference.

use super::BenchError;
use super::report::Outcome;
use mozen_client::Client;
use mozen_client::batch::{self, JobSpec, Prepared};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files in the corpus.
pub const FILES: usize = 100;
/// Lines per slice of the local reference run.
pub const LOCAL_SLICE_LINES: u64 = 20_000;

/// The job file every wordcount benchmark runs (data under `data/` beside it).
pub const JOB: &str = "[data]\nfiles = [\"data/*.txt\"]\n[process]\nfunction = \"wordcount\"\n[reduce]\nfunction = \"merge_counts\"\n";

/// A generated corpus with the counts its generator tallied.
pub struct Corpus {
    pub dir: PathBuf,
    pub counts: BTreeMap<String, u64>,
    pub spec: JobSpec,
}

impl Corpus {
    /// Writes about `mb` MB in [`FILES`] files under `dir`.
    pub fn generate(dir: &Path, mb: f64) -> Result<Corpus, BenchError> {
        let rt = |e: String| BenchError::Runtime(format!("corpus in {}: {e}", dir.display()));
        let bytes_each = ((mb * 1e6) as usize / FILES).max(100);
        let (_, counts) = batch::corpus::generate(&dir.join("data"), FILES, bytes_each)
            .map_err(|e| rt(e.to_string()))?;
        let spec = JobSpec::parse(JOB, dir).map_err(|e| rt(e.to_string()))?;
        Ok(Corpus {
            dir: dir.to_path_buf(),
            counts,
            spec,
        })
    }

    fn check(&self, result: &Value) -> Result<(), String> {
        if serde_json::to_value(&self.counts).ok().as_ref() == Some(result) {
            Ok(())
        } else {
            Err("the counts differ from the generator's".into())
        }
    }

    /// The job run in this process, slice after slice, with the built-ins: (MB/s, seconds).
    pub async fn run_local(&self) -> Result<(f64, f64), String> {
        let job = batch::prepare(self.spec.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        let (result, took) = batch::run::run_local_job(&job, LOCAL_SLICE_LINES)
            .await
            .map_err(|e| e.to_string())?;
        self.check(&result)?;
        Ok((batch::run::mb_per_s(job.bytes(), took), took.as_secs_f64()))
    }

    /// The job prepared against `client` (its functions checked on the cluster).
    pub async fn prepare(&self, client: &Client) -> Result<Prepared, String> {
        batch::prepare(self.spec.clone(), Some(client))
            .await
            .map_err(|e| e.to_string())
    }

    /// The job run on the cluster, its result checked.
    pub async fn run_cluster(
        &self,
        job: &Prepared,
        client: &Client,
    ) -> Result<batch::JobReport, String> {
        let report = batch::run(job, client, &|_| {})
            .await
            .map_err(|e| e.to_string())?;
        self.check(&report.result)?;
        Ok(report)
    }
}

/// One cluster run of the job, what `mozen plan` predicted for it, and the local reference.
pub async fn run(corpus: &Corpus, client: &Client) -> Outcome {
    let cluster = async {
        let job = corpus.prepare(client).await?;
        let plan = batch::plan::plan(&job, client)
            .await
            .map_err(|e| format!("plan: {e}"))?;
        let report = corpus.run_cluster(&job, client).await?;
        Ok::<_, String>((report, plan))
    };
    let (report, plan) = match cluster.await {
        Ok(r) => r,
        Err(e) => return Outcome::failed(format!("cluster run: {e}"), json!({})),
    };
    let (local_mbs, local_s) = match corpus.run_local().await {
        Ok(x) => x,
        Err(e) => return Outcome::failed(format!("local run: {e}"), json!({})),
    };
    let predicted = plan.cluster[0].1.seconds;
    let plan_mbs = report.bytes as f64 / 1e6 / predicted.max(1e-9);
    Outcome::ok(
        vec![
            ("mb_per_s", report.mb_per_s),
            ("plan_mb_per_s", plan_mbs),
            ("local_mb_per_s", local_mbs),
        ],
        json!({
            "bytes": report.bytes, "lines": report.lines, "files": report.files,
            "slices": report.slices, "lines_per_slice": report.lines_per_slice,
            "executed": report.executed, "memo_hits": report.memo_hits,
            "cluster_s": report.elapsed_ms as f64 / 1e3, "local_s": local_s,
            "plan_s": predicted, "plan_local_s": plan.local_seconds,
            "ship_mb_per_s": plan.ship_mb_per_s, "workers": plan.workers,
        }),
    )
}
