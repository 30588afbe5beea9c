//! In-process demo services for `gatehouse demo`, modelled on a small
//! microservice app: `auth`, two `user` instances, `task` and `appointment`.
//!
//! They expect to sit behind the gateway, which strips the `/auth` prefix for
//! the auth service, passes `/users/**`, `/tasks/**` and `/appointments/**`
//! through unchanged, verifies the auth service's tokens, and forwards who
//! the caller is as `X-User-Id`, `X-User-Name` and `X-User-Roles`
//! (comma-separated). The services trust those headers and never look at
//! tokens themselves.
//!
//! Every response body is a JSON object carrying `service` and `instance`,
//! with one exception: the auth service's `/.well-known/jwks.json` is a plain
//! JWKS, because JWKS consumers expect nothing else in it.
//!
//! | Service | Endpoints |
//! |---|---|
//! | all | `GET /health` → `{"status":"ok"}`; unknown path → 404 `not_found` |
//! | auth | `POST /login` `{"username","password"}` → `access_token` (RS256 JWT, 1 h); `GET /.well-known/jwks.json` |
//! | user | `GET /users` (public), `GET /users/me`, `GET /users/{id}` |
//! | task | `GET /tasks`, `POST /tasks` `{"title"}` (per user, in memory) |
//! | appointment | `GET /appointments` (own; admins see all), `DELETE /appointments/{id}` (admin) |
//!
//! Accounts: `alice`/`alice-pw` (roles `user`) and `admin`/`admin-pw`
//! (roles `user`, `admin`). Errors are `{"error": code, "message": text}`
//! with codes `invalid_request` (400), `invalid_credentials` (401),
//! `unauthenticated` (401, no `X-User-Id`), `forbidden` (403), `not_found`
//! (404), `method_not_allowed` (405), `invalid_title` and `too_many_tasks`
//! (400: titles are capped at [`MAX_TITLE_CHARS`] characters and each
//! user at [`MAX_TASKS_PER_USER`] tasks).

mod appointment;
mod auth;
mod common;
mod task;
mod user;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{AUDIENCE, ISSUER, KEY_ID, TOKEN_LIFETIME_SECS};
pub use task::{MAX_TASKS_PER_USER, MAX_TITLE_CHARS};

use common::Instance;

/// How long [`DemoServices::shutdown`] lets in-flight requests finish before
/// it stops waiting for them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The ports to bind the demo services on; 0 picks a free port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoPorts {
    pub auth: u16,
    pub users: [u16; 2],
    pub tasks: u16,
    pub appointments: u16,
}

impl DemoPorts {
    /// The fixed ports `examples/demo.yaml` and the docs refer to.
    pub const DEFAULT: DemoPorts = DemoPorts { auth: 9101, users: [9102, 9103], tasks: 9104, appointments: 9105 };

    /// Free ports chosen by the OS, so that tests can run side by side.
    pub const EPHEMERAL: DemoPorts = DemoPorts { auth: 0, users: [0, 0], tasks: 0, appointments: 0 };
}

/// The running demo services and the addresses they listen on.
///
/// Dropping this signals the services to stop: they stop accepting
/// connections and finish the requests already in flight.
/// [`DemoServices::shutdown`] does the same and also waits for them.
#[derive(Debug)]
pub struct DemoServices {
    pub auth: SocketAddr,
    pub users: [SocketAddr; 2],
    pub tasks: SocketAddr,
    pub appointments: SocketAddr,
    stop: Option<watch::Sender<()>>,
    tasks_running: Vec<JoinHandle<()>>,
}

impl DemoServices {
    /// Binds all services on `ip` (normally loopback: the services trust
    /// identity headers, so they must only be reachable through the gateway)
    /// and spawns them on the current tokio runtime.
    ///
    /// Nothing is spawned unless every port could be bound, and the error
    /// names the service whose port failed.
    pub async fn start(ip: IpAddr, ports: DemoPorts) -> io::Result<DemoServices> {
        let signer = auth::Signer::load()?;

        let listeners = [
            bind(ip, ports.auth, "auth").await?,
            bind(ip, ports.users[0], "user-1").await?,
            bind(ip, ports.users[1], "user-2").await?,
            bind(ip, ports.tasks, "task").await?,
            bind(ip, ports.appointments, "appointment").await?,
        ];
        let mut addrs = [SocketAddr::new(ip, 0); 5];
        for (slot, listener) in addrs.iter_mut().zip(&listeners) {
            *slot = listener.local_addr()?;
        }

        let [auth_l, user1_l, user2_l, task_l, appointment_l] = listeners;
        let (stop, stopped) = watch::channel(());
        let tasks_running = vec![
            spawn(auth_l, auth::router(Instance::new("auth", 1), signer), &stopped),
            spawn(user1_l, user::router(Instance::new("user", 1)), &stopped),
            spawn(user2_l, user::router(Instance::new("user", 2)), &stopped),
            spawn(task_l, task::router(Instance::new("task", 1)), &stopped),
            spawn(appointment_l, appointment::router(Instance::new("appointment", 1)), &stopped),
        ];

        let [auth, user1, user2, tasks, appointments] = addrs;
        Ok(DemoServices { auth, users: [user1, user2], tasks, appointments, stop: Some(stop), tasks_running })
    }

    /// Variables for `${...}` interpolation in the demo config: one base URL
    /// per service instance, plus `DEMO_JWKS_URL`.
    pub fn vars(&self) -> Vec<(String, String)> {
        let auth_url = url(self.auth);
        vec![
            ("DEMO_AUTH_URL".to_owned(), auth_url.clone()),
            ("DEMO_USER_1_URL".to_owned(), url(self.users[0])),
            ("DEMO_USER_2_URL".to_owned(), url(self.users[1])),
            ("DEMO_TASK_URL".to_owned(), url(self.tasks)),
            ("DEMO_APPOINTMENT_URL".to_owned(), url(self.appointments)),
            ("DEMO_JWKS_URL".to_owned(), format!("{auth_url}/.well-known/jwks.json")),
        ]
    }

    /// Stops the services and waits for in-flight requests, for at most a
    /// few seconds; whatever is still running after that is aborted.
    pub async fn shutdown(mut self) {
        self.stop.take();
        for mut handle in std::mem::take(&mut self.tasks_running) {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut handle).await.is_err() {
                handle.abort();
            }
        }
    }
}

impl Drop for DemoServices {
    fn drop(&mut self) {
        // Dropping the sender is the stop signal every server waits on.
        self.stop.take();
    }
}

async fn bind(ip: IpAddr, port: u16, name: &str) -> io::Result<TcpListener> {
    TcpListener::bind((ip, port)).await.map_err(|err| {
        io::Error::new(err.kind(), format!("demo {name} service cannot listen on {}: {err}", SocketAddr::new(ip, port)))
    })
}

fn spawn(listener: TcpListener, router: Router, stopped: &watch::Receiver<()>) -> JoinHandle<()> {
    let mut stopped = stopped.clone();
    tokio::spawn(async move {
        let addr = listener.local_addr().ok();
        let stop_signal = async move {
            // Resolves once the sender is dropped, which is the only way the
            // signal is ever given.
            while stopped.changed().await.is_ok() {}
        };
        if let Err(err) = axum::serve(listener, router).with_graceful_shutdown(stop_signal).await {
            tracing::error!(?addr, %err, "demo service stopped with an error");
        }
    })
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
