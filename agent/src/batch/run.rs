//! Running a job from a client is mozen-client's
//! ([`mozen_client::batch::run`](mod@mozen_client::batch::run), re-exported here); the agent
//! adds running one function of its registry in this process.

use crate::functions::{Ctx, Functions, NoCluster};
use mozen_model::{RequestKey, TaskError, canonical_args};
use serde_json::Value;
use std::sync::Arc;

pub use mozen_client::batch::run::*;

/// Runs `function` on `args` in this process with the functions of `functions` (no cluster:
/// a child call fails).
pub async fn run_local(
    functions: &Functions,
    function: &str,
    args: Value,
) -> Result<Value, TaskError> {
    let key = RequestKey::of(function, &canonical_args(&args));
    let ctx = Ctx::new(key, 0, 1, Default::default(), Arc::new(NoCluster));
    functions.run(function, ctx, args).await
}
