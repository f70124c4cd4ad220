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

/// Records written to `file`, to acknowledge once it is synced.
struct Written {
    file: Arc<File>,
    waiting: Vec<(Seq, Reply)>,
}

/// Called with the error when an `fdatasync` fails: after such a failure the kernel may have
/// dropped the dirty pages, so no later sync can prove those records durable.
pub(super) type OnFailure = Box<dyn Fn(&str) -> AuditError + Send>;

/// The writer's handle on the sync thread. Dropping it waits until every batch handed over
/// has been synced and acknowledged.
pub(super) struct Syncer {
    tx: Option<SyncSender<Written>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn start(on_failure: OnFailure) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || run(rx, on_failure))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands over a batch written to `file`. Gives the replies back if the sync thread is gone.
    pub(super) fn submit(
        &self,
        file: Arc<File>,
        waiting: Vec<(Seq, Reply)>,
    ) -> Result<(), Vec<(Seq, Reply)>> {
        let Some(tx) = &self.tx else {
            return Err(waiting);
        };
        tx.send(Written { file, waiting }).map_err(|e| e.0.waiting)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread drains its queue, then ends when the queue is closed.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Written>, on_failure: OnFailure) {
    let mut failed: Option<AuditError> = None;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < QUEUE {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        if failed.is_none() {
            if let Err(e) = sync_files(&batches) {
                failed = Some(on_failure(&e.to_string()));
            }
        }
        for (seq, reply) in batches.into_iter().flat_map(|b| b.waiting) {
            let _ = reply.send(match &failed {
                None => Ok(seq),
                Some(e) => Err(e.clone()),
            });
        }
    }
}

/// One `fdatasync` per distinct file (a rotation puts two in one round), in write order.
fn sync_files(batches: &[Written]) -> std::io::Result<()> {
    let mut done: Vec<*const File> = Vec::new();
    for b in batches {
        let id = Arc::as_ptr(&b.file);
        if !done.contains(&id) {
            b.file.sync_data()?;
            done.push(id);
        }
    }
    Ok(())
}
