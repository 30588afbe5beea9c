#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Heap allocations per proxied request: every allocation costs CPU on the request path and memory
//! under load, so the count is held to a budget. A binary of its own, because it counts every
//! allocation of the process: the upstream and the client here are plain blocking sockets with
//! fixed buffers that allocate nothing per request, so what the count grows by is the gateway's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse::config::ConfigSource;
use gatehouse::{Gateway, StartOptions};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; only a counter is added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nhello world!\n";

/// An upstream answering every request head on a keep-alive connection with `ANSWER`.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match stream.read(&mut buf[filled..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        if stream.write_all(ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` GETs on one keep-alive connection, reading each answer whole.
fn requests(addr: SocketAddr, n: usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let request =
        b"GET /items/42?x=1 HTTP/1.1\r\nhost: api.example.com\r\nuser-agent: counter/1\r\naccept: */*\r\n\r\n";
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        stream.write_all(request).unwrap();
        let mut filled = 0;
        loop {
            let read = stream.read(&mut buf[filled..]).unwrap();
            assert!(read > 0, "the connection closed");
            filled += read;
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                if filled >= end + 4 + 13 {
                    break;
                }
            }
        }
    }
}

/// Allocations made while `n` requests go to `addr`, per request.
fn per_request(addr: SocketAddr, n: usize) -> f64 {
    requests(addr, 200);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    requests(addr, n);
    (ALLOCATIONS.load(Ordering::SeqCst) - before) as f64 / n as f64
}

#[test]
fn a_proxied_request_allocates_within_its_budget() {
    let upstream = upstream();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ workers: 1 }}\nadmin: {{ enabled: false }}\n\
             listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
             upstreams:\n  backend: {{ endpoints: [\"http://{upstream}\"] }}\n\
             routes:\n  - name: all\n    upstream: backend\n"
        ),
    )
    .unwrap();
    let gateway = Gateway::start(StartOptions::new(ConfigSource::File(config))).unwrap();
    let proxy = gateway.shared().listeners()[0].1;
    let direct = per_request(upstream, 2000);
    let proxied = per_request(proxy, 2000);
    let gateway_share = proxied - direct;
    println!("allocations per request: {direct:.2} direct, {proxied:.2} through the gateway");
    // Ten: hyper's server takes the request's header map (1) and its read buffer again while the
    // request's head is still referenced (1); the map grows once for the headers the gateway adds
    // (2). gatehouse: the request id (1), the tries' future (1), the upstream request head (1), the
    // response's header map (2) and the shared head its values point into (1). Spare read
    // buffers, the inline write queue and header positions on the stack keep the rest at zero;
    // more is a regression (the fraction is the worker's periodic tick).
    assert!(gateway_share <= 10.5, "{gateway_share:.2} allocations per proxied request (budget 10)");
    assert!(gateway_share >= 1.0, "counting works: {gateway_share:.2}");
}
