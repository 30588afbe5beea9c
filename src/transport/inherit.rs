//! Binary upgrade: the listening sockets handed from a running gatehouse to the one replacing it.
//!
//! The old process duplicates every listening socket, lets the duplicates survive `exec`, and
//! starts the new binary with their descriptors named in `GATEHOUSE_LISTENERS`
//! (`name@address=fd,fd;…`) and a socket in `GATEHOUSE_READY` on which the new process says it is
//! serving. The new process adopts the sockets instead of binding (same sockets, same accept
//! queues: no connection waiting to be accepted is lost), and the old one stops accepting and
//! drains once told. Nothing here runs unless an upgrade is asked for.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub const LISTENERS_ENV: &str = "GATEHOUSE_LISTENERS";
pub const READY_ENV: &str = "GATEHOUSE_READY";

/// Listening sockets by (listener name, bound address), handed over by the previous process.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<(String, SocketAddr), Vec<TcpListener>>,
    ready: Option<UnixStream>,
}

impl Inherited {
    /// What the environment hands over (nothing when started normally). A descriptor that is not
    /// a listening TCP socket at the address named is an error: serving on something else would
    /// be worse than refusing to start.
    pub fn from_env() -> io::Result<Inherited> {
        let mut inherited = Inherited::default();
        if let Ok(spec) = std::env::var(LISTENERS_ENV) {
            for entry in spec.split(';').filter(|e| !e.is_empty()) {
                let (key, fds) = entry.split_once('=').ok_or_else(|| bad(entry))?;
                let (name, address) = key.rsplit_once('@').ok_or_else(|| bad(entry))?;
                let address: SocketAddr = address.parse().map_err(|_| bad(entry))?;
                let mut sockets = Vec::new();
                for fd in fds.split(',') {
                    let fd: RawFd = fd.parse().map_err(|_| bad(entry))?;
                    sockets.push(adopt_listener(fd, address)?);
                }
                inherited.sockets.insert((name.to_owned(), address), sockets);
            }
        }
        if let Ok(fd) = std::env::var(READY_ENV) {
            let fd: RawFd = fd.parse().map_err(|_| bad(&fd))?;
            inherited.ready = Some(adopt_unix(fd)?);
        }
        Ok(inherited)
    }

    /// The sockets for listener `name` at `address` (any address when the config says port 0).
    pub fn take(&mut self, name: &str, address: SocketAddr) -> Option<Vec<TcpListener>> {
        let key = self
            .sockets
            .keys()
            .find(|(n, bound)| n == name && crate::config::compile::same_listener(&address, bound))?
            .clone();
        self.sockets.remove(&key)
    }

    /// Tells the previous process this one serves; sockets it handed over and nobody took are
    /// closed (their listeners left the config).
    pub fn serving(&mut self) {
        for ((name, address), _) in self.sockets.drain() {
            tracing::warn!(listener = %name, %address, "a socket handed over is not in the config: closed");
        }
        if let Some(mut ready) = self.ready.take() {
            let _ = ready.write_all(b"ready\n");
        }
    }
}

fn bad(entry: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{LISTENERS_ENV}: malformed entry {entry:?}"))
}

/// Whether `fd` is an open socket of this process (and not, say, a file or nothing).
fn is_socket(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
}

#[allow(unsafe_code)]
fn adopt_listener(fd: RawFd, address: SocketAddr) -> io::Result<TcpListener> {
    if !is_socket(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTENERS_ENV}: descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: `fd` was named by the process that started this one as a listening socket it left
    // open for us; it is an open socket of this process (checked just above), nothing else in this
    // process knows the number, and it is adopted once (the entry is consumed) — so the
    // `TcpListener` is its only owner, as `from_raw_fd` requires.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let socket = socket2::SockRef::from(&listener);
    socket.set_cloexec(true)?;
    if !socket.is_listener()? || socket.r#type()? != socket2::Type::STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTENERS_ENV}: descriptor {fd} is not listening"),
        ));
    }
    let local = listener.local_addr()?;
    if local.port() != address.port() && address.port() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTENERS_ENV}: descriptor {fd} is bound to {local}, not {address}"),
        ));
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[allow(unsafe_code)]
fn adopt_unix(fd: RawFd) -> io::Result<UnixStream> {
    if !is_socket(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{READY_ENV}: descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: as for the listeners: an open socket of this process, left to us by our parent under
    // this number, adopted once.
    let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    socket2::SockRef::from(&stream).set_cloexec(true)?;
    Ok(stream)
}

/// Starts `program args` as this process's successor with every listening socket of `listeners`
/// handed over, and waits up to `wait` for it to say it serves. Dropping the returned child does
/// not stop it.
pub fn hand_over(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    listeners: &[(String, SocketAddr, Vec<socket2::Socket>)],
    wait: Duration,
) -> io::Result<std::process::Child> {
    // Duplicates that survive exec; the originals keep serving here until the drain.
    let mut keep = Vec::new();
    let mut spec = String::new();
    for (name, address, sockets) in listeners {
        let mut fds = Vec::new();
        for socket in sockets {
            let copy = socket.try_clone()?;
            copy.set_cloexec(false)?;
            fds.push(copy.as_raw_fd().to_string());
            keep.push(copy);
        }
        spec.push_str(&format!("{name}@{address}={};", fds.join(",")));
    }
    let (mut ours, theirs) = UnixStream::pair()?;
    let theirs = socket2::Socket::from(theirs);
    theirs.set_cloexec(false)?;
    let child = std::process::Command::new(program)
        .args(args)
        .env(LISTENERS_ENV, &spec)
        .env(READY_ENV, theirs.as_raw_fd().to_string())
        .spawn();
    // The child has its copies (or failed to start): ours close here.
    drop(keep);
    drop(theirs);
    let mut child = child?;
    ours.set_read_timeout(Some(wait))?;
    let mut answer = [0u8; 6];
    match ours.read_exact(&mut answer) {
        Ok(()) if &answer == b"ready\n" => Ok(child),
        outcome => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match outcome {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    format!("it did not say it serves within {wait:?}")
                }
                Err(e) => format!("it stopped before serving ({e})"),
                Ok(()) => "it answered something else than ready".to_owned(),
            };
            Err(io::Error::other(format!("the new process was not started: {why}")))
        }
    }
}
