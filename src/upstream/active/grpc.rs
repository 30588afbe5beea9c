//! The gRPC probe of active health checks (`health_check: { type: grpc }`): one unary
//! `grpc.health.v1.Health/Check` call over cleartext HTTP/2 with prior knowledge (h2c), and the
//! tiny protobuf codec it needs.
//!
//! Runs on the health-check thread (`active.rs`), never on the request path. The two messages are
//! one string and one enum, so they are encoded and decoded by hand here: about a hundred lines, where
//! prost would bring a code generator (or checked-in generated code) and more crates into the
//! gateway for two fields. The decoder reads what a broken or hostile endpoint may send: every
//! malformed answer is an `Err` with a reason for the log, never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};

const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// The most of a response body read: a health answer is a handful of bytes.
const MAX_BODY: usize = 64 * 1024;
/// The gRPC message prefix: a compressed flag and a big-endian length.
const PREFIX_LEN: usize = 5;

/// Asks the server at the other end of `stream` whether `service` ("": the whole server) is
/// serving. `Ok` only for HTTP 200, `grpc-status: 0` and a `SERVING` answer.
pub async fn check<I>(stream: I, authority: &str, service: &str) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let message = encode_request(service)?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{authority}{CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, super::USER_AGENT)
        .body(Full::new(message))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", response.status().as_u16()));
    }
    let (head, body) = response.into_parts();
    // A trailers-only answer puts grpc-status in the headers: that is how a server refuses at
    // once, NOT_FOUND for a service it does not know.
    let early = grpc_status(&head.headers)?;
    if let Some(failed) = early.as_ref().filter(|s| s.code != 0) {
        return Err(failed.to_string());
    }
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| format!("response body: {e}"))?;
    let late = match body.trailers() {
        Some(trailers) => grpc_status(trailers)?,
        None => None,
    };
    match late.or(early) {
        None => return Err("no grpc-status in the trailers".into()),
        Some(s) if s.code != 0 => return Err(s.to_string()),
        Some(_) => {}
    }
    let status = decode_response(decode_frame(&body.to_bytes())?)?;
    if status != ServingStatus::SERVING {
        return Err(format!("status {}", status.name()));
    }
    Ok(())
}

/// A `grpc-status` and its `grpc-message`, for the log.
struct GrpcStatus {
    code: u32,
    message: String,
}

impl std::fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        let name = usize::try_from(self.code).ok().and_then(|i| NAMES.get(i)).unwrap_or(&"?");
        write!(f, "grpc-status {} {name}", self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The `grpc-status` in these headers or trailers, if there is one.
fn grpc_status(headers: &HeaderMap) -> Result<Option<GrpcStatus>, String> {
    let Some(value) = headers.get("grpc-status") else { return Ok(None) };
    let text = String::from_utf8_lossy(value.as_bytes());
    let code = text.trim().parse().map_err(|_| format!("grpc-status \"{}\" is not a number", short(&text)))?;
    // Percent-encoded by the spec; shown as sent, cut short: it only goes to the log.
    let message =
        headers.get("grpc-message").map(|m| short(&String::from_utf8_lossy(m.as_bytes()))).unwrap_or_default();
    Ok(Some(GrpcStatus { code, message }))
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

/// `HealthCheckRequest { string service = 1; }` in a gRPC frame (uncompressed).
fn encode_request(service: &str) -> Result<Bytes, String> {
    let mut message = BytesMut::new();
    // proto3 leaves a field at its default (the empty string) out.
    if !service.is_empty() {
        message.put_u8((1 << 3) | WireType::LEN);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let len = u32::try_from(message.len()).map_err(|_| "the service name is too long".to_owned())?;
    let mut frame = BytesMut::with_capacity(PREFIX_LEN + message.len());
    frame.put_u8(0);
    frame.put_u32(len);
    frame.put_slice(&message);
    Ok(frame.freeze())
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// The one message of a unary response body: the 5-byte prefix, then exactly that many bytes.
fn decode_frame(body: &[u8]) -> Result<&[u8], String> {
    let Some((prefix, rest)) = body.split_first_chunk::<PREFIX_LEN>() else {
        return Err(if body.is_empty() {
            "no response message".into()
        } else {
            format!("truncated message prefix ({} bytes)", body.len())
        });
    };
    let [flag, len @ ..] = *prefix;
    match flag {
        0 => {}
        1 => return Err("compressed response message (no compression was offered)".into()),
        other => return Err(format!("bad compressed flag {other}")),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > rest.len() {
        return Err(format!("truncated message: {len} bytes announced, {} arrived", rest.len()));
    }
    if len < rest.len() {
        return Err(format!("{} bytes after the {len}-byte message", rest.len() - len));
    }
    Ok(rest)
}

/// `HealthCheckResponse.ServingStatus`; other values are kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServingStatus(u64);

impl ServingStatus {
    const SERVING: ServingStatus = ServingStatus(1);

    fn name(self) -> String {
        match self.0 {
            0 => "UNKNOWN".into(),
            1 => "SERVING".into(),
            2 => "NOT_SERVING".into(),
            3 => "SERVICE_UNKNOWN".into(),
            other => format!("{other} (not a ServingStatus)"),
        }
    }
}

/// `HealthCheckResponse { ServingStatus status = 1; }`; other fields are skipped.
fn decode_response(message: &[u8]) -> Result<ServingStatus, String> {
    let mut reader = Reader { rest: message };
    let mut status = None;
    while !reader.rest.is_empty() {
        let (field, wire) = reader.key()?;
        match (field, wire) {
            // The last value wins, as in every protobuf decoder.
            (1, WireType::VARINT) => status = Some(ServingStatus(reader.varint()?)),
            (1, other) => return Err(format!("field 1 (status) has wire type {other}, not varint")),
            _ => reader.skip_field(field, wire)?,
        }
    }
    // proto3 leaves UNKNOWN (0) out, so an absent status is UNKNOWN: not serving either way.
    status.ok_or_else(|| "the response has no status (UNKNOWN)".to_owned())
}

/// Protobuf wire types.
struct WireType;

impl WireType {
    const VARINT: u8 = 0;
    const I64: u8 = 1;
    const LEN: u8 = 2;
    const SGROUP: u8 = 3;
    const EGROUP: u8 = 4;
    const I32: u8 = 5;
}

/// Reads protobuf wire format from the front of a slice; every read checks what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

// === impl Reader ===

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.rest.split_first() else {
                return Err("truncated varint".into());
            };
            self.rest = rest;
            // The tenth byte holds only bit 63: more is an overflow, a continuation an 11th byte.
            if i == 9 && byte > 1 {
                return Err("varint longer than 64 bits".into());
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 64 bits".into())
    }

    /// A field's key: its number and wire type.
    fn key(&mut self) -> Result<(u64, u8), String> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("bad field number {field}"));
        }
        Ok((field, (key & 7) as u8))
    }

    fn skip(&mut self, len: u64) -> Result<(), String> {
        let split = usize::try_from(len).ok().and_then(|n| self.rest.split_at_checked(n));
        let Some((_, rest)) = split else {
            return Err(format!("field of {len} bytes, {} left", self.rest.len()));
        };
        self.rest = rest;
        Ok(())
    }

    /// Skips the value of a field of this wire type, groups (deprecated, still valid) included.
    fn skip_field(&mut self, field: u64, wire: u8) -> Result<(), String> {
        if wire != WireType::SGROUP {
            return self.skip_value(field, wire);
        }
        // Fields up to the matching end-group, nested groups too; a loop, so depth costs no stack.
        let mut open = vec![field];
        while let Some(&group) = open.last() {
            match self.key()? {
                (inner, WireType::SGROUP) => open.push(inner),
                (end, WireType::EGROUP) if end == group => {
                    open.pop();
                }
                (end, WireType::EGROUP) => return Err(format!("group {group} closed as {end}")),
                (inner, wire) => self.skip_value(inner, wire)?,
            }
        }
        Ok(())
    }

    fn skip_value(&mut self, field: u64, wire: u8) -> Result<(), String> {
        match wire {
            WireType::VARINT => self.varint().map(drop),
            WireType::I64 => self.skip(8),
            WireType::LEN => {
                let len = self.varint()?;
                self.skip(len)
            }
            WireType::I32 => self.skip(4),
            WireType::EGROUP => Err(format!("end of group {field} that was not started")),
            other => Err(format!("field {field} has invalid wire type {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn status_of(body: &[u8]) -> Result<ServingStatus, String> {
        decode_response(decode_frame(body)?)
    }

    #[test]
    fn requests_are_encoded_as_protobuf_in_a_grpc_frame() {
        assert_eq!(&encode_request("").unwrap()[..], [0, 0, 0, 0, 0]);
        assert_eq!(&encode_request("users.v1.Users").unwrap()[..], &frame(b"\x0a\x0eusers.v1.Users")[..]);
        // A name of 200 bytes has a two-byte length varint.
        let long = "s".repeat(200);
        let encoded = encode_request(&long).unwrap();
        assert_eq!(&encoded[5..8], [0x0a, 0xc8, 0x01]);
        assert_eq!(encoded.len(), 5 + 3 + 200);
    }

    #[test]
    fn serving_statuses_decode() {
        assert_eq!(status_of(&frame(&[0x08, 0x01])), Ok(ServingStatus::SERVING));
        assert_eq!(status_of(&frame(&[0x08, 0x02])), Ok(ServingStatus(2)));
        // The last value wins.
        assert_eq!(status_of(&frame(&[0x08, 0x02, 0x08, 0x01])), Ok(ServingStatus::SERVING));
        // An absent status is UNKNOWN, and said so.
        assert_eq!(status_of(&frame(&[])).unwrap_err(), "the response has no status (UNKNOWN)");
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut message = Vec::new();
        message.extend_from_slice(&[0x10, 0xff, 0xff, 0x03]); // 2: varint
        message.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // 3: i64
        message.extend_from_slice(&[0x22, 3, b'a', b'b', b'c']); // 4: len
        message.extend_from_slice(&[0x2d, 1, 2, 3, 4]); // 5: i32
        // 6: a group holding a varint, a nested group 7 with a string, then its end.
        message.extend_from_slice(&[0x33, 0x08, 0x05, 0x3b, 0x0a, 0x01, b'x', 0x3c, 0x34]);
        message.extend_from_slice(&[0x80, 0x01, 0x00]); // 16: a two-byte key
        message.extend_from_slice(&[0x08, 0x01]); // 1: SERVING
        message.extend_from_slice(&[0x22, 0]); // 4 again, empty
        assert_eq!(status_of(&frame(&message)), Ok(ServingStatus::SERVING));
    }

    #[test]
    fn truncated_frames_fail() {
        assert_eq!(status_of(b"").unwrap_err(), "no response message");
        assert!(status_of(&[0, 0, 0]).unwrap_err().contains("truncated message prefix"));
        let mut short = frame(&[0x08, 0x01]);
        short.pop();
        assert!(status_of(&short).unwrap_err().contains("2 bytes announced, 1 arrived"));
    }

    #[test]
    fn a_length_beyond_the_body_fails() {
        let huge = [0, 0xff, 0xff, 0xff, 0xff, 0x08, 0x01];
        assert!(status_of(&huge).unwrap_err().contains("4294967295 bytes announced"));
        let mut extra = frame(&[0x08, 0x01]);
        extra.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(status_of(&extra).unwrap_err().contains("5 bytes after"));
        // A length-delimited field longer than the message.
        assert!(status_of(&frame(&[0x12, 0x7f, 0x00])).unwrap_err().contains("field of 127 bytes, 1 left"));
        assert!(status_of(&frame(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f])).is_err());
    }

    #[test]
    fn compressed_or_odd_flags_fail() {
        let mut compressed = frame(&[0x08, 0x01]);
        compressed[0] = 1;
        assert!(status_of(&compressed).unwrap_err().contains("compressed"));
        compressed[0] = 7;
        assert_eq!(status_of(&compressed).unwrap_err(), "bad compressed flag 7");
    }

    #[test]
    fn bad_varints_fail() {
        // Truncated: the continuation bit set on the last byte.
        assert_eq!(status_of(&frame(&[0x08, 0x81])).unwrap_err(), "truncated varint");
        assert_eq!(status_of(&frame(&[0x88])).unwrap_err(), "truncated varint");
        // Eleven bytes, and ten whose last byte overflows 64 bits.
        let eleven = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(status_of(&frame(&eleven)).unwrap_err(), "varint longer than 64 bits");
        let overflow = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(status_of(&frame(&overflow)).unwrap_err(), "varint longer than 64 bits");
        // The largest ten-byte varint is fine (and not SERVING).
        let max = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(status_of(&frame(&max)), Ok(ServingStatus(u64::MAX)));
    }

    #[test]
    fn malformed_fields_fail() {
        assert!(status_of(&frame(&[0x0a, 0x01, 0x01])).unwrap_err().contains("wire type 2, not varint"));
        assert!(status_of(&frame(&[0x00, 0x01])).unwrap_err().contains("bad field number 0"));
        assert!(status_of(&frame(&[0x16, 0x01])).unwrap_err().contains("invalid wire type 6"));
        assert!(status_of(&frame(&[0x17, 0x01])).unwrap_err().contains("invalid wire type 7"));
        assert!(status_of(&frame(&[0x14])).unwrap_err().contains("not started"));
        // A group never closed, and one closed under another number.
        assert_eq!(status_of(&frame(&[0x13, 0x08, 0x01])).unwrap_err(), "truncated varint");
        assert!(status_of(&frame(&[0x13, 0x24])).unwrap_err().contains("group 2 closed as 4"));
        // A key whose field number does not fit 29 bits.
        assert!(status_of(&frame(&[0xf8, 0xff, 0xff, 0xff, 0x7f])).unwrap_err().contains("bad field number"));
    }

    #[test]
    fn grpc_statuses_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert!(grpc_status(&headers).unwrap().is_none());
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "unknown%20service".parse().unwrap());
        let status = grpc_status(&headers).unwrap().unwrap();
        assert_eq!(status.code, 5);
        assert_eq!(status.to_string(), "grpc-status 5 NOT_FOUND: unknown%20service");
        headers.insert("grpc-status", "99".parse().unwrap());
        assert!(grpc_status(&headers).unwrap().unwrap().to_string().starts_with("grpc-status 99 ?"));
        headers.insert("grpc-status", "ok".parse().unwrap());
        assert!(grpc_status(&headers).is_err());
    }
}
