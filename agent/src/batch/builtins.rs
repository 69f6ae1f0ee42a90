//! The batch built-ins as functions of the agent: maps over one slice of a text file
//! (`wordcount`, `linecount`, `grep`) and associative reduces over a list of values
//! (`merge_counts`, `sum`, `concat`).
//!
//! Their argument ([`SliceArgs`]) and pure work are mozen-client's
//! ([`mozen_client::batch::builtins`], re-exported here), so that a client runs the same work
//! in its own process. Here a map first loads its slice's text ([`load`]): the hash of the
//! text, stored in the cluster by the job (`ship = true`; the map fetches it as the memoized
//! value of `blob([hash])`), the text itself (direct calls), or the path, byte range and hash
//! of the slice (`ship = false`), in which case the agent reads the bytes itself and refuses
//! when they no longer hash to what the job saw.

use crate::functions::{Ctx, Functions, fail};
use mozen_model::TaskError;
use serde_json::{Number, Value};
use std::collections::BTreeMap;

pub use mozen_client::batch::builtins::*;

/// The slice's text from wherever it is: the cluster's stored blobs (checked against the
/// hash), the request itself, or the shared filesystem.
pub async fn load(s: SliceArgs, ctx: &Ctx) -> Result<String, TaskError> {
    let Some(hash) = s.blob.clone() else {
        return blocking(move || s.text()).await;
    };
    let text: String = ctx.call(super::job::BLOB, [&hash]).await?;
    let label = s.label();
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

/// Runs CPU-bound `f` off the async workers.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, TaskError> + Send + 'static,
) -> Result<R, TaskError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| fail(format!("batch function panicked: {e}")))?
}

/// Registers the batch built-ins, the job's root and the blobs (see [`super::job`]).
pub fn register(f: &mut Functions) {
    f.register(
        "wordcount",
        SLICE_SHAPE,
        |c: Ctx, s: SliceArgs| async move {
            let text = load(s, &c).await?;
            blocking(move || Ok(wordcount(&text))).await
        },
    );
    f.register(
        "linecount",
        SLICE_SHAPE,
        |c: Ctx, s: SliceArgs| async move {
            let text = load(s, &c).await?;
            Ok(text.lines().count() as u64)
        },
    );
    f.register("grep", GREP_SHAPE, |c: Ctx, s: SliceArgs| async move {
        let pattern = grep_pattern(&s)?;
        let (file, first) = (s.file.clone(), s.lines[0]);
        let text = load(s, &c).await?;
        blocking(move || Ok(grep(&file, first, &text, &pattern))).await
    });
    f.register(
        "merge_counts",
        COUNTS_SHAPE,
        |_c: Ctx, maps: Vec<BTreeMap<String, u64>>| async move {
            blocking(move || merge_counts(maps).map_err(|e| bad("merge_counts", e))).await
        },
    );
    f.register(
        "sum",
        NUMBERS_SHAPE,
        |_c: Ctx, xs: Vec<Number>| async move { sum(&xs).map_err(|e| bad("sum", e)) },
    );
    f.register(
        "concat",
        PARTS_SHAPE,
        |_c: Ctx, parts: Vec<Value>| async move { concat(parts).map_err(|e| bad("concat", e)) },
    );
    super::job::register(f);
}
