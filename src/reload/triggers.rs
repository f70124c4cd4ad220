//! What starts a reload: SIGHUP, and a change of the policy file (or, for a signed policy, of
//! its signature file) seen by polling them.
//!
//! Polling (metadata every interval, no new dependency) rather than inotify: it also sees a
//! file replaced by rename (how editors and Kubernetes ConfigMaps write) and files on mounts
//! that do not deliver inotify events. A change is reported once the file has stopped
//! changing, so that a half-written file is not read; the reloader skips text it already tried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::{Reloader, Trigger};

/// Pause between the first sign of a change and the check that the file stopped changing.
const SETTLE: Duration = Duration::from_millis(200);
/// Most consecutive settle rounds before a file that keeps changing is read anyway.
const MAX_SETTLE_ROUNDS: usize = 25;
/// Reloads asked for while one runs; more are folded into those (each reads the latest file).
const QUEUE: usize = 2;

/// Starts listening for SIGHUP and, with `watch = Some((path, interval))`, polling the policy
/// file and what else the reloader reads with it ([`Reloader::watched`]); reloads run one after
/// another on a task of their own. The SIGHUP handler is in place when this returns (SIGHUP
/// would otherwise end the process).
pub fn start(reloader: Arc<Reloader>, watch: Option<(PathBuf, Duration)>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, mut rx) = mpsc::channel::<Trigger>(QUEUE);
    let signals = tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the policy");
            if signals.try_send(Trigger::Signal).is_err() {
                tracing::debug!("a reload is already queued; it will read the latest policy");
            }
        }
    });
    if let Some((path, interval)) = watch {
        let mut files = reloader.watched();
        if files.is_empty() {
            files.push(path.clone());
        }
        tracing::info!(policy = %path.display(), files = files.len(), interval_ms = interval.as_millis() as u64, "watching the policy file for changes");
        tokio::spawn(poll(files, interval, tx));
    }
    tokio::spawn(async move {
        while let Some(trigger) = rx.recv().await {
            reloader.reload(trigger).await;
        }
    });
    Ok(())
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: i64,
}

/// The stamps of every watched file; a file that is missing is `None`.
async fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(stamp(f).await);
    }
    out
}

async fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await.ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
        changed: m.ctime_nsec() + m.ctime() * 1_000_000_000,
    })
}

/// Sends `Trigger::File` whenever one of `files` (the policy first) changed and then all stayed
/// still: a policy and its signature written one after the other within the settle time are
/// read together.
async fn poll(files: Vec<PathBuf>, interval: Duration, tx: mpsc::Sender<Trigger>) {
    let mut last = stamps(&files).await;
    loop {
        tokio::time::sleep(interval).await;
        let mut now = stamps(&files).await;
        if now == last {
            continue;
        }
        if now.first().is_some_and(Option::is_none) {
            // Deleted, or between an editor's delete and rename: the policy in force stays.
            tracing::warn!(policy = %files[0].display(), "the policy file is gone; the policy in force stays until it is back");
            last = now;
            continue;
        }
        for _ in 0..MAX_SETTLE_ROUNDS {
            tokio::time::sleep(SETTLE).await;
            let again = stamps(&files).await;
            if again == now {
                break;
            }
            now = again;
        }
        last = now;
        if tx.send(Trigger::File).await.is_err() {
            return;
        }
    }
}
