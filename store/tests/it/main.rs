//! Integration tests of the sled storage: openraft's conformance suite, restart, damaged data
//! dirs and the wire form of commands.

mod damaged;
mod golden;
mod props;
mod restart;
mod suite;
