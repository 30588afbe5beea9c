//! `file`: a YAML (or JSON) file lists the endpoints, written as an upstream's `endpoints` are:
//!
//! ```yaml
//! - http://10.0.0.1:8080
//! - { url: http://10.0.0.2:8080, weight: 3 }
//! ```
//!
//! It is read again every `interval`; a change takes effect at the next read. A file that cannot
//! be read or parsed, or lists a bad endpoint, changes nothing: the endpoints read before stay.

use std::path::PathBuf;
use std::time::Duration;

use super::{Discover, Found, Look, Target};
use crate::config::EndpointConfig;

/// Larger files are refused: an endpoint list is small.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

pub struct File {
    pub path: PathBuf,
    pub interval: Duration,
}

/// How long after seeing new content the file is read again: a list is taken only when two reads
/// agree, so a file being written in place is never read half-way (a shorter list that still
/// parses would take endpoints away).
const SETTLE: Duration = Duration::from_millis(50);

impl Discover for File {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn look(&self) -> Look<'_> {
        Box::pin(async move {
            let first = self.read().await?;
            tokio::time::sleep(SETTLE).await;
            if self.read().await? != first {
                return Err("the file is being written; it is read again soon".into());
            }
            let text = String::from_utf8(first).map_err(|_| "the file is not UTF-8".to_owned())?;
            Ok(Found { targets: parse(&text)?, look_again: self.interval })
        })
    }
}

impl File {
    async fn read(&self) -> Result<Vec<u8>, String> {
        let meta = tokio::fs::metadata(&self.path).await.map_err(|e| format!("cannot read the file: {e}"))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!("the file is larger than {MAX_FILE_BYTES} bytes"));
        }
        tokio::fs::read(&self.path).await.map_err(|e| format!("cannot read the file: {e}"))
    }
}

/// The endpoints listed in `text`; the first problem found is the error.
pub fn parse(text: &str) -> Result<Vec<Target>, String> {
    let no_vars = |_: &str| None;
    let tree = crate::config::yaml::Node::parse(text, &no_vars).map_err(|d| first(&d))?;
    let list: Vec<EndpointConfig> = crate::config::yaml::from_node(&tree).map_err(|d| d.to_string())?;
    let mut targets = Vec::with_capacity(list.len());
    for (i, endpoint) in list.iter().enumerate() {
        let target = super::super::target_of(endpoint.url(), endpoint.weight()).map_err(|m| format!("[{i}]: {m}"))?;
        if target.url.starts_with("https://") {
            return Err(format!(
                "[{i}]: write http:// URLs; with `tls` set on the upstream, what discovery finds is reached over TLS"
            ));
        }
        targets.push(target);
    }
    Ok(targets)
}

fn first(diagnostics: &[crate::config::Diagnostic]) -> String {
    diagnostics.first().map(ToString::to_string).unwrap_or_else(|| "malformed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_being_written_is_not_taken_until_it_settles() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("endpoints.yaml");
        std::fs::write(&path, "- http://10.0.0.1:1\n").unwrap();
        let source = File { path: path.clone(), interval: Duration::from_secs(1) };
        assert_eq!(source.look().await.unwrap().targets.len(), 1, "a settled file is read");
        // Rewritten in place every millisecond (each content a valid list): no two reads 50ms
        // apart agree, so nothing is taken.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut n = 1u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n % 60_000 + 1;
                    let _ = std::fs::write(&path, format!("- http://10.0.0.1:{n}\n- http://10.0.0.2:{n}\n"));
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let mut taken = 0;
        for _ in 0..5 {
            if source.look().await.is_ok() {
                taken += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(taken <= 1, "{taken} of 5 looks took a file still being written");
        assert_eq!(source.look().await.unwrap().targets.len(), 2, "settled again: read");
    }

    #[test]
    fn lists_parse_like_endpoints_and_bad_ones_are_refused_whole() {
        let targets = parse("- http://10.0.0.1:8080\n- { url: \"http://b.internal:81\", weight: 3 }\n").unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!((targets[0].host.as_str(), targets[0].port, targets[0].weight), ("10.0.0.1", 8080, 1));
        assert_eq!((targets[1].host.as_str(), targets[1].port, targets[1].weight), ("b.internal", 81, 3));
        assert_eq!(parse("[]").unwrap().len(), 0);
        for bad in [
            "- http://10.0.0.1:8080\n- ftp://x\n",
            "- { url: http://a:1, weight: 0 }",
            "- { url: http://a:1, weight: 100000 }",
            "- { url: http://a:1, wieght: 2 }",
            "- http://a:1/path",
            "{ endpoints: [] }",
            "- [unterminated",
            "- http://user:pw@a:1",
            "- https://a:1",
            "-",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
