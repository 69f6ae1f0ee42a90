//! A job inside the cluster: the root request `mapreduce` calls the map on every slice and
//! reduces the values as a tree of child requests, and `blob` is the content-addressed text of
//! the slices a job ships. Their arguments, values and names are mozen-client's
//! ([`mozen_client::batch::job`], re-exported here): the runner builds them there.
//!
//! Because the whole job is one request, it survives the client that started it (the client
//! only waits on the root), the loss of any agent (the root is re-queued like any request and
//! finds its finished maps in the memo table), and it is memoized as a whole: the same job on
//! the same files answers at once.

use super::run::show_chain;
use super::spec::ErrorPolicy;
use crate::functions::{Ctx, Functions};
use futures::StreamExt;
use mozen_model::{RequestKey, TaskError, canonical_args, codes};
use mozen_store::Memo;
use serde_json::{Value, json};

pub use mozen_client::batch::job::*;

/// Child calls the root keeps in flight at once.
const IN_FLIGHT: usize = 1024;

/// `text` as the memoized value of `blob([hash])`, with its hash.
pub fn blob_memo(text: &str) -> (String, Memo) {
    let hash = blob_hash(text);
    let args = canonical_args(&json!([&hash]));
    let memo = Memo {
        key: RequestKey::of(BLOB, &args),
        function: BLOB.into(),
        args,
        value: serde_json::to_vec(text).expect("a string encodes"),
    };
    (hash, memo)
}

fn job_failed(message: String, cause: TaskError) -> TaskError {
    let mut e = TaskError::new(JOB_FAILED, message);
    e.node = cause.node;
    e.chain = cause.chain;
    e
}

/// Runs a job as the root request: maps (at most [`IN_FLIGHT`] at once, any order), then the
/// reduce tree level by level in slice order, so every reduce's key repeats from run to run.
pub async fn run_root(ctx: Ctx, job: JobArgs) -> Result<JobResult, TaskError> {
    let mut out = JobResult::default();
    let mut values: Vec<Option<Value>> = vec![None; job.slices.len()];
    // Each call owns what it uses: the futures of a buffered stream cannot borrow the root's.
    let calls = job.slices.iter().cloned().enumerate().map(|(i, s)| {
        let (ctx, map) = (ctx.clone(), job.map.clone());
        async move { (i, ctx.call_traced::<_, Value>(&map, s).await) }
    });
    let mut maps = futures::stream::iter(calls).buffer_unordered(IN_FLIGHT);
    while let Some((i, r)) = maps.next().await {
        if ctx.cancel.is_cancelled() {
            return Err(TaskError::new(codes::CANCELLED, "the job was cancelled"));
        }
        match r {
            Ok((v, cached)) => {
                if cached {
                    out.memo_hits += 1;
                } else {
                    out.executed += 1;
                }
                values[i] = Some(v);
            }
            Err(e) => {
                let s = &job.slices[i];
                if job.policy != ErrorPolicy::Skip {
                    let message = format!(
                        "slice {} failed under policy {}: {}: {}",
                        s.label(),
                        job.policy.name(),
                        e.code,
                        e.message
                    );
                    return Err(job_failed(message, e));
                }
                let args = serde_json::to_value(s).unwrap_or(Value::Null);
                out.skipped.push(Skipped {
                    slice: s.label(),
                    key: RequestKey::of(&job.map, &canonical_args(&args)).to_hex(),
                    error: show_chain(&e),
                });
            }
        }
    }
    drop(maps);
    out.skipped.sort_by(|a, b| a.slice.cmp(&b.slice));
    let mut level: Vec<Value> = values.into_iter().flatten().collect();
    loop {
        let groups: Vec<Value> = if level.is_empty() {
            vec![json!([])]
        } else {
            level
                .chunks(job.fan_in.max(2))
                .map(|c| Value::Array(c.to_vec()))
                .collect()
        };
        let calls = groups.into_iter().map(|g| {
            let (ctx, reduce) = (ctx.clone(), job.reduce.clone());
            async move { ctx.call::<_, Value>(&reduce, g).await }
        });
        let mut next = Vec::new();
        let mut results = futures::stream::iter(calls).buffered(IN_FLIGHT);
        while let Some(r) = results.next().await {
            let v = r.map_err(|e| {
                let message = format!("reduce {} failed: {}: {}", job.reduce, e.code, e.message);
                job_failed(message, e)
            })?;
            out.reduces += 1;
            next.push(v);
        }
        level = next;
        if level.len() <= 1 {
            break;
        }
    }
    out.result = level.pop().unwrap_or(Value::Null);
    Ok(out)
}

/// Registers [`ROOT`] and [`BLOB`].
pub fn register(f: &mut Functions) {
    f.register(
        ROOT,
        "{\"name\", \"map\", \"reduce\", \"fan_in\", \"policy\", \"slices\": [slice, ...]}",
        run_root,
    );
    // Reached only when the blob is not stored (a stored one is a memo hit): nothing can
    // recompute a text from its hash.
    f.register(BLOB, "[hash]", |_c: Ctx, (hash,): (String,)| async move {
        Err::<String, _>(TaskError::new(
            BLOB_MISSING,
            format!(
                "no stored text has hash {}: it was forgotten or never uploaded; run the job again from a machine that has its files",
                &hash[..12.min(hash.len())]
            ),
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_memo_is_keyed_by_the_hash_of_its_text() {
        let (hash, memo) = blob_memo("two\nlines\n");
        assert!(is_blob_hash(&hash));
        assert_eq!(memo.key, blob_key(&hash));
        assert_eq!(memo.args, format!("[\"{hash}\"]").into_bytes());
        assert_eq!(memo.value, b"\"two\\nlines\\n\"".to_vec());
        assert!(!is_blob_hash("ABC"));
        assert!(!is_blob_hash(&hash.to_uppercase()));
    }
}
