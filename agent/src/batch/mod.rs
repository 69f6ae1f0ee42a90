//! Batch work: a job maps a function over line slices of many files and reduces the values
//! with an associative function, as ordinary memoized requests.
//!
//! - [`spec`]: the work spec (TOML or Rust) and its validation.
//! - [`input`]: reading, hashing and slicing the input files.
//! - [`builtins`]: `wordcount`, `linecount`, `grep`, `merge_counts`, `sum`, `concat`.
//! - [`corpus`]: a deterministic generated corpus for tests and benchmarks.
//! - [`cost`]: the cost model behind auto slicing and `mozen plan`.
//! - [`job`]: the job's root request (`mapreduce`) and the shipped slices' texts (`blob`).
//! - [`run`]: running a job on a cluster (or locally) with an error policy and progress.
//! - [`plan`]: estimates and a verdict on whether distributing is worth it.
//! - [`progress`]: the progress bar of `mozen run`.
//!
//! See docs/batch.md for the design.

pub mod builtins;
pub mod corpus;
pub mod cost;
pub mod input;
pub mod job;
pub mod plan;
pub mod progress;
pub mod run;
pub mod spec;

pub use cost::CostModel;
pub use run::{JobError, JobReport, Prepared, Progress, prepare, run};
pub use spec::{ErrorPolicy, JobSpec, SliceLines, SpecError};
