//! Clients for tests: a hyper HTTP/1.1 client on one keep-alive connection, and raw TCP for
//! malformed and hostile requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error.code` of a gateway error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// One keep-alive connection to the gateway.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Client { sender, addr }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], "").await
    }

    /// Sends a request with a Host header of the gateway's address unless one is given.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            builder = builder.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(Bytes::from(body.to_owned()))).expect("request");
        self.send(req).await
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send_raw(&mut self, req: Request<Full<Bytes>>) -> http::Response<hyper::body::Incoming> {
        self.sender.ready().await.expect("connection ready");
        self.sender.send_request(req).await.expect("response")
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.send_raw(req).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path).await
}

/// A raw TCP connection for requests hyper's client would refuse to send.
pub struct RawConn {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn { stream: TcpStream::connect(addr).await.expect("connect"), buffer: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one response (Content-Length, chunked, or until close). `None` if the connection
    /// closed (or nothing came within `timeout`) before a complete head arrived.
    pub async fn read_response(&mut self, timeout: Duration) -> Option<RawReply> {
        let deadline = Instant::now() + timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buffer, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill(deadline).await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end);
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut reply = RawReply { status, head, body: Vec::new() };
        if status == 100 || status == 101 || status == 204 || status == 304 {
            return Some(reply);
        }
        if let Some(len) = reply.header("content-length").and_then(|l| l.parse::<usize>().ok()) {
            while self.buffer.len() < len {
                if !self.fill(deadline).await {
                    break;
                }
            }
            let n = len.min(self.buffer.len());
            reply.body = self.buffer.drain(..n).collect();
        } else if reply.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buffer, b"\r\n") {
                        break i;
                    }
                    if !self.fill(deadline).await {
                        return Some(reply);
                    }
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buffer[..line_end]).trim(), 16).unwrap_or(0);
                self.buffer.drain(..line_end + 2);
                while self.buffer.len() < size + 2 {
                    if !self.fill(deadline).await {
                        return Some(reply);
                    }
                }
                reply.body.extend(self.buffer.drain(..size));
                self.buffer.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill(deadline).await {}
            reply.body = std::mem::take(&mut self.buffer);
        }
        Some(reply)
    }

    /// Whether the server closed the connection (EOF) within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let mut buf = [0u8; 1024];
            match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    }

    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&buf[..n]);
                true
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
