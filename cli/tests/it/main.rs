//! Integration tests of the `mozen` CLI and its tools on real agents: batch jobs (`mozen run`,
//! `mozen plan`), `mozen up`/`mozen down` and the autoscaler, `mozen bench` and `mozen chaos`.
//! The harness is mozen-testkit's; the `mozen-agent` and `mozen` binaries are the workspace's
//! (`cargo build --workspace --bins` first).

use mozen_testkit as harness;

mod batch;
mod bench;
mod chaos;
mod elastic;
