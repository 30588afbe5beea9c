//! A side thread with its own single-threaded runtime that runs one future until told to stop:
//! the admin listener and the demo services live on such threads, apart from the workers.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Stops (and joins) its thread when dropped.
pub struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `task(stop)` on a new thread named `name`; `stop` resolves when the thread should end.
    pub fn spawn<F, Fut>(name: &str, task: F) -> io::Result<Background>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            runtime.block_on(task(stopped));
        })?;
        Ok(Background { stop: Some(stop), thread: Some(thread) })
    }

    /// Asks the task to stop and waits for the thread to end.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}
