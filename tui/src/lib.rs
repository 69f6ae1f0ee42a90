//! mozen-console: the live terminal console for Mozen operators.
//!
//! - [`app`]: `App` state and the synchronous `App::update(Action)`; unit-tested by replaying
//!   keys.
//! - [`ui`]: drawing (`draw(&App, &mut Frame)`), never awaits.
//! - [`feed`]: the background task that owns the gRPC connection: follows the leader, streams
//!   `Watch` updates in, runs operator actions, reconnects by itself.
//! - [`demo`]: `--demo`, a local 3-agent cluster with a workload.
//!
//! Dependency rule: model + proto only; never sled, openraft or the agent crate.

pub mod app;
pub mod demo;
pub mod feed;
pub mod ui;
