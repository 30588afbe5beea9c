//! Configuration: from text to a compiled `Snapshot`.
//!
//! `load_*` reads YAML (or JSON) into a spanned tree, interpolates `${VAR}` / `${VAR:-default}`,
//! deserialises it into `LocalConfig` (collecting every structural error), and `compile` checks the
//! meaning (collecting every semantic error) while building the runtime `Snapshot`. `gatehouse
//! validate` is `compile` with the result thrown away, so validation and runtime can never disagree.

pub mod compile;
pub mod error;
pub mod overlay;
mod policies;
pub mod schema;
mod types;
pub mod units;
pub mod watch;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{Diagnostic, Span};
pub use policies::*;
pub use types::*;

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Where a config comes from; a reload reads the same source again.
#[derive(Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// In-memory text (embedded demo config, tests), with a name for messages.
    Text {
        name: String,
        text: String,
    },
}

impl ConfigSource {
    pub fn name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Text { name, .. } => name.clone(),
        }
    }

    pub fn read(&self) -> Result<String, ConfigErrors> {
        match self {
            ConfigSource::File(path) => read_file(path),
            ConfigSource::Text { text, .. } => Ok(text.clone()),
        }
    }
}

/// Variables for `${…}`: the process environment, optionally overlaid by fixed values.
#[derive(Clone, Default)]
pub struct Vars {
    overlay: Vec<(String, String)>,
}

impl Vars {
    pub fn with(overlay: Vec<(String, String)>) -> Vars {
        Vars { overlay }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.overlay.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    }
}

/// A parsed config with the tree it came from (for locating later errors).
pub struct Loaded {
    pub config: LocalConfig,
    pub tree: yaml::Node,
    pub name: String,
}

/// Every problem found in one config source.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        writeln!(f, "{}: {n} error{}", self.source, if n == 1 { "" } else { "s" })?;
        for d in &self.diagnostics {
            match d.span {
                Some(span) => write!(f, "  {}:{}:{}: ", self.source, span.line, span.col)?,
                None => write!(f, "  {}: ", self.source)?,
            }
            if !d.path.is_empty() {
                write!(f, "{}: ", d.path)?;
            }
            writeln!(f, "{}", d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        source: path.display().to_string(),
        diagnostics: vec![Diagnostic::new("", message)],
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read the config file: {e}")))?;
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(fail(format!("the config file is larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the config file: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|e| fail(format!("the config file is not valid UTF-8 (byte {})", e.utf8_error().valid_up_to())))
}

/// Parses and deserialises config text, reporting every error found.
pub fn parse(name: &str, text: &str, vars: &Vars) -> Result<Loaded, ConfigErrors> {
    let fail = |diagnostics| ConfigErrors { source: name.to_owned(), diagnostics };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(fail(vec![Diagnostic::new("", format!("config is larger than {MAX_CONFIG_BYTES} bytes"))]));
    }
    let lookup = |var: &str| vars.get(var);
    let mut tree = yaml::Node::parse(text, &lookup).map_err(fail)?;
    match &mut tree.value {
        yaml::Value::Map(entries) => {
            // Top-level `x-…` keys are free for the user: a place to park YAML anchors, as in
            // Compose files. They are not config.
            entries.retain(|(key, _)| !key.as_str().is_some_and(|k| k.starts_with("x-")));
        }
        yaml::Value::Scalar(s) if matches!(s.kind, yaml::ScalarKind::Null) => {
            return Err(fail(vec![Diagnostic::new("", "the config is empty: it needs at least `listeners:`")]));
        }
        _ => {}
    }
    let config: LocalConfig = yaml::from_node_all(&tree).map_err(fail)?;
    Ok(Loaded { config, tree, name: name.to_owned() })
}

/// Reads, parses and compiles a config source against `compile::Context`.
pub fn load(source: &ConfigSource, vars: &Vars) -> Result<Loaded, ConfigErrors> {
    let text = source.read()?;
    parse(&source.name(), &text, vars)
}

impl Loaded {
    /// Attaches the text positions of `diagnostics` (from compile, which knows only YAML paths).
    pub fn locate(&self, mut diagnostics: Vec<Diagnostic>) -> ConfigErrors {
        for d in &mut diagnostics {
            if d.span.is_none() {
                d.span = self.tree.at_path(&d.path).map(|n| n.span);
            }
        }
        // In the order of the file; errors without a position (whole-config ones) come first.
        diagnostics.sort_by_key(|d| d.span);
        ConfigErrors { source: self.name.clone(), diagnostics }
    }
}
