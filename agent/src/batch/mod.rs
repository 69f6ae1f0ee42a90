//! Batch work inside the agent: a job maps a function over line slices of many files and
//! reduces the values with an associative function, as ordinary memoized requests.
//!
//! The agent's side is the job's root request and the built-in functions:
//! - [`job`]: the root request (`mapreduce`) and the shipped slices' texts (`blob`).
//! - [`builtins`]: `wordcount`, `linecount`, `grep`, `merge_counts`, `sum`, `concat` as
//!   functions of the agent ([`register`]).
//! - [`run`](mod@run): running one function in this process, without a cluster.
//!
//! The client's side (the work spec, slicing, running and planning a job from a client) is
//! [`mozen_client::batch`], re-exported here so that `mozen_agent::batch::JobSpec` and the like
//! keep working. See docs/batch.md for the design.

pub mod builtins;
pub mod job;
pub mod run;

pub use mozen_client::batch::{corpus, cost, input, plan, spec};

pub use builtins::{SliceArgs, register};
pub use cost::CostModel;
pub use run::{JobError, JobReport, Prepared, Progress, prepare, run};
pub use spec::{ErrorPolicy, JobSpec, SliceLines, SpecError};
