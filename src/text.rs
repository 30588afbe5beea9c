//! Small byte-level helpers shared by the parsers of request text.

/// The value of one hexadecimal digit.
pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hexadecimal text of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends the lowercase hexadecimal text of `bytes` to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
}

/// Bytes from hexadecimal text (either case); `None` for odd lengths or other characters.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes.chunks(2).map(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?)).collect()
}

/// The raw (still percent-encoded) value of the first non-empty `name=` parameter of `query`.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// `query` without its `name` parameters (`None` when nothing is left).
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The value of the first non-empty `name` cookie in `Cookie` header lines (quotes removed).
pub fn cookie<'a>(lines: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    lines.flat_map(|line| line.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        let v = v.trim_matches('"');
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_and_cookies_are_found_by_exact_name() {
        assert_eq!(query_param("a=1&key=abc&key=def", "key"), Some("abc"));
        assert_eq!(query_param("akey=1&key&key=", "key"), None);
        assert_eq!(query_without("a=1&key=x&b&key", "key").as_deref(), Some("a=1&b"));
        assert_eq!(query_without("key=x", "key"), None);
        let lines = ["a=1; sid=\"xyz\"", "sid=later"];
        assert_eq!(cookie(lines.into_iter(), "sid"), Some("xyz"));
        assert_eq!(cookie(["xsid=1; sid="].into_iter(), "sid"), None);
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
