//! Request path normalisation, applied before route matching.
//!
//! The normalised path is both what routes are matched against and what is
//! forwarded upstream, so a request can only reach a route (and skip or pass
//! its policies) in the same way its plain spelling would. `/public/../admin`,
//! `/%61dmin`, `//admin` and `/public/..;/admin` all either become `/admin`
//! or are refused; none of them can slip past a policy on `/admin`.
//!
//! The input is the path component only (no query string), as
//! `hyper::Uri::path()` returns it. The rules, in the order they apply while
//! the path is read from left to right (the first problem found is the one
//! reported):
//!
//! 1. **Origin form.** The path must start with `/`; anything else (`*`,
//!    an empty path, an absolute URI) is refused with
//!    [`PathError::NotOriginForm`].
//! 2. **Characters.** Only printable ASCII is accepted. Control characters
//!    (bytes below `0x20` and `0x7F`) are refused with
//!    [`PathError::ControlCharacter`]; any other byte outside printable ASCII
//!    with [`PathError::NonAscii`]. Clients must percent-encode such
//!    characters.
//! 3. **Percent-encoding.** Every `%` must be followed by two hex digits, or
//!    the request is refused with [`PathError::InvalidPercentEncoding`].
//!    Decoding happens exactly once: `%252e` is the literal text `%2e`, not a
//!    dot, and is forwarded as `%252e` (only the hex digits of a
//!    percent-encoding are upper-cased, never the text after it).
//!    - Encoded unreserved characters (letters, digits, `-`, `.`, `_`, `~`)
//!      are decoded: `/%61dmin` is `/admin`.
//!    - Encoded control characters (`%00`–`%1F`, `%7F`) are refused with
//!      [`PathError::ControlCharacter`].
//!    - Encoded slashes `%2F` and backslashes `%5C` follow
//!      [`EscapedSlashes`]: `Reject` (the default) refuses them with
//!      [`PathError::EscapedSlash`]; `Decode` turns them into a real `/`, so
//!      they take part in dot-segment resolution and slash merging; `Keep`
//!      leaves them in the segment they appear in, written `%2F` / `%5C`.
//!    - A literal `\` is handled exactly like `%5C` (`Keep` forwards it as
//!      `%5C`), because several upstream servers treat it as a separator.
//!    - Every other encoding is left encoded, with its hex digits written in
//!      upper case: `%c3%a9` becomes `%C3%A9`.
//! 4. **Dot segments.** `.` and `..` segments, including ones spelled with
//!    encodings such as `%2e%2E` or `.%2e`, are resolved as in RFC 3986
//!    section 5.2.4. `..` at the root stays at the root, so
//!    `/../../etc/passwd` is `/etc/passwd`. A segment that is `.` or `..`
//!    followed by a `;` (written `;` or `%3B`), such as `..;` or
//!    `.;jsessionid=x`, is refused with [`PathError::DotSegmentParameter`]:
//!    servlet containers strip the parameter and then resolve the dot
//!    segment, so `/public/..;/admin` would reach `/admin` upstream while
//!    matching `/public` here.
//! 5. **Slashes.** With [`PathOptions::merge_slashes`] (the default), runs of
//!    `/` become one: `//admin` is `/admin`. A trailing slash is kept
//!    (`/users/` stays `/users/`), and a dot segment at the end of the path
//!    leaves one: `/a/b/..` is `/a/` and `/a/.` is `/a/`.
//! 6. **Case.** Nothing else changes: letters are not case-folded (`/ADMIN`
//!    stays `/ADMIN`); route matching is case-sensitive.
//!
//! With [`EscapedSlashes::Keep`], a kept `%2F` is part of a segment name, so
//! `/a%2F..%2Fb` is forwarded unchanged. Only choose `Keep` for upstreams
//! that do not decode `%2F` into a path separator themselves.
//!
//! A path that needs no change is returned borrowed, without allocating;
//! [`Cow::Borrowed`] is returned exactly when the result equals the input.

use crate::text::hex_value;
use std::borrow::Cow;
use std::fmt;

/// What to do with `%2F`, `%5C` and a literal `\` in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request with [`PathError::EscapedSlash`].
    #[default]
    Reject,
    /// Treat them as a real `/` separator.
    Decode,
    /// Keep them inside their segment, written as `%2F` / `%5C`.
    Keep,
}

/// How request paths are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub escaped_slashes: EscapedSlashes,
    /// Collapse runs of `/` into a single `/`.
    pub merge_slashes: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self { escaped_slashes: EscapedSlashes::Reject, merge_slashes: true }
    }
}

/// Why a request path was refused; each maps to a `400 Bad Request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    InvalidPercentEncoding,
    ControlCharacter,
    EscapedSlash,
    DotSegmentParameter,
    NonAscii,
}

impl PathError {
    /// Short text for the body of the 400 response.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOriginForm => "request path must start with '/'",
            Self::InvalidPercentEncoding => "malformed percent-encoding in request path",
            Self::ControlCharacter => "control character in request path",
            Self::EscapedSlash => "encoded slash or backslash in request path",
            Self::DotSegmentParameter => "dot segment with parameters in request path",
            Self::NonAscii => "non-ASCII character in request path",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// Normalises `path` according to the rules in the module documentation.
pub fn normalize_path<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if needs_no_rewrite(bytes) {
        // Without these markers every segment is copied verbatim, so only the
        // characters still need checking.
        return match bytes.iter().find(|&&b| !is_printable(b)) {
            Some(&b) => Err(char_error(b)),
            None => Ok(Cow::Borrowed(path)),
        };
    }
    rewrite(path, opts)
}

fn needs_no_rewrite(bytes: &[u8]) -> bool {
    memchr::memchr2(b'%', b'\\', bytes).is_none()
        && memchr::memmem::find(bytes, b"//").is_none()
        && memchr::memmem::find(bytes, b"/.").is_none()
}

fn is_printable(b: u8) -> bool {
    (0x20..0x7F).contains(&b)
}

fn char_error(b: u8) -> PathError {
    if b < 0x20 || b == 0x7F { PathError::ControlCharacter } else { PathError::NonAscii }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Output that stays a prefix of the input for as long as it can.
///
/// Most paths that take the slow route (`/.well-known/x`, `/a/`) come out
/// unchanged or as a prefix of the input, so bytes are only compared against
/// the input until the first one differs; only then is a buffer allocated.
struct Output<'a> {
    input: &'a [u8],
    /// `None` while the output is `input[..len]`.
    owned: Option<Vec<u8>>,
    len: usize,
}

impl<'a> Output<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input, owned: None, len: 0 }
    }

    fn len(&self) -> usize {
        match &self.owned {
            Some(buf) => buf.len(),
            None => self.len,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.owned {
            Some(buf) => buf,
            None => &self.input[..self.len],
        }
    }

    fn push(&mut self, byte: u8) {
        self.extend(&[byte]);
    }

    fn extend(&mut self, bytes: &[u8]) {
        if let Some(buf) = &mut self.owned {
            buf.extend_from_slice(bytes);
            return;
        }
        let end = self.len + bytes.len();
        if self.input.get(self.len..end) == Some(bytes) {
            self.len = end;
            return;
        }
        // Under `Keep` a literal `\` grows into `%5C`, so the output can
        // outgrow the input; hence the headroom.
        let mut buf = Vec::with_capacity(self.input.len() + 8);
        buf.extend_from_slice(&self.input[..self.len]);
        buf.extend_from_slice(bytes);
        self.owned = Some(buf);
    }

    fn truncate(&mut self, len: usize) {
        match &mut self.owned {
            Some(buf) => buf.truncate(len),
            None => self.len = self.len.min(len),
        }
    }

    fn finish(self, path: &'a str) -> Result<Cow<'a, str>, PathError> {
        match self.owned {
            None if self.len == path.len() => Ok(Cow::Borrowed(path)),
            Some(buf) if buf == path.as_bytes() => Ok(Cow::Borrowed(path)),
            None => Ok(Cow::Owned(path.get(..self.len).unwrap_or_default().to_owned())),
            // Only ASCII is ever written, so this cannot fail; if it somehow
            // did, refusing is the safe answer.
            Some(buf) => String::from_utf8(buf).map(Cow::Owned).map_err(|_| PathError::NonAscii),
        }
    }
}

enum Segment {
    Empty,
    Dot,
    DotDot,
    DotWithParameter,
    Name,
}

fn classify(segment: &[u8]) -> Segment {
    match segment {
        b"" => Segment::Empty,
        b"." => Segment::Dot,
        b".." => Segment::DotDot,
        // The segment is already normalised, so `%3b` has become `%3B` and
        // `%2e` has become `.`.
        [b'.', b';', ..] | [b'.', b'.', b';', ..] => Segment::DotWithParameter,
        [b'.', b'%', b'3', b'B', ..] | [b'.', b'.', b'%', b'3', b'B', ..] => Segment::DotWithParameter,
        _ => Segment::Name,
    }
}

/// One unit of input: a byte, a percent-encoding, or a separator.
enum Piece {
    Separator,
    Byte(u8),
    /// A byte that stays percent-encoded.
    Encoded(u8),
    Text(&'static [u8]),
}

fn escaped_slash(opts: &PathOptions, written: &'static [u8]) -> Result<Piece, PathError> {
    match opts.escaped_slashes {
        EscapedSlashes::Reject => Err(PathError::EscapedSlash),
        EscapedSlashes::Decode => Ok(Piece::Separator),
        EscapedSlashes::Keep => Ok(Piece::Text(written)),
    }
}

/// Reads the piece starting with `byte` at `input[pos]`; returns it with the
/// number of input bytes it spans.
fn read_piece(input: &[u8], pos: usize, byte: u8, opts: &PathOptions) -> Result<(Piece, usize), PathError> {
    match byte {
        b'/' => Ok((Piece::Separator, 1)),
        b'\\' => Ok((escaped_slash(opts, b"%5C")?, 1)),
        b'%' => {
            let digit = |at: usize| input.get(at).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (digit(pos + 1), digit(pos + 2)) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            let piece = match high << 4 | low {
                b'/' => escaped_slash(opts, b"%2F")?,
                b'\\' => escaped_slash(opts, b"%5C")?,
                v if v < 0x20 || v == 0x7F => return Err(PathError::ControlCharacter),
                v if is_unreserved(v) => Piece::Byte(v),
                v => Piece::Encoded(v),
            };
            Ok((piece, 3))
        }
        b if is_printable(b) => Ok((Piece::Byte(b), 1)),
        b => Err(char_error(b)),
    }
}

fn rewrite<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let input = path.as_bytes();
    let mut out = Output::new(input);
    // The leading `/` has been checked by the caller; `pos` is always just
    // past the separator that opened the current segment.
    let mut pos = 1;
    loop {
        let segment_start = out.len();
        out.push(b'/');
        let mut last = true;
        while let Some(&byte) = input.get(pos) {
            let (piece, width) = read_piece(input, pos, byte, opts)?;
            pos += width;
            match piece {
                Piece::Separator => {
                    last = false;
                    break;
                }
                Piece::Byte(b) => out.push(b),
                Piece::Encoded(v) => {
                    out.extend(&[b'%', HEX_UPPER[usize::from(v >> 4)], HEX_UPPER[usize::from(v & 0x0F)]])
                }
                Piece::Text(text) => out.extend(text),
            }
        }

        let segment = out.as_bytes().get(segment_start + 1..).unwrap_or_default();
        match classify(segment) {
            Segment::Name => {}
            Segment::Empty => {
                // An empty last segment is the trailing slash, which stays.
                if opts.merge_slashes && !last {
                    out.truncate(segment_start);
                }
            }
            Segment::Dot => {
                out.truncate(segment_start);
                if last {
                    out.push(b'/');
                }
            }
            Segment::DotDot => {
                out.truncate(segment_start);
                let parent = out.as_bytes().iter().rposition(|&b| b == b'/');
                out.truncate(parent.unwrap_or(0));
                if last {
                    out.push(b'/');
                }
            }
            Segment::DotWithParameter => return Err(PathError::DotSegmentParameter),
        }
        if last {
            return out.finish(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Reject, merge_slashes: true };
    const D: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Decode, merge_slashes: true };
    const K: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Keep, merge_slashes: true };
    const R_NOMERGE: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Reject, merge_slashes: false };
    const D_NOMERGE: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Decode, merge_slashes: false };
    const K_NOMERGE: PathOptions = PathOptions { escaped_slashes: EscapedSlashes::Keep, merge_slashes: false };
    const ALL: [PathOptions; 6] = [R, D, K, R_NOMERGE, D_NOMERGE, K_NOMERGE];

    use PathError::*;

    #[rustfmt::skip]
    const CASES: &[(&str, PathOptions, Result<&str, PathError>)] = &[
        // Unchanged paths.
        ("/", R, Ok("/")),
        ("/users", R, Ok("/users")),
        ("/users/", R, Ok("/users/")),
        ("/admin/", R, Ok("/admin/")),
        ("/ADMIN", R, Ok("/ADMIN")),
        ("/.well-known/acme", R, Ok("/.well-known/acme")),
        ("/a/.hidden/..x", R, Ok("/a/.hidden/..x")),
        ("/a/...", R, Ok("/a/...")),
        ("/a;b=c/d", R, Ok("/a;b=c/d")),
        ("/a/...;x", R, Ok("/a/...;x")),
        ("/a b", R, Ok("/a b")),
        ("/~user/a-b_c.d", R, Ok("/~user/a-b_c.d")),
        // Origin form and characters.
        ("*", R, Err(NotOriginForm)),
        ("", R, Err(NotOriginForm)),
        ("admin", R, Err(NotOriginForm)),
        ("http://example.com/admin", R, Err(NotOriginForm)),
        ("%2Fadmin", D, Err(NotOriginForm)),
        ("/é", R, Err(NonAscii)),
        ("/a/%2e%2e/é", R, Err(NonAscii)),
        ("/a\u{1}", R, Err(ControlCharacter)),
        ("/a\tb", R, Err(ControlCharacter)),
        ("/a\u{7f}", R, Err(ControlCharacter)),
        ("/a/../\u{0}", R, Err(ControlCharacter)),
        // Percent-encoding.
        ("/%61dmin", R, Ok("/admin")),
        ("/%41DMIN", R, Ok("/ADMIN")),
        ("/%7e%2D%5f%2Ex%30", R, Ok("/~-_.x0")),
        ("/caf%c3%a9", R, Ok("/caf%C3%A9")),
        ("/caf%C3%A9", R, Ok("/caf%C3%A9")),
        ("/a%20b%3f%23", R, Ok("/a%20b%3F%23")),
        ("/a%3bb", R, Ok("/a%3Bb")),
        // `%25` is re-encoded in upper case; the `2e` after it is literal
        // text, so it keeps its case.
        ("/%252e%252e/", R, Ok("/%252e%252e/")),
        ("/%252E", R, Ok("/%252E")),
        ("/a/%252F", R, Ok("/a/%252F")),
        ("/a%", R, Err(InvalidPercentEncoding)),
        ("/a%0", R, Err(InvalidPercentEncoding)),
        ("/a%2", D, Err(InvalidPercentEncoding)),
        ("/a%zz", R, Err(InvalidPercentEncoding)),
        ("/a%g0", R, Err(InvalidPercentEncoding)),
        ("/a%0g", R, Err(InvalidPercentEncoding)),
        ("/%%30", R, Err(InvalidPercentEncoding)),
        ("/%00", R, Err(ControlCharacter)),
        ("/%0a", R, Err(ControlCharacter)),
        ("/%1F", R, Err(ControlCharacter)),
        ("/%7f", R, Err(ControlCharacter)),
        ("/%zz%00", R, Err(InvalidPercentEncoding)),
        ("/%00%zz", R, Err(ControlCharacter)),
        // Escaped slashes and backslashes under each mode.
        ("/admin%2F", R, Err(EscapedSlash)),
        ("/admin%2F", D, Ok("/admin/")),
        ("/admin%2F", K, Ok("/admin%2F")),
        ("/admin%2f..%2fsecret", R, Err(EscapedSlash)),
        ("/admin%2f..%2fsecret", D, Ok("/secret")),
        ("/admin%2f..%2fsecret", K, Ok("/admin%2F..%2Fsecret")),
        ("/admin%2F%2e%2e", K, Ok("/admin%2F..")),
        ("/a%2Fb/../c", K, Ok("/c")),
        ("/a%2F%2Fb", D, Ok("/a/b")),
        ("/a%2F%2Fb", D_NOMERGE, Ok("/a//b")),
        ("/%2F", K_NOMERGE, Ok("/%2F")),
        ("/a\\b", R, Err(EscapedSlash)),
        ("/a\\b", D, Ok("/a/b")),
        ("/a\\b", K, Ok("/a%5Cb")),
        ("/a%5cb", R, Err(EscapedSlash)),
        ("/a%5cb", D, Ok("/a/b")),
        ("/a%5cb", K, Ok("/a%5Cb")),
        ("/a%5C", D, Ok("/a/")),
        ("/a%5c..%5cb", D, Ok("/b")),
        ("/a/..\\b", D, Ok("/b")),
        ("/public\\..\\admin", D, Ok("/admin")),
        ("/a/%2e%2e%2f", R, Err(EscapedSlash)),
        ("/a/%2e%2e%2f", D, Ok("/")),
        // Dot segments.
        ("/public/../admin", R, Ok("/admin")),
        ("/public/%2e%2e/admin", R, Ok("/admin")),
        ("/public/%2E%2e/admin", R, Ok("/admin")),
        ("/public/.%2e/admin", R, Ok("/admin")),
        ("/public/%2e./admin", R, Ok("/admin")),
        ("/a/./b", R, Ok("/a/b")),
        ("/a/%2e/b", R, Ok("/a/b")),
        ("/../../etc/passwd", R, Ok("/etc/passwd")),
        ("/a/../../..", R, Ok("/")),
        ("/a/b/%2e%2e/%2E/c", R, Ok("/a/c")),
        ("/a/b/..", R, Ok("/a/")),
        ("/a/b/../", R, Ok("/a/")),
        ("/a/.", R, Ok("/a/")),
        ("/a/./", R, Ok("/a/")),
        ("/..", R, Ok("/")),
        ("/.", R, Ok("/")),
        ("/%2e", R, Ok("/")),
        // Dot segments with matrix parameters.
        ("/public/..;/admin", R, Err(DotSegmentParameter)),
        ("/public/..;/admin", D, Err(DotSegmentParameter)),
        ("/public/..%3b/admin", R, Err(DotSegmentParameter)),
        ("/public/..%3B/admin", K, Err(DotSegmentParameter)),
        ("/public/.;jsessionid=x/admin", R, Err(DotSegmentParameter)),
        ("/public/%2e;/admin", R, Err(DotSegmentParameter)),
        ("/public/%2e%2e%3Bx", R, Err(DotSegmentParameter)),
        ("/..;", R, Err(DotSegmentParameter)),
        ("/a/.%3Bfoo", R, Err(DotSegmentParameter)),
        // Slashes.
        ("//admin", R, Ok("/admin")),
        ("//admin", R_NOMERGE, Ok("//admin")),
        ("/a//b", R, Ok("/a/b")),
        ("/a//b", R_NOMERGE, Ok("/a//b")),
        ("/a///", R, Ok("/a/")),
        ("/a///", R_NOMERGE, Ok("/a///")),
        ("///", R, Ok("/")),
        ("/a//..", R, Ok("/")),
        ("/a//..", R_NOMERGE, Ok("/a/")),
        ("/a/.//b", R, Ok("/a/b")),
        ("/a/.//b", R_NOMERGE, Ok("/a//b")),
        ("//../a", R_NOMERGE, Ok("/a")),
    ];

    #[test]
    fn table() {
        assert!(CASES.len() >= 60);
        for (input, opts, expected) in CASES {
            let actual = normalize_path(input, opts);
            assert_eq!(actual.as_deref().map_err(|e| *e), *expected, "input {input:?} with {opts:?}");
            if let Ok(out) = actual {
                assert_eq!(matches!(out, Cow::Borrowed(_)), out == *input, "borrowing for {input:?} with {opts:?}");
            }
        }
    }

    #[test]
    fn default_options() {
        let opts = PathOptions::default();
        assert_eq!(opts.escaped_slashes, EscapedSlashes::Reject);
        assert!(opts.merge_slashes);
    }

    #[test]
    fn reasons_are_distinct_and_displayed() {
        let all =
            [NotOriginForm, InvalidPercentEncoding, ControlCharacter, EscapedSlash, DotSegmentParameter, NonAscii];
        for (i, a) in all.iter().enumerate() {
            assert!(!a.reason().is_empty());
            assert_eq!(a.to_string(), a.reason());
            for b in &all[i + 1..] {
                assert_ne!(a.reason(), b.reason());
            }
        }
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        for path in ["/", "/users/42", "/a/", "/.well-known/x", "/a/.b", "/a%2F"] {
            let opts = if path.contains('%') { K } else { R };
            assert!(matches!(normalize_path(path, &opts), Ok(Cow::Borrowed(p)) if p == path));
        }
        assert!(matches!(normalize_path("/a//b", &R_NOMERGE), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/a/b/..", &R), Ok(Cow::Owned(p)) if p == "/a/"));
    }

    /// A second, deliberately naive implementation: decode into a list of
    /// segments first, then resolve them with a stack.
    fn reference(path: &str, opts: &PathOptions) -> Result<String, PathError> {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err(NotOriginForm);
        }
        let mut segments: Vec<String> = Vec::new();
        let mut current = String::new();
        let mut i = 1;
        let mut finish_segment = |current: &mut String| {
            let s = std::mem::take(current);
            for dot in [".", ".."] {
                for param in [";", "%3B"] {
                    if s.starts_with(&format!("{dot}{param}")) {
                        return Err(DotSegmentParameter);
                    }
                }
            }
            segments.push(s);
            Ok(())
        };
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            let slash = match b {
                b'/' => {
                    finish_segment(&mut current)?;
                    continue;
                }
                b'\\' => "%5C",
                b'%' => {
                    let hex = bytes.get(i..i + 2).ok_or(InvalidPercentEncoding)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(InvalidPercentEncoding);
                    }
                    let hex = std::str::from_utf8(hex).unwrap();
                    let v = u8::from_str_radix(hex, 16).unwrap();
                    i += 2;
                    match v {
                        b'/' => "%2F",
                        b'\\' => "%5C",
                        0..0x20 | 0x7F => return Err(ControlCharacter),
                        v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => {
                            current.push(char::from(v));
                            continue;
                        }
                        v => {
                            current.push_str(&format!("%{v:02X}"));
                            continue;
                        }
                    }
                }
                0..0x20 | 0x7F => return Err(ControlCharacter),
                0x80.. => return Err(NonAscii),
                b => {
                    current.push(char::from(b));
                    continue;
                }
            };
            match opts.escaped_slashes {
                EscapedSlashes::Reject => return Err(EscapedSlash),
                EscapedSlashes::Decode => finish_segment(&mut current)?,
                EscapedSlashes::Keep => current.push_str(slash),
            }
        }
        finish_segment(&mut current)?;

        let mut stack: Vec<String> = Vec::new();
        let n = segments.len();
        for (k, s) in segments.into_iter().enumerate() {
            let last = k + 1 == n;
            match s.as_str() {
                "." | ".." => {
                    if s == ".." {
                        stack.pop();
                    }
                    if last {
                        stack.push(String::new());
                    }
                }
                "" if opts.merge_slashes && !last => {}
                _ => stack.push(s),
            }
        }
        Ok(format!("/{}", stack.join("/")))
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const ALPHABET: &[&str] = &[
        "/", "/", "/", ".", ".", "%", "2", "5", "e", "E", "f", "F", "3", "b", "B", "a", "\\", ";", "~", "0", "c", "C",
        "7", "x", "%2e", "%2E", "%2f", "%5C", "%3b", "%25", "%41", "..", "/..", "/.", "//", "é", "\u{1}", " ",
    ];

    fn random_path(rng: &mut XorShift) -> String {
        let mut path = String::new();
        if rng.below(50) != 0 {
            path.push('/');
        }
        for _ in 0..rng.below(14) {
            path.push_str(ALPHABET[rng.below(ALPHABET.len())]);
        }
        path
    }

    fn check_output(input: &str, opts: &PathOptions, result: &Result<Cow<'_, str>, PathError>) {
        let Ok(out) = result else { return };
        let ctx = || format!("input {input:?} -> {out:?} with {opts:?}");
        assert!(out.starts_with('/'), "{}", ctx());
        assert_eq!(matches!(out, Cow::Borrowed(_)), out == input, "{}", ctx());
        match normalize_path(out, opts) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, &**out, "{}", ctx()),
            other => panic!("not idempotent: {other:?}, {}", ctx()),
        }
        if opts.merge_slashes {
            assert!(!out.contains("//"), "{}", ctx());
        }
        assert!(out.split('/').all(|s| s != "." && s != ".."), "{}", ctx());
        if opts.escaped_slashes != EscapedSlashes::Keep {
            assert!(!out.contains("%2F") && !out.contains("%5C"), "{}", ctx());
        }
        assert!(!out.contains('\\'), "{}", ctx());
        let bytes = out.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            assert!((0x20..0x7F).contains(&b), "{}", ctx());
            if b == b'%' {
                let hex = &bytes[i + 1..i + 3];
                assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)), "{}", ctx());
                let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                assert!(!is_unreserved(v) && v >= 0x20 && v != 0x7F, "{}", ctx());
            }
        }
    }

    #[test]
    fn random_paths() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut ok = 0usize;
        for _ in 0..200_000 {
            let path = random_path(&mut rng);
            for opts in &ALL {
                let actual = normalize_path(&path, opts);
                let expected = reference(&path, opts);
                assert_eq!(
                    actual.as_deref().map_err(|e| *e),
                    expected.as_deref().map_err(|e| *e),
                    "input {path:?} with {opts:?}"
                );
                check_output(&path, opts, &actual);
                ok += usize::from(actual.is_ok());
                // Without escaped slashes the mode makes no difference.
                if opts.escaped_slashes == EscapedSlashes::Reject && actual.is_ok() {
                    for mode in [EscapedSlashes::Decode, EscapedSlashes::Keep] {
                        let other = PathOptions { escaped_slashes: mode, ..*opts };
                        assert_eq!(normalize_path(&path, &other), actual);
                    }
                }
            }
        }
        // Make sure the alphabet does not make nearly every path an error.
        assert!(ok > 200_000, "only {ok} paths were accepted");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = XorShift(0x0123_4567_89AB_CDEF);
        for _ in 0..20_000 {
            let len = rng.below(24);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let path = String::from_utf8_lossy(&bytes);
            for opts in &ALL {
                check_output(&path, opts, &normalize_path(&path, opts));
            }
        }
    }
}
