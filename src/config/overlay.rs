//! Changes made through the admin API: routes, upstreams and consumers added, replaced or deleted
//! at runtime, kept apart from the config file and applied over it.
//!
//! The file stays the operator's: gatehouse never rewrites it (its comments, anchors and `${VAR}`s
//! would not survive). The changes are a small JSON document in `admin.store`, written atomically
//! after each change and read at startup, so a restart keeps them. Every config the gateway runs is
//! `file + changes`, compiled by the same code; a reload of the file keeps the changes on top.
//!
//! An entry replaces the file's entity of the same name (or adds one); `null` deletes the file's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigErrors, ConsumerConfig, Diagnostic, Loaded, LocalConfig, RouteConfig, UpstreamConfig};

/// The store is refused beyond this size, like a config file.
const MAX_STORE_BYTES: u64 = super::MAX_CONFIG_BYTES as u64;

/// Runtime changes by entity name; `None` deletes the file's entity of that name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Option<RouteConfig>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, Option<UpstreamConfig>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, Option<ConsumerConfig>>,
}

/// Where an entry of the merged config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Position in the file's list.
    File(usize),
    /// Added or replaced at runtime, by name.
    Runtime(String),
}

/// The config gatehouse runs: the file with the changes applied, and where each entry came from
/// (to point errors at the file's lines or at the change's name).
pub struct Merged {
    pub config: LocalConfig,
    routes: Vec<Origin>,
    consumers: Vec<Origin>,
    upstreams: BTreeSet<String>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.upstreams.is_empty() && self.consumers.is_empty()
    }

    pub fn apply(&self, file: &LocalConfig) -> Merged {
        let mut config = file.clone();
        let routes = merge_list(
            &mut config.routes,
            &self.routes,
            |r| r.name.as_deref(),
            |r, name| r.name = Some(name.to_owned()),
        );
        let consumers =
            merge_list(&mut config.consumers, &self.consumers, |c| Some(&c.name), |c, name| c.name = name.to_owned());
        for (name, change) in &self.upstreams {
            match change {
                Some(upstream) => config.upstreams.insert(name.clone(), upstream.clone()),
                None => config.upstreams.remove(name),
            };
        }
        Merged { config, routes, consumers, upstreams: self.upstreams.keys().cloned().collect() }
    }

    /// Reads the store; a missing file is no changes. A store that cannot be read is an error, not
    /// an empty overlay: starting without the changes would undo them silently.
    pub fn load(path: &Path) -> Result<Overlay, ConfigErrors> {
        let fail = |message: String| ConfigErrors {
            source: path.display().to_string(),
            diagnostics: vec![Diagnostic::new("", message)],
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(e) => return Err(fail(format!("cannot read the admin store: {e}"))),
        };
        if meta.len() > MAX_STORE_BYTES {
            return Err(fail(format!("the admin store is larger than {MAX_STORE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the admin store: {e}")))?;
        parse(&text).map_err(|diagnostics| ConfigErrors { source: path.display().to_string(), diagnostics })
    }

    /// Writes the store whole: to a temporary file beside it, synced, then renamed over it, so a
    /// crash leaves the old store or the new one, never half of one. Readable by the owner only
    /// (HMAC secrets are stored as they are).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut temporary = PathBuf::from(path);
        let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".tmp");
        temporary.set_file_name(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself is durable once the directory is.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

/// Reads changes from JSON (or YAML) text, with every `$` literal.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Vec<Diagnostic>> {
    let tree = super::yaml::Node::parse_literal(text)?;
    super::yaml::from_node_all(&tree)
}

/// Applies changes by name to a list whose entries are named by `name_of`; returns each merged
/// entry's origin.
fn merge_list<T: Clone>(
    list: &mut Vec<T>,
    changes: &BTreeMap<String, Option<T>>,
    name_of: impl Fn(&T) -> Option<&str>,
    set_name: impl Fn(&mut T, &str),
) -> Vec<Origin> {
    let mut merged = Vec::with_capacity(list.len() + changes.len());
    let mut origins = Vec::with_capacity(list.len() + changes.len());
    let mut replaced = BTreeSet::new();
    for (i, entry) in list.drain(..).enumerate() {
        let Some(name) = name_of(&entry).map(str::to_owned) else {
            merged.push(entry);
            origins.push(Origin::File(i));
            continue;
        };
        match changes.get(&name) {
            None => {
                merged.push(entry);
                origins.push(Origin::File(i));
            }
            Some(change) => {
                // In the file's place, so the order of what remains does not move.
                if let Some(new) = change {
                    let mut new = new.clone();
                    set_name(&mut new, &name);
                    merged.push(new);
                    origins.push(Origin::Runtime(name.clone()));
                }
                replaced.insert(name);
            }
        }
    }
    for (name, change) in changes {
        if let Some(new) = change.as_ref().filter(|_| !replaced.contains(name)) {
            let mut new = new.clone();
            set_name(&mut new, name);
            merged.push(new);
            origins.push(Origin::Runtime(name.clone()));
        }
    }
    *list = merged;
    origins
}

impl Merged {
    /// Points compile errors at the file's lines for what came from the file, and at the change's
    /// name (`routes["orders"]`) for what came from the admin API.
    pub fn locate(&self, loaded: &Loaded, diagnostics: Vec<Diagnostic>) -> ConfigErrors {
        let mut out = Vec::with_capacity(diagnostics.len());
        for mut d in diagnostics {
            let runtime = self.rewrite(&mut d.path);
            if d.span.is_none() && !runtime {
                d.span = loaded.tree.at_path(&d.path).map(|n| n.span);
            }
            out.push(d);
        }
        out.sort_by_key(|d| d.span);
        ConfigErrors { source: loaded.name.clone(), diagnostics: out }
    }

    /// Rewrites a merged path to the file's or the change's; true when it names a change.
    fn rewrite(&self, path: &mut String) -> bool {
        for (list, origins) in [("routes", &self.routes), ("consumers", &self.consumers)] {
            let Some(rest) = path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else { continue };
            let Some((index, tail)) = rest.split_once(']') else { continue };
            let Some(origin) = index.parse::<usize>().ok().and_then(|i| origins.get(i)) else { continue };
            let (rewritten, runtime) = match origin {
                Origin::File(i) => (format!("{list}[{i}]{tail}"), false),
                Origin::Runtime(name) => (format!("{list}[{name:?}]{tail}"), true),
            };
            *path = rewritten;
            return runtime;
        }
        if let Some(rest) = path.strip_prefix("upstreams.") {
            let name = rest.split(['.', '[']).next().unwrap_or_default();
            return self.upstreams.contains(name);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> LocalConfig {
        let text = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
upstreams: { a: { endpoints: ["http://127.0.0.1:1"] }, b: { endpoints: ["http://127.0.0.1:2"] } }
routes:
  - { name: one, upstream: a }
  - { upstream: a }
  - { name: three, upstream: b }
consumers: [{ name: alice }, { name: bob }]
"#;
        super::super::parse("test", text, &super::super::Vars::default()).unwrap().config
    }

    #[test]
    fn changes_replace_in_place_add_at_the_end_and_delete() {
        let changes = parse::<Overlay>(
            r#"{
  "routes": { "three": { "upstream": "a" }, "four": { "upstream": "b" }, "one": null, "ghost": null },
  "upstreams": { "b": null, "c": { "endpoints": ["http://127.0.0.1:3"] } },
  "consumers": { "bob": { "name": "ignored", "plan": "pro" } }
}"#,
        )
        .unwrap();
        let merged = changes.apply(&file());
        let names: Vec<_> = merged.config.routes.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, [None, Some("three".into()), Some("four".into())]);
        assert_eq!(merged.config.routes[1].upstream.as_deref(), Some("a"));
        assert_eq!(merged.routes, [Origin::File(1), Origin::Runtime("three".into()), Origin::Runtime("four".into())]);
        assert_eq!(merged.config.upstreams.keys().collect::<Vec<_>>(), ["a", "c"]);
        // The entry's key is its name, whatever the body said.
        assert_eq!(merged.config.consumers[1].name, "bob");
        assert_eq!(merged.config.consumers[1].plan.as_deref(), Some("pro"));
    }

    #[test]
    fn paths_point_at_the_file_or_at_the_change() {
        let changes =
            parse::<Overlay>(r#"{"routes": {"one": null, "new": {"upstream": "x"}}, "upstreams": {"c": null}}"#)
                .unwrap();
        let merged = changes.apply(&file());
        let mut path = "routes[0].upstream".to_owned();
        assert!(!merged.rewrite(&mut path));
        assert_eq!(path, "routes[1].upstream", "the file's second route is the merged first");
        let mut path = "routes[2].upstream".to_owned();
        assert!(merged.rewrite(&mut path));
        assert_eq!(path, "routes[\"new\"].upstream");
        let mut path = "upstreams.c.endpoints[0]".to_owned();
        assert!(merged.rewrite(&mut path));
        let mut path = "upstreams.a.endpoints[0]".to_owned();
        assert!(!merged.rewrite(&mut path));
    }

    #[test]
    fn the_store_round_trips_and_takes_dollars_literally() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.json");
        assert_eq!(Overlay::load(&path).unwrap(), Overlay::default(), "no store yet: no changes");
        let changes: Overlay =
            parse(r#"{"routes": {"r": {"upstream": "a", "rewrite": "/${HOME}/x"}}, "upstreams": {"u": null}}"#)
                .unwrap();
        assert_eq!(changes.routes["r"].as_ref().unwrap().rewrite.as_deref(), Some("/${HOME}/x"));
        changes.save(&path).unwrap();
        assert_eq!(Overlay::load(&path).unwrap(), changes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        for broken in ["{", "{\"routes\": 3}", "{\"listeners\": []}", "[]"] {
            std::fs::write(&path, broken).unwrap();
            assert!(Overlay::load(&path).is_err(), "{broken}");
        }
    }
}
