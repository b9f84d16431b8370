//! A small pool of decoding threads the async side hands CPU work to, so that decompressing
//! and checksumming never blocks the caller's runtime (which may have a single thread) and
//! uses every core.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run jobs until the pool is dropped.
pub(crate) struct Pool {
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `n` threads (at least one).
    pub fn new(n: usize) -> Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .map_err(|e| Error::io("starting a verification thread", e))?;
            threads.push(t);
        }
        Ok(Pool {
            tx: Some(tx),
            threads,
        })
    }

    /// Runs `f` on a pool thread and waits (asynchronously) for its result. A panic in `f`
    /// becomes an error rather than taking the caller down.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        let sender = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::invalid_input("verification pool is shut down"))?;
        sender
            .send(job)
            .map_err(|_| Error::invalid_input("verification threads have stopped"))?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Error::invalid_input("a verification job panicked")),
            Err(_) => Err(Error::invalid_input("a verification job was dropped")),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
