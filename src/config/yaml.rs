//! Config text (YAML, or JSON, which YAML parses as well) → a tree of spanned nodes → serde types.
//!
//! Parsing goes through our own tree rather than straight into serde so that every error can be
//! reported with its line, column and YAML path, and so that `from_node_all` can re-run
//! deserialization after setting aside a broken entry and so report every independent error at once.
//!
//! Supported YAML: one document; the 1.2 core schema for plain scalars; anchors and aliases (copied
//! at the alias); merge keys (`<<: *base` or `<<: [*a, *b]`, explicit keys win, earlier sources win
//! over later ones); the standard `!!` tags. `${VAR}` / `${VAR:-default}` are expanded in scalar
//! values (not in keys); `:-` also applies when the variable is set but empty, as in the shell.

mod de;
#[cfg(test)]
mod tests;

pub use de::{from_node, from_node_all};

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Tag};

use super::error::{Diagnostic, Span};

/// Deeper nesting than any sane config; the limit keeps recursion in deserialization bounded.
const MAX_DEPTH: usize = 64;
/// Counted after alias expansion, so a few lines of aliases cannot blow up into gigabytes.
const MAX_NODES: usize = 100_000;

/// One node of the document, with where it starts in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Keys are always scalars whose kind is `Str`; entries are in document order.
    Map(Vec<(Node, Node)>),
}

/// A scalar keeps its text (after `${VAR}` expansion) next to its resolved type, so that a target
/// type that wants a string gets exactly what was written (`1.0` stays "1.0").
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarKind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

impl Node {
    /// Parse one YAML (or JSON) document. `${VAR}` / `${VAR:-default}` in scalar values are replaced
    /// using `vars`; `$${` is a literal `${`. A missing variable without default is an error at that
    /// scalar. Returns all interpolation errors at once; a YAML syntax error is reported alone.
    pub fn parse(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<Node, Vec<Diagnostic>> {
        Node::parse_with(text, Some(vars))
    }

    /// Parse one document with every `$` taken literally: for text that arrives over the admin API
    /// or was written by gatehouse, where `${VAR}` must not read the gateway's environment.
    pub fn parse_literal(text: &str) -> Result<Node, Vec<Diagnostic>> {
        Node::parse_with(text, None)
    }

    fn parse_with(text: &str, vars: Option<&Lookup<'_>>) -> Result<Node, Vec<Diagnostic>> {
        let mut b =
            Builder { vars, stack: Vec::new(), root: None, anchors: HashMap::new(), nodes: 0, diags: Vec::new() };
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0;
        while let Some(next) = parser.next_event() {
            let (event, span) = next.map_err(|e| vec![b.syntax_error(&e)])?;
            let at = span_of(span.start);
            let step = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        Err(Diagnostic::new("", "only one YAML document is allowed; found a second one").at(Some(at)))
                    } else {
                        Ok(())
                    }
                }
                Event::Scalar(raw, style, anchor, tag) => b.scalar(raw, style, anchor, tag.as_deref(), at),
                Event::SequenceStart(anchor, tag) => b.open(true, anchor, tag.as_deref(), at),
                Event::MappingStart(anchor, tag) => b.open(false, anchor, tag.as_deref(), at),
                Event::SequenceEnd | Event::MappingEnd => b.close(),
                Event::Alias(id) => b.alias(id, at),
                Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            };
            if let Err(fatal) = step {
                b.diags.push(fatal);
                break;
            }
        }
        if !b.diags.is_empty() {
            sort_diagnostics(&mut b.diags);
            return Err(b.diags);
        }
        Ok(b.root.unwrap_or(Node {
            span: Span { line: 1, col: 1 },
            value: Value::Scalar(Scalar { text: String::new(), kind: ScalarKind::Null }),
        }))
    }

    /// Find a node by YAML path as produced in diagnostics, e.g. `routes[2].match.path` or
    /// `upstreams.user.endpoints[0]`; keys that need it are written `["a.b"]`. `""` is the root.
    pub fn at_path(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for seg in parse_path(path)? {
            node = match seg {
                Seg::Key(key) => node.get(&key)?,
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i)?,
                    _ => return None,
                },
            };
        }
        Some(node)
    }

    /// For map nodes: the span of the key `key`.
    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.entry(key).map(|(k, _)| k.span)
    }

    /// For map nodes: the value under `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    fn entry(&self, key: &str) -> Option<&(Node, Node)> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)),
            _ => None,
        }
    }

    /// Node count and nesting height, for the expansion limits.
    fn measure(&self) -> (usize, usize) {
        match &self.value {
            Value::Scalar(_) => (1, 0),
            Value::Seq(items) => items.iter().fold((1, 1), |(n, h), item| {
                let (cn, ch) = item.measure();
                (n + cn, h.max(ch + 1))
            }),
            Value::Map(entries) => entries.iter().fold((1, 1), |(n, h), (_, v)| {
                let (cn, ch) = v.measure();
                (n + 1 + cn, h.max(ch + 1))
            }),
        }
    }
}

pub(crate) fn sort_diagnostics(diags: &mut [Diagnostic]) {
    // Diagnostics without a position go last; the sort is stable so ties keep discovery order.
    diags.sort_by_key(|d| d.span.map_or((1, Span::default()), |s| (0, s)));
}

fn span_of(m: Marker) -> Span {
    Span {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// Append a map key to a YAML path, quoting keys that would otherwise be ambiguous.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']', '"', '\\']);
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str("[\"");
        for c in key.chars() {
            if c == '"' || c == '\\' {
                path.push('\\');
            }
            path.push(c);
        }
        path.push_str("\"]");
    }
}

pub(crate) fn push_index(path: &mut String, index: usize) {
    path.push('[');
    path.push_str(&index.to_string());
    path.push(']');
}

fn push_seg(path: &mut String, seg: &Seg) {
    match seg {
        Seg::Key(k) => push_key(path, k),
        Seg::Index(i) => push_index(path, *i),
    }
}

fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut rest = path;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix("[\"") {
            let mut key = String::new();
            let mut chars = inner.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => key.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => key.push(c),
                }
            };
            rest = inner[end + 1..].strip_prefix(']')?;
            segs.push(Seg::Key(key));
        } else if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            segs.push(Seg::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        } else {
            let body = if first { rest } else { rest.strip_prefix('.')? };
            let end = body.find(['.', '[']).unwrap_or(body.len());
            if end == 0 {
                return None;
            }
            segs.push(Seg::Key(body[..end].to_owned()));
            rest = &body[end..];
        }
        first = false;
    }
    Some(segs)
}

struct Anchored {
    node: Node,
    size: usize,
    height: usize,
}

struct Frame {
    span: Span,
    anchor: usize,
    /// Where this collection sits in its parent; `None` for the root or a collection used as a key.
    seg: Option<Seg>,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<(Node, bool)>,
        seen: HashMap<String, Span>,
        /// `<<` entries with the number of explicit entries before them.
        merges: Vec<(usize, Node)>,
    },
}

/// What `${VAR}` reads.
type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

struct Builder<'v> {
    /// `None`: no interpolation.
    vars: Option<&'v Lookup<'v>>,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Anchored>,
    nodes: usize,
    diags: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn path(&self) -> String {
        let mut p = String::new();
        for seg in self.stack.iter().filter_map(|f| f.seg.as_ref()) {
            push_seg(&mut p, seg);
        }
        p
    }

    /// The segment of the next node pushed into the innermost open collection.
    fn next_seg(&self) -> Option<Seg> {
        match &self.stack.last()?.kind {
            FrameKind::Seq(items) => Some(Seg::Index(items.len())),
            FrameKind::Map { key: Some((k, _)), .. } => Some(Seg::Key(k.as_str().unwrap_or_default().to_owned())),
            FrameKind::Map { key: None, .. } => None,
        }
    }

    fn child_path(&self) -> String {
        let mut p = self.path();
        if let Some(seg) = self.next_seg() {
            push_seg(&mut p, &seg);
        }
        p
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame { kind: FrameKind::Map { key: None, .. }, .. }))
    }

    fn syntax_error(&self, e: &ScanError) -> Diagnostic {
        Diagnostic::new(self.path(), format!("invalid YAML: {}", e.info())).at(Some(span_of(*e.marker())))
    }

    fn fatal(&self, at: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.child_path(), message).at(Some(at))
    }

    fn add_nodes(&mut self, n: usize, at: Span) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(
                self.fatal(at, format!("document too large: more than {MAX_NODES} nodes after expanding aliases"))
            );
        }
        Ok(())
    }

    fn check_tag(&mut self, tag: Option<&Tag>, allowed: &str, at: Span) {
        let Some(tag) = tag else { return };
        let ok = (tag.is_yaml_core_schema() && tag.suffix == allowed) || (tag.handle.is_empty() && tag.suffix == "!");
        if !ok {
            let d = Diagnostic::new(self.child_path(), tag_error(tag)).at(Some(at));
            self.diags.push(d);
        }
    }

    fn scalar(
        &mut self,
        raw: Cow<'_, str>,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        at: Span,
    ) -> Result<(), Diagnostic> {
        self.add_nodes(1, at)?;
        let is_key = self.expects_key();
        let merge = is_key && style == ScalarStyle::Plain && raw == "<<" && tag.is_none();
        let node = if is_key {
            self.check_tag(tag, "str", at);
            Node { span: at, value: Value::Scalar(Scalar { text: raw.into_owned(), kind: ScalarKind::Str }) }
        } else {
            let text = if let Some(vars) = self.vars
                && raw.contains('$')
            {
                let (text, errors) = expand(&raw, vars);
                let path = self.child_path();
                self.diags.extend(errors.into_iter().map(|m| Diagnostic::new(path.clone(), m).at(Some(at))));
                text
            } else {
                raw.into_owned()
            };
            let kind = match tag {
                None if style == ScalarStyle::Plain => resolve(&text),
                None => ScalarKind::Str,
                Some(tag) => match tagged_kind(tag, &text) {
                    Ok(kind) => kind,
                    Err(message) => {
                        let d = Diagnostic::new(self.child_path(), message).at(Some(at));
                        self.diags.push(d);
                        ScalarKind::Str
                    }
                },
            };
            Node { span: at, value: Value::Scalar(Scalar { text, kind }) }
        };
        self.finish(node, anchor, merge)
    }

    fn open(&mut self, seq: bool, anchor: usize, tag: Option<&Tag>, at: Span) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.fatal(at, format!("nesting too deep: more than {MAX_DEPTH} levels")));
        }
        self.add_nodes(1, at)?;
        self.check_tag(tag, if seq { "seq" } else { "map" }, at);
        let kind = if seq {
            FrameKind::Seq(Vec::new())
        } else {
            FrameKind::Map { entries: Vec::new(), key: None, seen: HashMap::new(), merges: Vec::new() }
        };
        let seg = self.next_seg();
        self.stack.push(Frame { span: at, anchor, seg, kind });
        Ok(())
    }

    fn close(&mut self) -> Result<(), Diagnostic> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let value = match frame.kind {
            FrameKind::Seq(items) => Value::Seq(items),
            FrameKind::Map { entries, merges, .. } => {
                let path = {
                    let mut p = self.path();
                    if let Some(seg) = &frame.seg {
                        push_seg(&mut p, seg);
                    }
                    p
                };
                Value::Map(self.merge(entries, merges, &path))
            }
        };
        self.finish(Node { span: frame.span, value }, frame.anchor, false)
    }

    fn merge(&mut self, mut entries: Vec<(Node, Node)>, merges: Vec<(usize, Node)>, path: &str) -> Vec<(Node, Node)> {
        if merges.is_empty() {
            return entries;
        }
        let mut taken: std::collections::HashSet<String> =
            entries.iter().filter_map(|(k, _)| k.as_str().map(str::to_owned)).collect();
        let mut inserts = Vec::new();
        for (pos, source) in merges {
            let span = source.span;
            let maps = match source.value {
                Value::Map(_) => vec![source],
                Value::Seq(items) if items.iter().all(|i| matches!(i.value, Value::Map(_))) => items,
                _ => {
                    let mut p = path.to_owned();
                    push_key(&mut p, "<<");
                    let d = Diagnostic::new(p, "the value of a merge key `<<` must be a map or a list of maps");
                    self.diags.push(d.at(Some(span)));
                    continue;
                }
            };
            let mut merged = Vec::new();
            for map in maps {
                if let Value::Map(source_entries) = map.value {
                    for (k, v) in source_entries {
                        if taken.insert(k.as_str().unwrap_or_default().to_owned()) {
                            merged.push((k, v));
                        }
                    }
                }
            }
            inserts.push((pos, merged));
        }
        // Back to front so earlier insertion points stay valid.
        for (pos, merged) in inserts.into_iter().rev() {
            let pos = pos.min(entries.len());
            entries.splice(pos..pos, merged);
        }
        entries
    }

    fn alias(&mut self, id: usize, at: Span) -> Result<(), Diagnostic> {
        let Some(anchored) = self.anchors.get(&id) else {
            return Err(self.fatal(at, "alias to an unknown or unfinished anchor"));
        };
        let (size, height) = (anchored.size, anchored.height);
        if self.stack.len() + height > MAX_DEPTH {
            return Err(
                self.fatal(at, format!("nesting too deep: more than {MAX_DEPTH} levels after expanding an alias"))
            );
        }
        self.add_nodes(size, at)?;
        let node = match self.anchors.get(&id) {
            Some(a) => a.node.clone(),
            None => return Err(self.fatal(at, "alias to an unknown or unfinished anchor")),
        };
        self.finish(node, 0, false)
    }

    /// Register an anchor if any, then hand the finished node to its parent.
    fn finish(&mut self, node: Node, anchor: usize, merge_key: bool) -> Result<(), Diagnostic> {
        if anchor > 0 {
            let (size, height) = node.measure();
            // The stored copy counts too: nested anchors would otherwise multiply memory unchecked.
            self.add_nodes(size, node.span)?;
            self.anchors.insert(anchor, Anchored { node: node.clone(), size, height });
        }
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        // Problems are described after the frame is released, so the path is only built for them.
        let (span, key, message) = match &mut frame.kind {
            FrameKind::Seq(items) => {
                items.push(node);
                return Ok(());
            }
            FrameKind::Map { entries, key, seen, merges } => match key.take() {
                None if !matches!(node.value, Value::Scalar(_)) => {
                    let message = "a map key must be a scalar, not a sequence or map";
                    return Err(Diagnostic::new(self.path(), message).at(Some(node.span)));
                }
                None => {
                    *key = Some((node, merge_key));
                    return Ok(());
                }
                Some((k, is_merge)) => {
                    let name = k.as_str().unwrap_or_default().to_owned();
                    if let Some(first) = seen.get(&name) {
                        let message = format!(
                            "duplicate key {name:?} (first defined at line {}, column {})",
                            first.line, first.col
                        );
                        (k.span, name, message)
                    } else {
                        seen.insert(name, k.span);
                        if is_merge {
                            merges.push((entries.len(), node));
                        } else {
                            entries.push((k, node));
                        }
                        return Ok(());
                    }
                }
            },
        };
        let mut path = self.path();
        push_key(&mut path, &key);
        self.diags.push(Diagnostic::new(path, message).at(Some(span)));
        Ok(())
    }
}

fn tag_name(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else if tag.handle == "!" {
        format!("!{}", tag.suffix)
    } else {
        format!("!<{}{}>", tag.handle, tag.suffix)
    }
}

fn tag_error(tag: &Tag) -> String {
    format!(
        "unsupported tag {:?}: only the standard tags !!str, !!int, !!float, !!bool, !!null, !!seq and !!map are allowed here",
        tag_name(tag)
    )
}

fn tagged_kind(tag: &Tag, text: &str) -> Result<ScalarKind, String> {
    if tag.handle.is_empty() && tag.suffix == "!" {
        return Ok(ScalarKind::Str);
    }
    if !tag.is_yaml_core_schema() {
        return Err(tag_error(tag));
    }
    let kind = match tag.suffix.as_str() {
        "str" => Some(ScalarKind::Str),
        "null" => matches!(resolve(text), ScalarKind::Null).then_some(ScalarKind::Null),
        "bool" => parse_bool(text).map(ScalarKind::Bool),
        "int" => parse_int(text).ok().map(ScalarKind::Int),
        "float" => parse_float(text).map(ScalarKind::Float),
        _ => return Err(tag_error(tag)),
    };
    kind.ok_or_else(|| format!("{text:?} is not a valid {}", tag_name(tag)))
}

/// Resolve a plain scalar by the YAML 1.2 core schema.
fn resolve(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        _ => {}
    }
    if let Some(b) = parse_bool(text) {
        return ScalarKind::Bool(b);
    }
    match parse_int(text) {
        Ok(i) => return ScalarKind::Int(i),
        // Too big for any integer type: keep the text and let the target type complain.
        Err(IntError::Overflow) => return ScalarKind::Str,
        Err(IntError::Invalid) => {}
    }
    match parse_float(text) {
        Some(f) => ScalarKind::Float(f),
        None => ScalarKind::Str,
    }
}

pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
pub(crate) enum IntError {
    Invalid,
    Overflow,
}

pub(crate) fn parse_int(text: &str) -> Result<i128, IntError> {
    let radix = |digits: &str, radix: u32| {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return Err(IntError::Invalid);
        }
        i128::from_str_radix(digits, radix).map_err(|_| IntError::Overflow)
    };
    if let Some(hex) = text.strip_prefix("0x") {
        return radix(hex, 16);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return radix(oct, 8);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntError::Invalid);
    }
    text.parse().map_err(|_| IntError::Overflow)
}

pub(crate) fn parse_float(text: &str) -> Option<f64> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let sign = if text.starts_with('-') { -1.0 } else { 1.0 };
    match body {
        ".inf" | ".Inf" | ".INF" => return Some(sign * f64::INFINITY),
        ".nan" | ".NaN" | ".NAN" if body.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    // [0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)? with at least one mantissa digit.
    let b = body.as_bytes();
    let digits = |mut i: usize| {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - start)
    };
    let (mut i, whole) = digits(0);
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        (i, frac) = digits(i + 1);
    }
    if whole + frac == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let (end, exp) = digits(i);
        if exp == 0 {
            return None;
        }
        i = end;
    }
    if i != b.len() {
        return None;
    }
    text.parse().ok()
}

/// Expand `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`. Returns the expanded
/// text and one message per problem.
fn expand(raw: &str, vars: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errors.push(
                    "unterminated \"${\": expected a closing \"}\" (write \"$${\" for a literal \"${\")".to_owned(),
                );
                out.push_str(tail);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(format!("invalid variable name {name:?} in \"${{{inner}}}\""));
            } else {
                match (vars(name), default) {
                    (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    )),
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    (out, errors)
}
