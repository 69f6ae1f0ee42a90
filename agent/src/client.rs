//! The Rust client, re-exported from [`mozen_client`] so that `mozen_agent::client::Client`
//! keeps working for custom agents and their tests. The library lives in `client/`.

pub use mozen_client::client::*;
pub use mozen_client::error::ClientError;
pub use mozen_client::status::{leader_hint, rejected};
