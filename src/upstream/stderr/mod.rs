//! A server's stderr on its way into the gateway's log.
//!
//! Every line a server writes is read at once (the server never blocks on a full pipe), and:
//! - cut to [`MAX_LINE`] bytes with a marker; the gateway never buffers more of a line than that;
//! - redacted (the server's secrets, tokens the gateway obtained) and escaped: control characters,
//!   ANSI escape sequences, line separators and direction overrides become visible escapes
//!   (`\n`, `\x1b`, `\u{202e}`), so a line stays one line of the gateway's log, in text and JSON
//!   format alike, with the `server` field naming who wrote it;
//! - logged at INFO under `portcullis::upstream::stderr` while the server is within its budget
//!   (`log_rate`, a token bucket shared by all instances of the server); beyond it the line is
//!   counted, not logged, and one WARN line per [`SUMMARY_INTERVAL`] says how many were held back;
//! - kept among the server's last lines ([`ServerStderr::tail`], bounded), logged or not, so that
//!   `/ready` and `doctor` can show why a server failed.
//!
//! `/metrics` counts lines per server: `portcullis_server_stderr_lines_total{outcome="forwarded"}`
//! and `{outcome="suppressed"}`.

mod budget;
mod line;
mod tail;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::BufReader;
use tokio::time::Instant;

use crate::policy::Rate;
use crate::sandbox::BoxRead;
use crate::secrets::Redactor;
use budget::Budget;
pub use budget::SUMMARY_INTERVAL;
pub use line::MAX_LINE;
use line::{cut_marker, escape_into, LineReader, RawLine};
use tail::Tail;
pub use tail::{TAIL_BYTES, TAIL_LINES};

const TARGET: &str = "portcullis::upstream::stderr";

/// The stderr of one server (all its instances): its budget, its last lines, its counters.
pub struct ServerStderr {
    server: Arc<str>,
    budget: Mutex<Budget>,
    tail: Mutex<Tail>,
    forwarded: Arc<AtomicU64>,
    suppressed: Arc<AtomicU64>,
}

impl std::fmt::Debug for ServerStderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStderr")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServerStderr {
    pub fn new(server: &str, rate: Rate) -> Arc<ServerStderr> {
        let (forwarded, suppressed) = crate::metrics::global().server_stderr(server);
        Arc::new(ServerStderr {
            server: Arc::from(server),
            budget: Mutex::new(Budget::new(rate, Instant::now())),
            tail: Mutex::new(Tail::default()),
            forwarded,
            suppressed,
        })
    }

    /// Applies a reloaded policy's `log_rate`.
    pub fn set_rate(&self, rate: Rate) {
        lock(&self.budget).set_rate(rate, Instant::now());
    }

    pub fn rate(&self) -> Rate {
        lock(&self.budget).rate()
    }

    /// The server's last stderr lines, oldest first, redacted and escaped as in the log (at most
    /// [`TAIL_LINES`] lines and [`TAIL_BYTES`] bytes), including lines over its log budget.
    pub fn tail(&self) -> Vec<String> {
        lock(&self.tail).render()
    }

    fn accept(&self, line: RawLine, redactor: &Arc<Redactor>) {
        let now = Instant::now();
        if lock(&self.budget).admit(now) {
            let text = present(&line, redactor);
            // `message` after `server`: in the text format the server's name comes first and
            // everything it wrote follows on the same line.
            tracing::info!(target: TARGET, server = %self.server, message = %text);
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.tail).push(line, redactor);
        self.summarize(now);
    }

    fn summary_due(&self) -> Option<Instant> {
        lock(&self.budget).summary_due()
    }

    fn summarize(&self, now: Instant) {
        let Some(s) = lock(&self.budget).take_summary(now) else {
            return;
        };
        tracing::warn!(
            target: TARGET,
            server = %self.server,
            suppressed = s.suppressed,
            log_rate = %crate::policy::units::format_rate(s.rate.count, s.rate.per),
            burst = s.rate.burst,
            "stderr lines over the server's log budget were counted, not logged"
        );
    }
}

/// A line as the log shows it: redacted, escaped, with a marker when it was cut.
fn present(line: &RawLine, redactor: &Redactor) -> String {
    let text = String::from_utf8_lossy(&line.bytes);
    let text = text.trim_end();
    let redacted = if line.was_cut() {
        redactor.redact_cut(text)
    } else {
        redactor.redact(text).into_owned()
    };
    let mut out = String::with_capacity(redacted.len() + 16);
    let stopped = escape_into(&redacted, &mut out);
    if stopped || line.was_cut() {
        cut_marker(&mut out, line.len);
    }
    out
}

/// Reads `stderr` until it ends, feeding each line to `log`. Ends after the last summary of
/// suppressed lines is out (at most [`SUMMARY_INTERVAL`] after the stream closed).
pub async fn forward(log: Arc<ServerStderr>, stderr: BoxRead, redactor: Arc<Redactor>) {
    let mut lines = LineReader::new(BufReader::with_capacity(16 * 1024, stderr));
    loop {
        let due = log.summary_due();
        let next = tokio::select! {
            r = lines.next_line() => r,
            () = sleep_until(due) => {
                log.summarize(Instant::now());
                continue;
            }
        };
        match next {
            Ok(Some(line)) if line.bytes.iter().all(u8::is_ascii_whitespace) && !line.was_cut() => {
            }
            Ok(Some(line)) => log.accept(line, &redactor),
            Ok(None) | Err(_) => break,
        }
    }
    // What the last moments held back is reported even though the server is gone.
    if let Some(due) = log.summary_due() {
        tokio::time::sleep_until(due).await;
        log.summarize(Instant::now());
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
