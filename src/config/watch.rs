//! Watching the config file: a change of its content triggers a reload.
//!
//! Polling, on purpose: it sees every way a file can change (editors that write a new file and
//! rename it, Kubernetes ConfigMap symlink swaps, network filesystems) where change notifications
//! miss some. One `stat` per interval is nothing; the content is read and hashed when the metadata
//! moved (and every eighth poll regardless), and a reload happens only when the content differs
//! and stays the same over two reads (a file being written is not reloaded half-way).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Stops the watcher when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a file's metadata says of its content.
pub type Fingerprint = (u64, SystemTime, u64, i64, i64);

/// Size, times and inode: a rename (how editors and Kubernetes replace files) changes the inode
/// even when size and modification time (coarse on some filesystems) do not move. Also what the
/// TLS certificate watcher compares.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Calls `on_change` (on the watcher's thread) whenever the file's content changes.
pub fn watch(path: PathBuf, interval: Duration, on_change: impl Fn() + Send + 'static) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    std::thread::Builder::new().name("config-watch".into()).spawn(move || {
        let mut seen = fingerprint(&path);
        let mut hash = content_hash(&path);
        let mut polls = 0u32;
        while !thread_stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            polls = polls.wrapping_add(1);
            let now = fingerprint(&path);
            // An in-place rewrite of the same size within one timestamp tick leaves no trace in the
            // metadata: read the content anyway every few polls.
            if now == seen && polls % 8 != 0 {
                continue;
            }
            seen = now;
            let new_hash = content_hash(&path);
            if new_hash.is_some() && new_hash != hash {
                // A file being written in place can be read half-way (empty after the truncate,
                // or cut short): only content that two reads an interval apart agree on counts.
                std::thread::sleep(interval);
                if content_hash(&path) != new_hash {
                    seen = None;
                    continue;
                }
                hash = new_hash;
                if !thread_stop.load(Ordering::Relaxed) {
                    on_change();
                }
            }
        }
    })?;
    Ok(Watcher { stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn content_changes_trigger_and_touches_do_not() {
        // A directory of its own: a path named after the process id can be a leftover of an
        // earlier run with the same id, or shared with another test binary running at once.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let _w = watch(file.clone(), Duration::from_millis(20), move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // Same content, new mtime: no reload.
        std::fs::write(&file, "a: 1\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        // New content, replaced by rename as editors do.
        let tmp = dir.join("config.yaml.tmp");
        std::fs::write(&tmp, "a: 2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_file_being_written_is_not_reloaded_until_it_settles() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("config.yaml");
        std::fs::write(&file, "a: 0\n").unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let _w = watch(file.clone(), Duration::from_millis(100), move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // Rewritten in place every millisecond for a while: no two reads 100ms apart agree.
        let started = std::time::Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_millis(700) {
            n += 1;
            std::fs::write(&file, format!("a: {n}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(count.load(Ordering::SeqCst), 0, "reloaded while the file was still being written");
        // Settled: the last content is taken, once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
