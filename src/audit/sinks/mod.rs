//! SIEM sinks. Each reads the log files through its own persisted cursor (see [`cursor`]) in a
//! task of its own, so a slow or dead receiver never blocks or loses an append: the log on disk
//! is the buffer, and the sink catches up when the receiver returns.
//!
//! Delivery is at least once; receivers deduplicate on `(log_id, seq)`, which every message
//! carries (syslog: structured data `[portcullis@32473 log_id=".." seq=".."]`; CEF:
//! `externalId=log_id:seq`; HEC/webhook: inside the record). Failed sends are retried with
//! exponential backoff (capped); batches are bounded in records and bytes.

pub mod cursor;
pub mod http;
pub mod journald;
pub mod syslog;
pub(crate) mod tls;
pub mod witness_dir;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::policy::{AuditSink, HttpSinkAuth, SinkKind};
use cursor::Cursor;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit sink `{sink}`: {reason}")]
    Setup { sink: String, reason: String },
}

/// Tunables; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// How often an idle sink looks for new records.
    pub poll: Duration,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Syslog: how long a connection must stay up after a write before that write counts as
    /// delivered (TCP itself acknowledges nothing the receiver's application has seen).
    pub confirm_after: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            poll: Duration::from_millis(250),
            batch_records: 500,
            batch_bytes: 1 << 20,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            confirm_after: Duration::from_secs(1),
        }
    }
}

enum Transport {
    Syslog(syslog::Syslog),
    Http(http::Http),
    Journald(journald::Journald),
    WitnessDir(witness_dir::WitnessDir),
}

impl Transport {
    async fn send(&mut self, items: &[cursor::Item]) -> Result<(), String> {
        match self {
            Transport::Syslog(s) => s.send(items).await,
            Transport::Http(h) => h.send(items).await,
            Transport::Journald(j) => j.send(items).await,
            Transport::WitnessDir(w) => w.send(items),
        }
    }

    /// Whether a successful send still needs the confirmation window.
    fn deferred(&self) -> bool {
        matches!(self, Transport::Syslog(_))
    }
}

/// The running sinks of one log directory.
pub struct Sinks {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sinks {
    /// Starts one task per sink (must be called inside a Tokio runtime). Secrets for HTTP
    /// sinks are read now; a missing secret or CA file is an error.
    pub fn start(dir: &Path, sinks: &[AuditSink], opts: SinkOptions) -> Result<Sinks, SinkError> {
        let (stop, rx) = watch::channel(false);
        let mut transports = Vec::new();
        for s in sinks {
            let setup = |reason: String| SinkError::Setup {
                sink: s.name.clone(),
                reason,
            };
            let t = match &s.kind {
                SinkKind::Syslog {
                    address,
                    tls,
                    ca_file,
                    server_name,
                    format,
                } => Transport::Syslog(
                    syslog::Syslog::new(
                        address,
                        *tls,
                        ca_file.as_deref(),
                        server_name.as_deref(),
                        *format,
                    )
                    .map_err(setup)?,
                ),
                SinkKind::Http { url, auth, ca_file } => {
                    let auth = match auth {
                        HttpSinkAuth::HecToken(r) => http::Auth::Hec(
                            crate::secrets::resolve("hec_token", r)
                                .map_err(|e| setup(e.to_string()))?,
                        ),
                        HttpSinkAuth::HmacSecret(r) => http::Auth::Hmac(
                            crate::secrets::resolve("hmac_secret", r)
                                .map_err(|e| setup(e.to_string()))?,
                        ),
                        HttpSinkAuth::None => http::Auth::None,
                    };
                    Transport::Http(http::Http::new(url, auth, ca_file.as_deref()).map_err(setup)?)
                }
                SinkKind::Journald => {
                    Transport::Journald(journald::Journald::new().map_err(setup)?)
                }
                SinkKind::WitnessDir { path } => {
                    Transport::WitnessDir(witness_dir::WitnessDir::new(path).map_err(setup)?)
                }
            };
            transports.push((s.name.clone(), t, s.witness));
        }
        let tasks = transports
            .into_iter()
            .map(|(name, t, witness)| {
                tokio::spawn(run(
                    name,
                    dir.to_path_buf(),
                    t,
                    witness,
                    opts.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        Ok(Sinks { stop, tasks })
    }

    /// Stops every sink (waiting at most `limit`), after each saved what it delivered.
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(limit, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

fn save(path: &Path, c: &Cursor, name: &str) {
    if let Err(e) = cursor::save(path, c) {
        // Not fatal: the worst case is resending from an older cursor (duplicates).
        tracing::warn!(sink = name, error = %e, "cannot save the sink cursor");
    }
}

async fn read(
    dir: PathBuf,
    from: Cursor,
    opts: &SinkOptions,
) -> Result<(Vec<cursor::Item>, Cursor), String> {
    let (n, b) = (opts.batch_records, opts.batch_bytes);
    tokio::task::spawn_blocking(move || cursor::read_batch(&dir, &from, n, b))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn run(
    name: String,
    dir: PathBuf,
    mut t: Transport,
    witness: bool,
    opts: SinkOptions,
    mut stop: watch::Receiver<bool>,
) {
    let cpath = cursor::path(&dir, &name);
    let mut committed = cursor::load(&cpath);
    let mut pos = committed.clone();
    let mut pending: VecDeque<(Instant, Cursor)> = VecDeque::new();
    let mut backoff = opts.backoff_min;
    tracing::info!(sink = %name, segment = committed.segment, offset = committed.offset, "audit sink started");
    loop {
        if *stop.borrow() {
            break;
        }
        if let Transport::Syslog(s) = &mut t {
            if !pending.is_empty() {
                if s.alive().await {
                    while let Some((at, c)) = pending.front() {
                        if at.elapsed() < opts.confirm_after {
                            break;
                        }
                        committed = c.clone();
                        pending.pop_front();
                        save(&cpath, &committed, &name);
                    }
                } else {
                    tracing::warn!(sink = %name, "syslog receiver closed the connection; resending unconfirmed records");
                    pos = committed.clone();
                    pending.clear();
                }
            }
        }
        if pending.len() > 10_000 {
            pause(opts.poll, &mut stop).await;
            continue;
        }
        let (mut items, next) = match read(dir.clone(), pos.clone(), &opts).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "cannot read the audit log");
                pause(backoff, &mut stop).await;
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
        };
        let read_any = !items.is_empty();
        if witness {
            items.retain(|i| witness_dir::is_seal(&i.line));
        }
        if items.is_empty() {
            pos = next;
            if read_any && pending.is_empty() {
                // Only records a witness does not keep: nothing to deliver, just move on.
                committed = pos.clone();
                save(&cpath, &committed, &name);
            } else {
                pause(opts.poll, &mut stop).await;
            }
            continue;
        }
        match t.send(&items).await {
            Ok(()) => {
                backoff = opts.backoff_min;
                pos = next.clone();
                if t.deferred() {
                    pending.push_back((Instant::now(), next));
                } else {
                    committed = next;
                    save(&cpath, &committed, &name);
                }
            }
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, retry_in = ?backoff, "audit sink delivery failed; will retry");
                if let Transport::Syslog(s) = &mut t {
                    s.disconnect();
                }
                pos = committed.clone();
                pending.clear();
                pause(backoff, &mut stop).await;
                backoff = (backoff * 2).min(opts.backoff_max);
            }
        }
    }
    // A clean stop still confirms what the window allows.
    if let Transport::Syslog(s) = &mut t {
        if let Some((_, last)) = pending.back().cloned() {
            tokio::time::sleep(opts.confirm_after).await;
            if s.alive().await {
                save(&cpath, &last, &name);
            }
        }
    }
}
