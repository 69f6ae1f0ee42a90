//! Batch jobs from the client's side. A job maps a function over line slices of many files and
//! reduces the values with an associative function, as ordinary memoized requests; it runs in
//! the cluster as one root request (the agent's side: `mozen_agent::batch`). Here the job file
//! is read and validated, the input sliced, the job started and followed, and planned.
//!
//! - [`spec`]: the work spec (TOML or Rust) and its validation.
//! - [`slice`]: one slice of one file, the argument of every map ([`SliceArgs`]).
//! - [`input`]: reading, hashing and slicing the input files.
//! - [`builtins`]: the pure work of the built-ins
//!   (`wordcount`, `linecount`, `grep`, `merge_counts`, `sum`, `concat`), runnable in this
//!   process.
//! - [`corpus`]: a deterministic generated corpus for tests and benchmarks.
//! - [`cost`]: the cost model behind auto slicing, `mozen plan` and the autoscaler.
//! - [`job`]: the job's root request (`mapreduce`) and the shipped slices' texts (`blob`):
//!   names, arguments and values.
//! - [`run`](mod@run): running a job on a cluster (or locally) with an error policy and progress.
//! - [`plan`]: estimates and a verdict on whether distributing is worth it.
//!
//! See docs/batch.md for the design.

pub mod builtins;
pub mod corpus;
pub mod cost;
pub mod input;
pub mod job;
pub mod plan;
pub mod run;
pub mod slice;
pub mod spec;

pub use cost::CostModel;
pub use run::{JobError, JobReport, Prepared, Progress, UPLOAD_BYTES, prepare, run};
pub use slice::SliceArgs;
pub use spec::{ErrorPolicy, JobSpec, SliceLines, SpecError};
