//! Configuration diagnostics: one error with its place in the file (line, column, YAML path).
//!
//! Every stage of loading (YAML syntax, `${VAR}` interpolation, structure, semantic validation,
//! compilation) reports problems as `Diagnostic`s, so `gatehouse validate` can print all of them at once.

use std::fmt;

/// A position in the config text. Both numbers are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where in the text, when known.
    pub span: Option<Span>,
    /// The YAML path of the offending node, e.g. `routes[2].match.path`; empty for the document root.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { span: None, path: path.into(), message: message.into() }
    }

    pub fn at(mut self, span: Option<Span>) -> Self {
        self.span = span;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(span) = self.span {
            write!(f, "{}:{}: ", span.line, span.col)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
