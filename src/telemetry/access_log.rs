//! The access log: one JSON line per request, written by a dedicated thread.
//!
//! Workers format a line and hand it over a bounded channel; they never wait for the disk. If the
//! writer falls behind and the channel is full, lines are dropped and counted (and the count is
//! logged), rather than slowing down traffic.
//!
//! What is never logged: request and response headers other than `User-Agent` (so no
//! `Authorization`, `Cookie` or API key headers), and the query string (API keys and tokens are
//! often passed there). The path is logged after normalisation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

const CHANNEL_LINES: usize = 65_536;

/// One request, as the access log line sees it.
pub struct LogLine<'a> {
    pub time: SystemTime,
    pub listener: &'a str,
    pub request_id: Option<&'a [u8]>,
    /// With tracing on: the W3C trace id (32 hex digits).
    pub trace_id: Option<&'a str>,
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream_latency: Option<Duration>,
    pub user_agent: Option<&'a [u8]>,
    pub error: Option<&'a str>,
}

impl LogLine<'_> {
    /// The JSON line, with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(320);
        out.push_str("{\"time\":\"");
        let _ = write!(out, "{}", humantime::format_rfc3339_millis(self.time));
        out.push_str("\",\"listener\":");
        push_json_str(&mut out, self.listener.as_bytes());
        out.push_str(",\"request_id\":");
        push_opt(&mut out, self.request_id);
        if let Some(trace_id) = self.trace_id {
            out.push_str(",\"trace_id\":");
            push_json_str(&mut out, trace_id.as_bytes());
        }
        let _ = write!(out, ",\"client\":\"{}\",\"peer\":\"{}\",\"method\":", self.client, self.peer);
        push_json_str(&mut out, self.method.as_bytes());
        out.push_str(",\"path\":");
        push_json_str(&mut out, self.path.as_bytes());
        out.push_str(",\"route\":");
        push_opt(&mut out, self.route.map(str::as_bytes));
        out.push_str(",\"consumer\":");
        push_opt(&mut out, self.consumer.map(str::as_bytes));
        out.push_str(",\"upstream\":");
        push_opt(&mut out, self.upstream.map(str::as_bytes));
        let _ = write!(
            out,
            ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream_ms\":",
            self.status,
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64() * 1000.0
        );
        match self.upstream_latency {
            Some(d) => {
                let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"user_agent\":");
        push_opt(&mut out, self.user_agent);
        if let Some(error) = self.error {
            out.push_str(",\"error\":");
            push_json_str(&mut out, error.as_bytes());
        }
        out.push_str("}\n");
        out
    }
}

fn push_opt(out: &mut String, value: Option<&[u8]>) {
    match value {
        Some(v) => push_json_str(out, v),
        None => out.push_str("null"),
    }
}

/// A JSON string from arbitrary bytes: non-UTF-8 bytes become U+FFFD, control characters are escaped.
fn push_json_str(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A destination for access log lines, shared by all workers.
pub struct AccessLogWriter {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogWriter {
    /// The writer for `path` (`stdout`, `stderr` or a file), shared with earlier snapshots that use
    /// the same destination.
    pub fn open(path: &str) -> io::Result<Arc<AccessLogWriter>> {
        static WRITERS: OnceLock<Mutex<HashMap<String, Weak<AccessLogWriter>>>> = OnceLock::new();
        let mut writers = WRITERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get(path).and_then(Weak::upgrade) {
            return Ok(w);
        }
        let out: Box<dyn Write + Send> = match path {
            "stdout" | "-" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            file => Box::new(OpenOptions::new().create(true).append(true).open(file)?),
        };
        let (tx, rx) = sync_channel(CHANNEL_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread_dropped = dropped.clone();
        std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(rx, out, thread_dropped))?;
        let writer = Arc::new(AccessLogWriter { tx, dropped });
        writers.retain(|_, w| w.strong_count() > 0);
        writers.insert(path.to_owned(), Arc::downgrade(&writer));
        Ok(writer)
    }

    pub fn write(&self, line: &LogLine<'_>) {
        match self.tx.try_send(line.to_json()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>, dropped: Arc<AtomicU64>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut reported = 0;
    // Ends when every sender (snapshot) using this destination is gone.
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            tracing::warn!(dropped = now - reported, "access log writer fell behind; lines were dropped");
            reported = now;
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_valid_json_even_with_hostile_bytes() {
        let line = LogLine {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            listener: "public",
            request_id: Some(b"abc\"\n"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            client: "10.0.0.1".parse().unwrap(),
            peer: "10.0.0.2:5000".parse().unwrap(),
            method: "GET",
            path: "/a\\b",
            route: Some("users"),
            consumer: None,
            upstream: None,
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            duration: Duration::from_micros(1500),
            upstream_latency: Some(Duration::from_micros(1000)),
            user_agent: Some(b"\xff\x01evil\xe2\x80\xa8"),
            error: None,
        };
        let json = line.to_json();
        assert!(json.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["request_id"], "abc\"\n");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["path"], "/a\\b");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_ms"], 1.0);
        assert_eq!(v["user_agent"], "\u{fffd}\u{1}evil\u{2028}");
        assert!(!json.contains('\u{2028}'), "line separators are escaped for log shippers");
    }
}
