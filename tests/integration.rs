#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The integration tests: one binary, gateways started in-process on port 0 against real
//! in-process upstream servers.

mod common;
mod suites;
