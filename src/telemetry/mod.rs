//! What happened to each request: the per-request log context, the access log, gatehouse's own logs.
//!
//! Request path steps 2 (`RequestLog::start`) and 9 (`RequestLog::finish`, called when the response
//! body ends).

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod request_log;
pub mod trace;

pub use access_log::AccessLogWriter;
pub use request_log::RequestLog;
