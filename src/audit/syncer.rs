//! Group commit's second stage: makes written batches durable and acknowledges them.
//!
//! The writer thread encodes and `write(2)`s a batch, then hands it here and goes on with the
//! next one while this thread waits in `fdatasync`. Every batch that arrived while one
//! `fdatasync` ran shares the next, so a slow disk makes batches larger instead of making the
//! writer idle. A record is acknowledged only after an `fdatasync` that began after its bytes
//! were written, so the durability promise of `append` is the same as with a synchronous sync.

use std::fs::File;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::error::AuditError;
use super::writer::Seq;

/// Batches written but not yet synced, at most; the writer blocks beyond (backpressure).
const QUEUE: usize = 256;

pub(super) type Reply = oneshot::Sender<Result<Seq, AuditError>>;

pub(super) enum Job {
    /// Records written to `file`, to acknowledge once it is synced.
    Written {
        file: Arc<File>,
        waiting: Vec<(Seq, Reply)>,
    },
    /// Answered once every batch handed over before it has been synced (or failed).
    Barrier(SyncSender<()>),
}

/// Called with the error when an `fdatasync` fails: after such a failure the kernel may have
/// dropped the dirty pages, so no later sync can prove those records durable.
pub(super) type OnFailure = Box<dyn Fn(&str) -> AuditError + Send>;

/// The writer's handle on the sync thread.
pub(super) struct Syncer {
    tx: SyncSender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn start(on_failure: OnFailure) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || run(rx, on_failure))?;
        Ok(Syncer {
            tx,
            thread: Some(thread),
        })
    }

    /// Hands over a written batch. Gives the batch back if the sync thread is gone.
    pub(super) fn submit(&self, file: Arc<File>, waiting: Vec<(Seq, Reply)>) -> Result<(), Job> {
        self.tx
            .send(Job::Written { file, waiting })
            .map_err(|e| e.0)
    }

    /// Waits until everything submitted so far is synced and acknowledged.
    pub(super) fn drain(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Job::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.drain();
        // The thread ends when its queue closes; replace the sender to close it.
        let (closed, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Job>, on_failure: OnFailure) {
    let mut failed: Option<AuditError> = None;
    let gather = std::env::var("PC_GATHER_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    while let Ok(first) = rx.recv() {
        if gather > 0 {
            std::thread::sleep(std::time::Duration::from_micros(gather));
        }
        let mut jobs = vec![first];
        while jobs.len() < QUEUE {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if failed.is_none() {
            if let Err(e) = sync_files(&jobs) {
                failed = Some(on_failure(&e.to_string()));
            }
        }
        for job in jobs {
            match job {
                Job::Written { waiting, .. } => {
                    for (seq, reply) in waiting {
                        let _ = reply.send(match &failed {
                            None => Ok(seq),
                            Some(e) => Err(e.clone()),
                        });
                    }
                }
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// One `fdatasync` per distinct file (a rotation puts two in one round), in write order.
fn sync_files(jobs: &[Job]) -> std::io::Result<()> {
    let mut done: Vec<*const File> = Vec::new();
    for job in jobs {
        if let Job::Written { file, .. } = job {
            let id = Arc::as_ptr(file);
            if !done.contains(&id) {
                file.sync_data()?;
                done.push(id);
            }
        }
    }
    Ok(())
}
