//! Sockets and connections: binding listeners, worker threads with their accept loops, connection
//! deadlines and draining.
//!
//! Thread-per-core: every worker is a single-threaded tokio runtime with its own `SO_REUSEPORT`
//! socket per listener (the kernel spreads connections over them), its own upstream connection pool
//! and its own sweeper for connection deadlines. Nothing on the request path crosses threads.

pub mod clock;
pub mod conn;
pub mod inherit;
pub mod listener;
pub mod pem;
pub mod tls;
pub mod worker;
