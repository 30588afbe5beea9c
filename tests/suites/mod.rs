//! The test suites, one file per capability.

mod access_log;
mod admin;
mod admin_changes;
mod auth;
mod basic_auth;
mod cli;
mod config;
mod dashboard;
mod demo;
mod discovery;
mod forward_auth;
mod hmac_auth;
mod hostile;
mod introspection;
mod metrics;
mod otlp;
mod proxy;
mod quota;
mod rate_limit;
mod rate_limit_redis;
mod reload;
mod routing;
mod splitting;
mod timeouts;
mod traffic_limits;
mod upstreams;
