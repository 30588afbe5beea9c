//! Path patterns: the user-facing syntax (see the `route` module docs), its parse errors, and
//! matching one pattern against one normalised request path.
//!
//! On the request path the index in `trie.rs` decides *which* entry wins without touching this
//! code; once a winner is known its pattern is matched here a second time to record captures.
//! `explain` and the tests use the same matcher as the linear reference.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use regex::Regex;

use super::params::Captures;

/// Why a path pattern, host pattern or rewrite template was rejected. The message is meant for
/// the person who wrote the config, so it quotes the offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    message: String,
}

impl PatternError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        PatternError { message: message.into() }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for PatternError {}

/// Lets config diagnostics take the message as their text.
impl From<PatternError> for String {
    fn from(error: PatternError) -> String {
        error.message
    }
}

/// One segment of a template pattern, before the optional tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Matches exactly this text. The empty literal is the root `/` or a trailing slash, which
    /// is how both become ordinary trie edges instead of special cases.
    Literal(Box<str>),
    /// `{name}`: one non-empty segment, captured into slot `.0` of the pattern's names.
    Param(u16),
    /// `*`: one non-empty segment, not captured.
    Any,
}

/// What follows the last segment of a template pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The path must end exactly here.
    None,
    /// `**`: any remainder, including none.
    Anonymous,
    /// `{*name}`: any remainder, captured into slot `.0`.
    Named(u16),
}

#[derive(Debug, Clone)]
pub(crate) enum Shape {
    Segments {
        segments: Box<[Segment]>,
        tail: Tail,
    },
    /// `groups[i]` is the regex capture-group index of `names[i]`.
    Regex {
        regex: Regex,
        groups: Box<[usize]>,
    },
}

/// A compiled path pattern: either the segment syntax or an anchored regex.
///
/// Equality compares the displayed text, which is unique per meaning for segment patterns and
/// keeps regexes (never `Eq` themselves) comparable in tests and config diffs.
#[derive(Debug, Clone)]
pub struct PathPattern {
    text: Box<str>,
    shape: Shape,
    /// Shared so that a match can carry the names without copying them.
    names: Arc<[Box<str>]>,
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PathPattern {}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits `rest` (a path after some `/`) into its first segment and what follows the next `/`.
/// `None` as the remainder means the path ended, which differs from `Some("")` (a trailing slash).
/// Segments are short, so a plain scan beats dispatching to a vectorised search.
#[inline]
pub(crate) fn split_first(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn add_name(names: &mut Vec<Box<str>>, name: &str, pattern: &str) -> Result<u16, PatternError> {
    if name.is_empty() {
        return Err(PatternError::new(format!("empty param name `{{}}` in `{pattern}`")));
    }
    if !is_valid_name(name) {
        return Err(PatternError::new(format!(
            "param name `{name}` in `{pattern}` must start with a letter or `_` and contain only \
             letters, digits and `_`"
        )));
    }
    if names.iter().any(|n| &**n == name) {
        return Err(PatternError::new(format!("param `{{{name}}}` appears twice in `{pattern}`")));
    }
    let index = u16::try_from(names.len()).map_err(|_| PatternError::new(format!("too many params in `{pattern}`")))?;
    names.push(name.into());
    Ok(index)
}

/// The braced part of a segment that mixes params with other text, for the error message.
fn braced_part(segment: &str) -> &str {
    let start = segment.find('{').unwrap_or(0);
    match segment[start..].find('}') {
        Some(len) => &segment[start..start + len + 1],
        None => segment,
    }
}

fn check_literal(segment: &str, pattern: &str) -> Result<(), PatternError> {
    let open = segment.find('{');
    let close = segment.rfind('}');
    if open.is_some() != close.is_some() || matches!((open, close), (Some(o), Some(c)) if c < o) {
        return Err(PatternError::new(format!("unbalanced braces in segment `{segment}` of `{pattern}`")));
    }
    if open.is_some() {
        let part = braced_part(segment);
        return Err(PatternError::new(format!(
            "param `{part}` must be a whole segment (in `{pattern}`): write `/{part}/`, with no \
             other text between the slashes"
        )));
    }
    if segment.contains('*') {
        return Err(PatternError::new(format!(
            "`*` must be a whole segment (in `{pattern}`): `*` is one segment, `**` any remainder"
        )));
    }
    if let Some(c) = segment.chars().find(|&c| c == '?' || c == '#') {
        return Err(PatternError::new(format!(
            "`{c}` cannot appear in a path pattern (in `{pattern}`): paths are matched without \
             the query string; use a query matcher instead"
        )));
    }
    if let Some(c) = segment.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(PatternError::new(format!(
            "path pattern `{pattern}` contains {c:?}, which a normalised path never does"
        )));
    }
    Ok(())
}

impl PathPattern {
    /// Parses the segment syntax described in the module docs.
    pub fn parse(s: &str) -> Result<PathPattern, PatternError> {
        let Some(body) = s.strip_prefix('/') else {
            return Err(PatternError::new(format!("path pattern `{s}` must start with `/`")));
        };
        let mut names: Vec<Box<str>> = Vec::new();
        let mut segments = Vec::new();
        let mut tail = Tail::None;
        let parts: Vec<&str> = body.split('/').collect();
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let last = i + 1 == count;
            if part == "**" || (part.starts_with("{*") && part.ends_with('}')) {
                if !last {
                    return Err(PatternError::new(format!("`{part}` must be the last segment of `{s}`")));
                }
                tail = if part == "**" {
                    Tail::Anonymous
                } else {
                    let name = &part[2..part.len() - 1];
                    if name.is_empty() {
                        return Err(PatternError::new(format!(
                            "catch-all `{{*}}` in `{s}` needs a name, as in `{{*rest}}`; use `**` \
                             for an anonymous tail"
                        )));
                    }
                    Tail::Named(add_name(&mut names, name, s)?)
                };
            } else if part == "*" {
                segments.push(Segment::Any);
            } else if part.len() >= 2 && part.starts_with('{') && part.ends_with('}') {
                let name = &part[1..part.len() - 1];
                if name.contains(['{', '}']) {
                    check_literal(name, s)?;
                }
                segments.push(Segment::Param(add_name(&mut names, name, s)?));
            } else if part.is_empty() && !last {
                return Err(PatternError::new(format!(
                    "empty segment (`//`) in `{s}`: normalised request paths never contain one"
                )));
            } else {
                check_literal(part, s)?;
                segments.push(Segment::Literal(part.into()));
            }
        }
        Ok(PathPattern {
            text: s.into(),
            shape: Shape::Segments { segments: segments.into(), tail },
            names: names.into(),
        })
    }

    /// Compiles a regex matched against the whole normalised path; named groups become params.
    pub fn regex(s: &str) -> Result<PathPattern, PatternError> {
        // The group keeps a top-level alternation (`a|b`) inside both anchors.
        let regex = Regex::new(&format!("^(?:{s})$"))
            .map_err(|e| PatternError::new(format!("invalid path regex `{s}`: {e}")))?;
        let mut names = Vec::new();
        let mut groups = Vec::new();
        for (index, name) in regex.capture_names().enumerate() {
            if let Some(name) = name {
                names.push(Box::<str>::from(name));
                groups.push(index);
            }
        }
        Ok(PathPattern {
            text: regex_display(s).into(),
            shape: Shape::Regex { regex, groups: groups.into() },
            names: names.into(),
        })
    }

    /// The pattern as written; regexes show as `regex:^...$`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Param names in the order they appear, including a catch-all; for a regex, its named groups.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    pub fn is_regex(&self) -> bool {
        matches!(self.shape, Shape::Regex { .. })
    }

    /// Whether the pattern ends in `**` or `{*name}`, i.e. whether a rewrite may use `{**}`.
    pub fn has_tail(&self) -> bool {
        matches!(self.shape, Shape::Segments { tail: Tail::Anonymous | Tail::Named(_), .. })
    }

    pub(crate) fn shape(&self) -> &Shape {
        &self.shape
    }

    pub(crate) fn names(&self) -> &Arc<[Box<str>]> {
        &self.names
    }

    /// Whether a match has anything to record, so the common case can skip capturing entirely.
    pub(crate) fn captures_anything(&self) -> bool {
        !self.names.is_empty() || self.has_tail()
    }

    /// Matches without recording anything.
    pub fn matches(&self, path: &str) -> bool {
        match &self.shape {
            Shape::Segments { segments, tail } => match_segments(segments, *tail, path, None),
            Shape::Regex { regex, .. } => regex.is_match(path),
        }
    }

    /// Matches and records params (and the tail remainder) into `caps`, which is reset first.
    pub(crate) fn capture(&self, path: &str, caps: &mut Captures) -> bool {
        caps.reset(self.names.len());
        match &self.shape {
            Shape::Segments { segments, tail } => match_segments(segments, *tail, path, Some(caps)),
            Shape::Regex { regex, groups } => {
                if groups.is_empty() {
                    return regex.is_match(path);
                }
                let mut locations = regex.capture_locations();
                if regex.captures_read(&mut locations, path).is_none() {
                    return false;
                }
                for (slot, &group) in groups.iter().enumerate() {
                    if let Some((start, end)) = locations.get(group) {
                        caps.set(slot, start, end);
                    }
                }
                true
            }
        }
    }
}

fn match_segments(segments: &[Segment], tail: Tail, path: &str, mut caps: Option<&mut Captures>) -> bool {
    let Some(first) = path.strip_prefix('/') else {
        return false;
    };
    let mut rest = Some(first);
    for segment in segments {
        let Some(current) = rest else {
            return false;
        };
        let (text, next) = split_first(current);
        match segment {
            Segment::Literal(literal) => {
                if **literal != *text {
                    return false;
                }
            }
            Segment::Param(slot) => {
                if text.is_empty() {
                    return false;
                }
                if let Some(caps) = caps.as_deref_mut() {
                    let start = path.len() - current.len();
                    caps.set(usize::from(*slot), start, start + text.len());
                }
            }
            Segment::Any => {
                if text.is_empty() {
                    return false;
                }
            }
        }
        rest = next;
    }
    match tail {
        Tail::None => rest.is_none(),
        Tail::Anonymous | Tail::Named(_) => {
            if let Some(caps) = caps {
                let start = rest.map_or(path.len(), |r| path.len() - r.len());
                caps.set_tail(start, path.len());
                if let Tail::Named(slot) = tail {
                    caps.set(usize::from(slot), start, path.len());
                }
            }
            true
        }
    }
}

/// Display text for a regex pattern, showing the anchors that matching implies. The group is only
/// shown where dropping it would change the meaning (a top-level `|`).
fn regex_display(s: &str) -> String {
    let anchored_start = s.starts_with('^');
    let anchored_end = s.ends_with('$') && !s.ends_with("\\$");
    if s.contains('|') && !(anchored_start && anchored_end) {
        return format!("regex:^(?:{s})$");
    }
    let start = if anchored_start { "" } else { "^" };
    let end = if anchored_end { "" } else { "$" };
    format!("regex:{start}{s}{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
        let p = PathPattern::parse(pattern).unwrap();
        let mut caps = Captures::default();
        if !p.capture(path, &mut caps) {
            assert!(!p.matches(path), "{pattern} capture/matches disagree on {path}");
            return None;
        }
        assert!(p.matches(path));
        Some(
            p.param_names()
                .enumerate()
                .map(|(i, n)| {
                    let (s, e) = caps.get(i).unwrap();
                    (n.to_string(), path[s..e].to_string())
                })
                .collect(),
        )
    }

    fn matches(pattern: &str, path: &str) -> bool {
        caps_of(pattern, path).is_some()
    }

    fn err(pattern: &str) -> String {
        PathPattern::parse(pattern).unwrap_err().to_string()
    }

    #[test]
    fn exact() {
        assert!(matches("/users", "/users"));
        assert!(!matches("/users", "/users/"));
        assert!(!matches("/users", "/usersX"));
        assert!(!matches("/users", "/users/1"));
        assert!(!matches("/users", "/"));
        assert!(matches("/users/", "/users/"));
        assert!(!matches("/users/", "/users"));
        assert!(matches("/", "/"));
        assert!(!matches("/", "/a"));
        assert!(!matches("/users", "users"));
        assert!(!matches("/", ""));
    }

    #[test]
    fn prefix_tail() {
        for path in ["/users", "/users/", "/users/42/x"] {
            assert!(matches("/users/**", path), "{path}");
        }
        assert!(!matches("/users/**", "/usersX"));
        assert!(!matches("/users/**", "/"));
        assert!(matches("/**", "/"));
        assert!(matches("/**", "/anything/at/all"));
        assert!(!matches("/**", "*"));
    }

    #[test]
    fn params() {
        assert_eq!(caps_of("/users/{id}", "/users/42"), Some(vec![("id".into(), "42".into())]));
        assert!(!matches("/users/{id}", "/users/"));
        assert!(!matches("/users/{id}", "/users"));
        assert!(!matches("/users/{id}", "/users/42/x"));
        assert_eq!(caps_of("/{a}/x/{b}/", "/1/x/2/"), Some(vec![("a".into(), "1".into()), ("b".into(), "2".into())]));
        assert!(!matches("/{a}/x/{b}/", "/1/x/2"));
    }

    #[test]
    fn anonymous_segment() {
        assert!(matches("/users/*/orders", "/users/7/orders"));
        assert!(!matches("/users/*/orders", "/users//orders"));
        assert!(!matches("/users/*/orders", "/users/orders"));
        assert_eq!(PathPattern::parse("/users/*/orders").unwrap().param_names().count(), 0);
    }

    #[test]
    fn catch_all() {
        assert_eq!(caps_of("/files/{*rest}", "/files"), Some(vec![("rest".into(), "".into())]));
        assert_eq!(caps_of("/files/{*rest}", "/files/"), Some(vec![("rest".into(), "".into())]));
        assert_eq!(caps_of("/files/{*rest}", "/files/a/b.txt"), Some(vec![("rest".into(), "a/b.txt".into())]));
        assert!(!matches("/files/{*rest}", "/filesX"));
        assert_eq!(caps_of("/{*all}", "/"), Some(vec![("all".into(), "".into())]));
        assert_eq!(caps_of("/{*all}", "/x/y"), Some(vec![("all".into(), "x/y".into())]));
    }

    #[test]
    fn template_with_tail() {
        assert_eq!(caps_of("/api/{version}/**", "/api/v1"), Some(vec![("version".into(), "v1".into())]));
        assert_eq!(caps_of("/api/{version}/**", "/api/v1/users/3"), Some(vec![("version".into(), "v1".into())]));
        assert!(!matches("/api/{version}/**", "/api"));
        assert!(!matches("/api/{version}/**", "/api/"));
    }

    #[test]
    fn tail_range_is_recorded() {
        let p = PathPattern::parse("/api/**").unwrap();
        let mut caps = Captures::default();
        for (path, tail) in [("/api", ""), ("/api/", ""), ("/api/a/b", "a/b")] {
            assert!(p.capture(path, &mut caps));
            let (s, e) = caps.tail().unwrap();
            assert_eq!(&path[s..e], tail, "{path}");
        }
    }

    #[test]
    fn param_names_include_catch_all() {
        let p = PathPattern::parse("/{a}/{b}/{*c}").unwrap();
        assert_eq!(p.param_names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(p.as_str(), "/{a}/{b}/{*c}");
        assert!(p.has_tail());
    }

    #[test]
    fn parse_errors() {
        assert_eq!(err("users"), "path pattern `users` must start with `/`");
        assert!(err("").contains("must start with `/`"));
        assert!(err("/users/id{id}").starts_with("param `{id}` must be a whole segment"));
        assert!(err("/users/{id}.json").starts_with("param `{id}` must be a whole segment"));
        assert!(err("/users/{id").contains("unbalanced braces"));
        assert!(err("/users/id}").contains("unbalanced braces"));
        assert!(err("/users/{{id}}").contains("must be a whole segment"));
        assert!(err("/a/**/b").contains("`**` must be the last segment"));
        assert!(err("/a/{*rest}/b").contains("`{*rest}` must be the last segment"));
        assert!(err("/a/**/").contains("must be the last segment"));
        assert!(err("/a/{*}").contains("needs a name"));
        assert!(err("/a/{}").contains("empty param name"));
        assert!(err("/a/{1x}").contains("must start with a letter"));
        assert!(err("/a/{x-y}").contains("must start with a letter"));
        assert!(err("/{id}/{id}").contains("appears twice"));
        assert!(err("/{id}/{*id}").contains("appears twice"));
        assert!(err("/a//b").contains("empty segment"));
        assert!(err("//").contains("empty segment"));
        assert!(err("/a*").contains("`*` must be a whole segment"));
        assert!(err("/a/***").contains("`*` must be a whole segment"));
        assert!(err("/a?x=1").contains("query"));
        assert!(err("/a#frag").contains("`#`"));
        assert!(err("/a b").contains("normalised path"));
        assert!(PathPattern::parse("/_ok/{_x9}/{*Rest_2}").is_ok());
    }

    #[test]
    fn regex_patterns() {
        let p = PathPattern::regex(r"/users/(?<id>\d+)(?:/(?<tab>[a-z]+))?").unwrap();
        assert!(p.is_regex());
        assert_eq!(p.param_names().collect::<Vec<_>>(), ["id", "tab"]);
        assert_eq!(p.as_str(), r"regex:^/users/(?<id>\d+)(?:/(?<tab>[a-z]+))?$");
        let mut caps = Captures::default();
        assert!(p.capture("/users/42", &mut caps));
        assert_eq!(caps.get(0), Some((7, 9)));
        assert_eq!(caps.get(1), None);
        assert!(p.capture("/users/42/posts", &mut caps));
        assert_eq!(caps.get(1), Some((10, 15)));
        // Anchored at both ends, even around an alternation.
        assert!(!p.matches("/users/42x"));
        assert!(!p.matches("/v1/users/42"));
        let alt = PathPattern::regex("/a|/b").unwrap();
        assert_eq!(alt.as_str(), "regex:^(?:/a|/b)$");
        assert!(alt.matches("/a") && alt.matches("/b") && !alt.matches("/a/b") && !alt.matches("/ab"));
        assert_eq!(PathPattern::regex("^/x$").unwrap().as_str(), "regex:^/x$");
        let e = PathPattern::regex("/(unclosed").unwrap_err().to_string();
        assert!(e.starts_with("invalid path regex `/(unclosed`"), "{e}");
    }
}
