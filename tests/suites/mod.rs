//! The test suites, one file per capability.

mod config;
