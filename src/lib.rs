//! gatehouse: an API gateway — the single entry point in front of many HTTP services.
//!
//! The request path, end to end (see docs/architecture/request-lifecycle.md):
//! `transport` accepts connections on worker threads and hands parsed requests to
//! `proxy::HttpProxy`, which loads one config generation (`state::Snapshot`), normalises the
//! request, finds its route (`route`), runs the route's policies (`policy`), picks an endpoint and
//! sends the request over a pooled connection (`upstream`), and records the outcome (`telemetry`).
//! `config` turns YAML into snapshots; `app::Gateway` wires it all and owns reloads and shutdown.

pub mod admin;
pub mod app;
pub mod background;
pub mod cli;
pub mod config;
pub mod demo;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod transport;
pub mod upstream;

pub use app::{Gateway, StartOptions};
