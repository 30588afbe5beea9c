//! Binding listening sockets: one `SO_REUSEPORT` socket per listener and worker.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;

/// A configured listener with its bound sockets, one per worker.
pub struct BoundListener {
    pub name: String,
    /// The bound address (the real port when the config said port 0).
    pub address: SocketAddr,
    pub sockets: Vec<TcpListener>,
}

/// Binds `count` sockets on `address`. With port 0 the first socket picks the port and the others
/// join it, so all workers share one port.
pub fn bind(name: &str, address: SocketAddr, count: usize) -> io::Result<BoundListener> {
    let mut sockets = Vec::with_capacity(count);
    let mut actual = address;
    for _ in 0..count.max(1) {
        let socket = bind_one(actual)
            .map_err(|e| io::Error::new(e.kind(), format!("listener {name} cannot bind {address}: {e}")))?;
        actual = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(BoundListener { name: name.to_owned(), address: actual, sockets })
}

/// A listener on sockets handed over by the process this one replaces; with fewer sockets than
/// `count`, more are bound at the same address (they join the same `SO_REUSEPORT` group).
pub fn adopt(name: &str, mut sockets: Vec<TcpListener>, count: usize) -> io::Result<BoundListener> {
    let address = sockets
        .first()
        .ok_or_else(|| io::Error::other(format!("listener {name}: no socket handed over")))?
        .local_addr()?;
    while sockets.len() < count {
        sockets.push(bind_one(address)?);
    }
    Ok(BoundListener { name: name.to_owned(), address, sockets })
}

/// Binds one `SO_REUSEPORT` socket (the admin listener uses it too, so that a new process can
/// bind the same address during a binary upgrade).
pub fn bind_one(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
