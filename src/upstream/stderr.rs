//! What a server writes on stderr, on its way to the gateway's own log.
//!
//! Contract:
//! - A server cannot fill the disk through the gateway's log: every instance of a server shares
//!   one budget of lines (`server_log_rate`, a token bucket); lines beyond it are counted, not
//!   logged, and once per `SUMMARY_EVERY` one warning per server says how many were suppressed.
//!   `/metrics` counts logged and suppressed lines per server.
//! - A server cannot forge the gateway's log lines: its text is never the log message. It goes
//!   into the `line` field in Rust's escaped form (quotes, line breaks, ANSI and every other
//!   control character escaped), so in text and JSON format alike it reads as one quoted value
//!   attributed to `server`.
//! - Memory stays bounded whatever the server writes: a line is kept up to `MAX_LINE` bytes and
//!   the rest of it is skipped as it streams in (never buffered), with a marker saying how much.
//! - The last `TAIL_LINES` lines of each server (redacted like the log) stay in memory, suppressed
//!   or not, so that `/ready` and `doctor` can show why a server failed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::policy::Rate;
use crate::sandbox::BoxRead;
use crate::secrets::Redactor;

/// Longest part of one line that is kept; the rest is skipped.
pub const MAX_LINE: usize = 4096;
/// Lines of each server's stderr kept for diagnostics.
pub const TAIL_LINES: usize = 20;
/// How often suppressed lines are summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Per server: the log budget, the counters since the last summary, the tail.
struct ServerLog {
    /// The server's own `log_rate`; `None` follows `[gateway] server_log_rate`.
    own_rate: Mutex<Option<Rate>>,
    bucket: Mutex<Bucket>,
    suppressed_since_summary: AtomicU64,
    tail: Mutex<VecDeque<String>>,
}

struct Bucket {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            rate,
            refilled: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let per_sec = f64::from(self.rate.count) / self.rate.per.as_secs_f64().max(1e-9);
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.rate.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn registry() -> &'static Mutex<HashMap<Arc<str>, Arc<ServerLog>>> {
    static R: OnceLock<Mutex<HashMap<Arc<str>, Arc<ServerLog>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn default_rate() -> &'static Mutex<Rate> {
    static D: OnceLock<Mutex<Rate>> = OnceLock::new();
    D.get_or_init(|| Mutex::new(crate::policy::DEFAULT_SERVER_LOG_RATE))
}

/// Sets `[gateway] server_log_rate` (at start and on every reload).
pub fn set_default_rate(rate: Rate) {
    if let Ok(mut d) = default_rate().lock() {
        *d = rate;
    }
}

/// The log state of `server`, following its own `log_rate` from now on (a reload may change
/// it; every instance of the server shares the state).
fn server_log(server: &Arc<str>, own_rate: Option<Rate>) -> Arc<ServerLog> {
    let Ok(mut m) = registry().lock() else {
        return Arc::new(ServerLog::new());
    };
    let log = m
        .entry(server.clone())
        .or_insert_with(|| Arc::new(ServerLog::new()))
        .clone();
    if let Ok(mut r) = log.own_rate.lock() {
        *r = own_rate;
    }
    log
}

impl ServerLog {
    fn new() -> ServerLog {
        let rate = default_rate()
            .lock()
            .map(|r| *r)
            .unwrap_or(crate::policy::DEFAULT_SERVER_LOG_RATE);
        ServerLog {
            own_rate: Mutex::new(None),
            bucket: Mutex::new(Bucket::new(rate)),
            suppressed_since_summary: AtomicU64::new(0),
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
        }
    }

    /// Whether one more line may be logged now.
    fn take(&self) -> bool {
        let rate = self
            .own_rate
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or_else(|| {
                default_rate()
                    .lock()
                    .map(|r| *r)
                    .unwrap_or(crate::policy::DEFAULT_SERVER_LOG_RATE)
            });
        let Ok(mut b) = self.bucket.lock() else {
            return false;
        };
        if b.rate != rate {
            *b = Bucket::new(rate);
        }
        b.take()
    }

    fn remember(&self, line: &str) {
        if let Ok(mut t) = self.tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_owned());
        }
    }
}

/// The last lines `server` wrote on stderr (oldest first), redacted; empty if none.
pub fn tail(server: &str) -> Vec<String> {
    registry()
        .lock()
        .ok()
        .and_then(|m| m.get(server).cloned())
        .and_then(|log| log.tail.lock().ok().map(|t| t.iter().cloned().collect()))
        .unwrap_or_default()
}

/// `reason`, followed by the server's last stderr lines when it has any: what `/ready` and a
/// failed start report.
pub fn with_tail(server: &str, reason: &str, lines: usize) -> String {
    let t = tail(server);
    if t.is_empty() {
        return reason.to_owned();
    }
    let start = t.len().saturating_sub(lines);
    format!("{reason}; last stderr: {}", t[start..].join(" | "))
}

/// Reads `stderr` to its end, logging within `server`'s budget.
pub async fn forward(
    server: Arc<str>,
    mut stderr: BoxRead,
    redactor: Arc<Redactor>,
    own_rate: Option<Rate>,
) {
    start_summaries();
    let log = server_log(&server, own_rate);
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut skipped: usize = 0;
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let (part, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&part[..part.len().min(room)]);
            skipped += part.len().saturating_sub(room);
            match ends {
                Some(next) => {
                    emit(&server, &log, &redactor, &line, skipped);
                    line.clear();
                    skipped = 0;
                    chunk = &chunk[next..];
                }
                None => chunk = &[],
            }
        }
    }
    if !line.is_empty() || skipped > 0 {
        emit(&server, &log, &redactor, &line, skipped);
    }
}

fn emit(server: &Arc<str>, log: &ServerLog, redactor: &Redactor, raw: &[u8], skipped: usize) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    if text.trim().is_empty() && skipped == 0 {
        return;
    }
    // A cut line may end inside a secret, whose beginning plain redaction does not see.
    let mut text = if skipped > 0 {
        redactor.redact_cut(text)
    } else {
        redactor.redact(text).into_owned()
    };
    if skipped > 0 {
        text.push_str(&format!(" [cut: {skipped} more bytes]"));
    }
    log.remember(&text);
    let allowed = log.take();
    let metrics = crate::metrics::global();
    if allowed {
        metrics.server_stderr(server, "logged");
        tracing::info!(target: "portcullis::upstream::stderr", server = %server, line = ?text, "server stderr");
    } else {
        metrics.server_stderr(server, "suppressed");
        log.suppressed_since_summary.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts (once per process) the task that summarises suppressed lines.
fn start_summaries() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                summarise();
            }
        });
    });
}

fn summarise() {
    let logs: Vec<(Arc<str>, Arc<ServerLog>)> = match registry().lock() {
        Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(_) => return,
    };
    for (server, log) in logs {
        let n = log.suppressed_since_summary.swap(0, Ordering::Relaxed);
        if n > 0 {
            let rate = log
                .bucket
                .lock()
                .map(|b| format!("{}/{}s", b.rate.count, b.rate.per.as_secs_f64()))
                .unwrap_or_default();
            tracing::warn!(target: "portcullis::upstream::stderr", server = %server, suppressed = n, budget = %rate, "server wrote more stderr than its log budget; lines suppressed (see server_log_rate)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures what is logged.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn rate(count: u32, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(3600),
            burst,
        }
    }

    async fn logged(server: &str, input: Vec<u8>, json: bool, r: Rate) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let redactor = Arc::new(Redactor::new([("API_KEY", "sk-live-0123456789")]));
        let input: BoxRead = Box::new(std::io::Cursor::new(input));
        if json {
            let sub = tracing_subscriber::fmt()
                .json()
                .with_writer(move || writer.clone())
                .finish();
            let _g = tracing::subscriber::set_default(sub);
            forward(server.into(), input, redactor, Some(r)).await;
        } else {
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            let _g = tracing::subscriber::set_default(sub);
            forward(server.into(), input, redactor, Some(r)).await;
        }
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out
    }

    #[tokio::test]
    async fn secrets_are_redacted_and_lines_kept_in_the_tail() {
        let out = logged(
            "t-redact",
            b"starting with key sk-live-0123456789\nok\n".to_vec(),
            false,
            rate(100, 100),
        )
        .await;
        assert!(out.contains("[REDACTED:API_KEY]"), "{out}");
        assert!(!out.contains("sk-live-0123456789"), "{out}");
        let t = tail("t-redact");
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(t[0].contains("[REDACTED:API_KEY]"), "{t:?}");
    }

    #[tokio::test]
    async fn a_flood_is_cut_to_the_budget_and_the_tail_keeps_the_last_lines() {
        let input: Vec<u8> = (0..5000)
            .flat_map(|i| format!("noise line {i}\n").into_bytes())
            .collect();
        let out = logged("t-flood", input, false, rate(1, 10)).await;
        assert_eq!(out.matches("server stderr").count(), 10, "{out}");
        let t = tail("t-flood");
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.last().map(String::as_str), Some("noise line 4999"));
        let m = crate::metrics::global().render();
        assert!(
            m.contains("portcullis_server_stderr_lines_total{server=\"t-flood\",outcome=\"suppressed\"} 4990"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn forged_lines_and_escapes_stay_inside_one_quoted_field() {
        let forged = b"hello\r\n2026-01-01T00:00:00Z ERROR portcullis::cli::serve: server=other shutting down\n\x1b[31mred\x1b[0m \x07bell\n".to_vec();
        for json in [false, true] {
            let out = logged("t-forge", forged.clone(), json, rate(100, 100)).await;
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 3, "{out}");
            for l in &lines {
                assert!(l.contains("t-forge"), "not attributed: {l}");
                assert!(
                    !l.contains('\u{1b}') && !l.contains('\u{7}'),
                    "raw control character: {l:?}"
                );
            }
            // The forged text sits inside the quoted `line` value, never at a line's start.
            assert!(
                lines[1].contains("ERROR portcullis::cli::serve: server=other"),
                "{out}"
            );
            assert!(!lines[1].starts_with("2026-01-01"), "{out}");
            assert!(lines[2].contains("\\u{1b}[31mred"), "{out}");
        }
    }

    #[tokio::test]
    async fn a_secret_the_cut_goes_through_is_redacted_too() {
        // The secret straddles MAX_LINE: only its beginning is kept, which a plain redaction
        // does not recognise.
        let mut input = vec![b'y'; MAX_LINE - 10];
        input.extend_from_slice(b"sk-live-0123456789 and more\n");
        let out = logged("t-cut-secret", input, false, rate(100, 100)).await;
        assert!(
            !out.contains("sk-live"),
            "the secret's beginning leaked: {out}"
        );
        assert!(out.contains("[REDACTED:API_KEY]"), "{out}");
        let t = tail("t-cut-secret").join("\n");
        assert!(!t.contains("sk-live"), "{t}");
    }

    #[tokio::test]
    async fn a_line_without_end_is_cut_without_being_buffered() {
        let mut input = vec![b'x'; 3 * 1024 * 1024];
        input.extend_from_slice(b"\nafter\n");
        let out = logged("t-long", input, false, rate(100, 100)).await;
        let cut = 3 * 1024 * 1024 - MAX_LINE;
        assert!(
            out.contains(&format!("[cut: {cut} more bytes]")),
            "{}",
            &out[..200.min(out.len())]
        );
        assert!(out.contains("after"), "the next line is read normally");
    }
}
