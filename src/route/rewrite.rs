//! Path rewrites: the path sent upstream, derived from the request path and the route match.
//!
//! Runs after `find` has picked a route and before the upstream request is built; the redirect
//! policy renders its `Location` with the same templates. Templates are parsed and checked against
//! the route's patterns when the config is compiled, so applying one cannot fail. Stripping
//! returns a slice of the request path, so it does not allocate.
//!
//! Template syntax: literal text with `{name}` for a param of the matched pattern (a catch-all
//! `{*name}` or a regex's named group included) and `{**}` for the remainder matched by the tail,
//! without its leading `/`. A path rewrite template starts with `/` and has no `?` or `#`
//! (`validate_rewrite`); a redirect location may be a full URL. Where joining produces `//` (an
//! empty param, say) it is collapsed to `/`. A template ending in `/{**}` mirrors the request:
//! for `/api/**` rewritten to `/v2/{**}`, `/api` becomes `/v2`, `/api/` becomes `/v2/` and
//! `/api/x` becomes `/v2/x`.

use std::borrow::Cow;

use super::RouteSpec;
use super::params::RouteMatch;
use super::pattern::{PathPattern, PatternError};

/// How the upstream path is derived from the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    None,
    /// Remove this prefix when it ends at a segment boundary: `/api` turns `/api/x` into `/x` and
    /// `/api` into `/`, and leaves `/apix` alone.
    StripPrefix(String),
    /// Remove this many leading segments: 2 turns `/a/b/c` into `/c` and `/a` into `/`.
    StripSegments(usize),
    Template(RewriteTemplate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Param(Box<str>),
    Tail,
}

/// A parsed rewrite template (syntax in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteTemplate {
    text: Box<str>,
    parts: Box<[Part]>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RewriteTemplate {
    /// Parses the syntax in the module docs. Rules that only apply to paths are checked by
    /// `validate_rewrite`, so that redirect locations can share the syntax.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() {
            return Err(PatternError::new("empty template"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::new(format!(
                "template `{s}` contains {c:?}, which cannot appear in a path or URL"
            )));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let literal_end = rest.find(['{', '}']).unwrap_or(rest.len());
            if literal_end > 0 {
                parts.push(Part::Literal(rest[..literal_end].into()));
                rest = &rest[literal_end..];
                continue;
            }
            if rest.starts_with('}') {
                return Err(PatternError::new(format!("unmatched `}}` in rewrite template `{s}`")));
            }
            let Some(close) = rest.find('}') else {
                return Err(PatternError::new(format!("unclosed `{{` in rewrite template `{s}`")));
            };
            let inner = &rest[1..close];
            if inner == "**" {
                parts.push(Part::Tail);
            } else if valid_name(inner) {
                parts.push(Part::Param(inner.into()));
            } else {
                return Err(PatternError::new(format!(
                    "`{{{inner}}}` in rewrite template `{s}` is neither a param name nor `{{**}}`"
                )));
            }
            rest = &rest[close + 1..];
        }
        Ok(RewriteTemplate { text: s.into(), parts: parts.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The param names the template uses, in order, repeats included; `{**}` is not a name (see
    /// `uses_tail`).
    pub fn referenced(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(name) => Some(&**name),
            Part::Literal(_) | Part::Tail => None,
        })
    }

    pub fn uses_tail(&self) -> bool {
        self.parts.contains(&Part::Tail)
    }

    /// Checks the template against every path pattern of a route: whichever pattern matches, each
    /// name it uses must have a value, and `{**}` needs a tail.
    pub fn check_against(&self, paths: &[PathPattern]) -> Result<(), PatternError> {
        for pattern in paths {
            if let Some(name) = self.referenced().find(|n| !pattern.param_names().any(|p| p == *n)) {
                return Err(PatternError::new(format!(
                    "template `{}` uses `{{{name}}}`, but path pattern `{pattern}` has no such param",
                    self.text
                )));
            }
            if self.uses_tail() && !pattern.has_tail() {
                return Err(PatternError::new(format!(
                    "template `{}` uses `{{**}}`, but path pattern `{pattern}` does not end in `**` \
                     or `{{*name}}`",
                    self.text
                )));
            }
        }
        Ok(())
    }

    /// Fills the template from a match; `path` must be the path `m` was matched against.
    /// Literal-only templates are returned without copying.
    pub fn render<'a>(&'a self, path: &str, m: &RouteMatch, spec: &RouteSpec) -> Cow<'a, str> {
        debug_assert_eq!(m.route, spec.id, "a match rendered with another route's template");
        if let [Part::Literal(text)] = &*self.parts {
            return Cow::Borrowed(text);
        }
        Cow::Owned(self.fill(path, m))
    }

    fn fill(&self, path: &str, m: &RouteMatch) -> String {
        let mut out = String::with_capacity(self.text.len() + path.len());
        let tail = m.tail(path).unwrap_or("");
        // `/api` matched by `/api/**` has no remainder at all, unlike `/api/`.
        let no_remainder = tail.is_empty() && !path.ends_with('/');
        for (i, part) in self.parts.iter().enumerate() {
            let piece = match part {
                Part::Literal(text) => &**text,
                Part::Param(name) => m.param(path, name).unwrap_or(""),
                Part::Tail => {
                    if no_remainder && i + 1 == self.parts.len() && out.len() > 1 && out.ends_with('/') {
                        out.pop();
                    }
                    tail
                }
            };
            let piece = if out.ends_with('/') { piece.trim_start_matches('/') } else { piece };
            out.push_str(piece);
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Checks a rewrite against a route's path patterns when the config is compiled.
pub fn validate_rewrite(rewrite: &PathRewrite, paths: &[PathPattern]) -> Result<(), PatternError> {
    match rewrite {
        PathRewrite::None | PathRewrite::StripSegments(_) => Ok(()),
        PathRewrite::StripPrefix(prefix) => {
            if !prefix.starts_with('/') || prefix.contains("//") {
                return Err(PatternError::new(format!(
                    "prefix to strip `{prefix}` must start with `/` and contain no `//`"
                )));
            }
            Ok(())
        }
        PathRewrite::Template(template) => {
            let text = template.as_str();
            if !text.starts_with('/') {
                return Err(PatternError::new(format!("rewrite `{text}` must start with `/`")));
            }
            if let Some(c) = text.chars().find(|&c| c == '?' || c == '#') {
                return Err(PatternError::new(format!(
                    "rewrite `{text}` contains `{c}`; a rewrite produces the path only, and the \
                     query string is forwarded as it came"
                )));
            }
            template.check_against(paths)
        }
    }
}

fn strip_prefix<'p>(path: &'p str, prefix: &str) -> Cow<'p, str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Cow::Borrowed(path);
    }
    match path.strip_prefix(prefix) {
        Some("") => Cow::Borrowed("/"),
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        _ => Cow::Borrowed(path),
    }
}

fn strip_segments(path: &str, count: usize) -> Cow<'_, str> {
    let mut rest = path;
    for _ in 0..count {
        let Some(after) = rest.strip_prefix('/') else {
            break;
        };
        match memchr::memchr(b'/', after.as_bytes()) {
            Some(i) => rest = &after[i..],
            None => return Cow::Borrowed("/"),
        }
    }
    Cow::Borrowed(if rest.is_empty() { "/" } else { rest })
}

impl PathRewrite {
    /// The upstream path for `path`, which must be the path `m` was matched against.
    pub fn apply<'p>(&self, path: &'p str, m: &RouteMatch, spec: &RouteSpec) -> Cow<'p, str> {
        debug_assert_eq!(m.route, spec.id, "a match applied with another route's rewrite");
        match self {
            PathRewrite::None => Cow::Borrowed(path),
            PathRewrite::StripPrefix(prefix) => strip_prefix(path, prefix),
            PathRewrite::StripSegments(count) => strip_segments(path, *count),
            PathRewrite::Template(template) => {
                let rendered = template.render(path, m, spec);
                // Only reachable when `validate_rewrite` was skipped; the upstream still gets a path.
                if rendered.starts_with('/') {
                    Cow::Owned(rendered.into_owned())
                } else {
                    Cow::Owned(format!("/{rendered}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{get, route, table};
    use crate::route::{Lookup, RouteTable};

    fn matched(t: &RouteTable, path: &str) -> RouteMatch {
        match t.find(&get(path)) {
            Lookup::Matched(m) => m,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn rewrite(pattern: &str, rw: &PathRewrite, path: &str) -> String {
        let t = table(vec![route(0, "r", &[pattern])]);
        let m = matched(&t, path);
        rw.apply(path, &m, t.spec(0)).into_owned()
    }

    fn template(pattern: &str, tpl: &str, path: &str) -> String {
        rewrite(pattern, &PathRewrite::Template(RewriteTemplate::parse(tpl).unwrap()), path)
    }

    #[test]
    fn strip_prefix_at_segment_boundary() {
        let rw = PathRewrite::StripPrefix("/api".into());
        assert_eq!(rewrite("/**", &rw, "/api"), "/");
        assert_eq!(rewrite("/**", &rw, "/api/"), "/");
        assert_eq!(rewrite("/**", &rw, "/api/x"), "/x");
        assert_eq!(rewrite("/**", &rw, "/apix"), "/apix");
        assert_eq!(rewrite("/**", &rw, "/other"), "/other");
        assert_eq!(rewrite("/**", &PathRewrite::StripPrefix("/api/".into()), "/api/x"), "/x");
        assert_eq!(rewrite("/**", &PathRewrite::StripPrefix("/".into()), "/api/x"), "/api/x");
        let t = table(vec![route(0, "r", &["/**"])]);
        let m = matched(&t, "/api/x");
        assert!(matches!(rw.apply("/api/x", &m, t.spec(0)), Cow::Borrowed("/x")));
    }

    #[test]
    fn strip_segments() {
        let two = PathRewrite::StripSegments(2);
        assert_eq!(rewrite("/**", &two, "/a/b/c"), "/c");
        assert_eq!(rewrite("/**", &two, "/a/b/c/d"), "/c/d");
        assert_eq!(rewrite("/**", &two, "/a"), "/");
        assert_eq!(rewrite("/**", &two, "/a/b"), "/");
        assert_eq!(rewrite("/**", &two, "/a/b/"), "/");
        assert_eq!(rewrite("/**", &two, "/"), "/");
        assert_eq!(rewrite("/**", &PathRewrite::StripSegments(0), "/a/b"), "/a/b");
        assert_eq!(rewrite("/**", &PathRewrite::None, "/a/b"), "/a/b");
    }

    #[test]
    fn templates() {
        assert_eq!(template("/users/{id}", "/v2/users/{id}", "/users/42"), "/v2/users/42");
        assert_eq!(template("/users/{id}/{tab}", "/{tab}/{id}/{id}", "/users/42/posts"), "/posts/42/42");
        assert_eq!(template("/api/**", "/v2/{**}", "/api/x/y"), "/v2/x/y");
        assert_eq!(template("/api/**", "/v2/{**}", "/api"), "/v2");
        assert_eq!(template("/api/**", "/v2/{**}", "/api/"), "/v2/");
        assert_eq!(template("/api/**", "/{**}", "/api"), "/");
        assert_eq!(template("/api/**", "/v2/{**}/end", "/api"), "/v2/end");
        assert_eq!(template("/files/{*rest}", "/store/{rest}", "/files/a/b"), "/store/a/b");
        assert_eq!(template("/files/{*rest}", "/store/{rest}/meta", "/files"), "/store/meta");
        assert_eq!(template("/files/{*rest}", "/s/{**}", "/files/a"), "/s/a");
        assert_eq!(template("/{t}/**", "/tenants/{t}/{**}", "/acme/x"), "/tenants/acme/x");
    }

    #[test]
    fn template_with_regex_groups() {
        let mut spec = route(0, "r", &[]);
        spec.paths = vec![PathPattern::regex(r"/u/(?<id>\d+)").unwrap()];
        let t = table(vec![spec]);
        let rw = PathRewrite::Template(RewriteTemplate::parse("/users/{id}").unwrap());
        let m = matched(&t, "/u/7");
        assert_eq!(rw.apply("/u/7", &m, t.spec(0)), "/users/7");
    }

    #[test]
    fn template_parse() {
        let t = RewriteTemplate::parse("/a/{x}/{**}/{y}/{x}").unwrap();
        assert_eq!(t.referenced().collect::<Vec<_>>(), ["x", "y", "x"]);
        assert!(t.uses_tail());
        assert_eq!(t.as_str(), "/a/{x}/{**}/{y}/{x}");
        let err = |s: &str| RewriteTemplate::parse(s).unwrap_err().to_string();
        assert!(err("").contains("empty template"));
        assert!(err("/v2/{id} x").contains("' '"));
        assert!(err("/v2/{id").contains("unclosed `{`"));
        assert!(err("/v2/id}").contains("unmatched `}`"));
        assert!(err("/v2/{}").contains("neither a param name"));
        assert!(err("/v2/{*}").contains("neither a param name"));
        assert!(err("/v2/{1d}").contains("neither a param name"));
        // Path-only rules belong to `validate_rewrite`: redirect locations share the syntax.
        assert!(RewriteTemplate::parse("https://example.com/u/{id}?from=old").is_ok());
        assert!(RewriteTemplate::parse("v2/{id}").is_ok());
    }

    #[test]
    fn render_for_redirect_locations() {
        let t = table(vec![route(0, "r", &["/old/{id}/**"])]);
        let path = "/old/7/a/b";
        let m = matched(&t, path);
        let location = RewriteTemplate::parse("https://new.example.com/u/{id}/{**}?src=old").unwrap();
        assert_eq!(location.render(path, &m, t.spec(0)), "https://new.example.com/u/7/a/b?src=old");
        let fixed = RewriteTemplate::parse("https://example.com/").unwrap();
        assert!(matches!(fixed.render(path, &m, t.spec(0)), Cow::Borrowed("https://example.com/")));
        // A path rewrite always yields a path, even from a template validation would reject.
        let relative = PathRewrite::Template(RewriteTemplate::parse("v2/{id}").unwrap());
        assert_eq!(relative.apply(path, &m, t.spec(0)), "/v2/7");
    }

    #[test]
    fn validation_names_the_pattern() {
        let paths = |ps: &[&str]| ps.iter().map(|p| PathPattern::parse(p).unwrap()).collect::<Vec<_>>();
        let tpl = |s: &str| PathRewrite::Template(RewriteTemplate::parse(s).unwrap());
        assert!(validate_rewrite(&tpl("/v2/{id}"), &paths(&["/users/{id}", "/people/{id}/**"])).is_ok());
        let e = validate_rewrite(&tpl("/v2/{id}"), &paths(&["/users/{id}", "/users/**"])).unwrap_err();
        assert_eq!(e.to_string(), "template `/v2/{id}` uses `{id}`, but path pattern `/users/**` has no such param");
        let e = validate_rewrite(&tpl("/v2/{**}"), &paths(&["/a/**", "/b/{x}"])).unwrap_err();
        assert!(e.to_string().contains("path pattern `/b/{x}` does not end in `**`"), "{e}");
        assert!(validate_rewrite(&tpl("/v2/{**}/{rest}"), &paths(&["/a/{*rest}"])).is_ok());
        let regex = vec![PathPattern::regex(r"/u/(?<id>\d+)").unwrap()];
        assert!(validate_rewrite(&tpl("/users/{id}"), &regex).is_ok());
        assert!(validate_rewrite(&tpl("/users/{**}"), &regex).is_err());
        assert!(
            validate_rewrite(&tpl("v2/{id}"), &paths(&["/users/{id}"]))
                .unwrap_err()
                .to_string()
                .contains("must start with `/`")
        );
        assert!(
            validate_rewrite(&tpl("/v2?x={id}"), &paths(&["/users/{id}"]))
                .unwrap_err()
                .to_string()
                .contains("path only")
        );
        let message: String =
            RewriteTemplate::parse("/x/{nope}").unwrap().check_against(&paths(&["/a"])).unwrap_err().into();
        assert!(message.contains("`{nope}`"));
        assert!(validate_rewrite(&PathRewrite::StripPrefix("api".into()), &[]).is_err());
        assert!(validate_rewrite(&PathRewrite::StripPrefix("/api".into()), &[]).is_ok());
    }
}
