//! The load generator: N concurrent MCP sessions over Streamable HTTP, each on its own
//! keep-alive connection, each doing `initialize`, `notifications/initialized`, a warm-up, then
//! a fixed number of requests back to back. Every request's latency is kept; nothing is sampled.
//!
//! The client is hyper's bare HTTP/1.1 connection (no pool, no redirects, no JSON parsing of
//! answers beyond a byte check), so that the generator spends as little of the shared CPU as a
//! client can.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The protocol revision the generator asks for (what current SDK clients send).
pub const PROTOCOL: &str = "2025-11-25";
/// The longest any single request may take before the run counts it as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of an `initialize` refused with 429 (100 ms apart) before giving up.
const OPEN_RETRIES: usize = 600;

/// Where the load goes and what it sends.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub work: Work,
    /// Sent as `Authorization: Bearer ...` when set (peers that insist on a token).
    pub bearer: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Work {
    /// `tools/call` of this tool with `{"text": "..."}`.
    Call(String),
    /// A list method (`tools/list`, `resources/list`), first page.
    List(&'static str),
    /// The same as stateless 2026-07-28 requests: no session, the envelope in `_meta`, the
    /// request metadata headers.
    ModernCall(String),
    ModernList,
}

impl Work {
    fn is_modern(&self) -> bool {
        matches!(self, Work::ModernCall(_) | Work::ModernList)
    }
}

/// The revision of the stateless requests.
pub const MODERN: &str = "2026-07-28";
pub const ENVELOPE: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"portcullis-bench","version":"1"}}"#;

/// How much load: `sessions` concurrent sessions, each doing `warmup` unmeasured requests and
/// then `calls` measured ones; a session stops early at `deadline` (slow peers).
///
/// `rate`: `None` sends each request as soon as the previous answer arrived (closed loop: the
/// run finds the capacity, and latency is mostly queueing once the CPU is saturated). `Some(r)`
/// offers `r` requests/s in total, spread evenly over the sessions and over time, so that the
/// latency shows what a request costs below saturation.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub sessions: usize,
    pub calls: usize,
    pub warmup: usize,
    pub deadline: Option<Duration>,
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Latencies of successful requests, in nanoseconds, sorted.
    pub latencies: Vec<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile in microseconds.
    pub fn pct_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let n = self.latencies.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1] as f64 / 1e3
    }

    pub fn max_us(&self) -> f64 {
        self.latencies.last().map_or(0.0, |v| *v as f64 / 1e3)
    }
}

/// One MCP session on one connection.
pub struct Session {
    send: SendRequest<Full<Bytes>>,
    uri: Uri,
    host: HeaderValue,
    bearer: Option<HeaderValue>,
    session: Option<HeaderValue>,
    next_id: u64,
    body: Work,
    /// The request metadata headers of the next request (stateless work only).
    mirror: Vec<(&'static str, HeaderValue)>,
}

pub struct Answer {
    pub status: u16,
    pub session: Option<HeaderValue>,
    pub body: Bytes,
}

impl Session {
    /// Connects and completes the MCP handshake.
    pub async fn open(target: &Target) -> Result<Session, String> {
        let uri: Uri = target
            .url
            .parse()
            .map_err(|e| format!("bad url {}: {e}", target.url))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url {} has no host", target.url))?
            .to_string();
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        tokio::spawn(conn);
        let mut s = Session {
            send,
            host: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
            uri,
            bearer: target
                .bearer
                .as_ref()
                .and_then(|b| HeaderValue::from_str(&format!("Bearer {b}")).ok()),
            session: None,
            next_id: 1,
            body: target.work.clone(),
            mirror: Vec::new(),
        };
        if target.work.is_modern() {
            // Stateless: nothing to open.
            return Ok(s);
        }
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"portcullis-bench","version":"1"}}}}}}"#
        );
        // A gateway with a session creation rate (Portcullis' `session_rate`) refuses sessions
        // opened faster than it allows with 429: wait and retry, as a client would. Opening is
        // not measured.
        let mut a = s.post(init.clone().into_bytes()).await?;
        for _ in 0..OPEN_RETRIES {
            if a.status != 429 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            a = s.post(init.clone().into_bytes()).await?;
        }
        if a.status != 200 || !has(&a.body, b"\"result\"") {
            return Err(format!(
                "initialize answered HTTP {}: {}",
                a.status,
                excerpt(&a.body)
            ));
        }
        s.session = a.session;
        let a = s
            .post(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec())
            .await?;
        if !(200..300).contains(&a.status) {
            return Err(format!(
                "notifications/initialized answered HTTP {}: {}",
                a.status,
                excerpt(&a.body)
            ));
        }
        Ok(s)
    }

    pub async fn post(&mut self, body: Vec<u8>) -> Result<Answer, String> {
        let mut req = Request::post(self.uri.clone())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s.clone())
                .header("mcp-protocol-version", PROTOCOL);
        }
        if let Some(b) = &self.bearer {
            req = req.header(header::AUTHORIZATION, b.clone());
        }
        for (k, v) in self.mirror.drain(..) {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let work = async {
            self.send.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .send
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let session = resp.headers().get("mcp-session-id").cloned();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Answer {
                status,
                session,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
    }

    /// One request of the session's kind; `Err` when it did not succeed.
    pub async fn request(&mut self) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let body = match &self.body {
            Work::Call(tool) => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"bench-{id}"}}}}}}"#
            ),
            Work::List(method) => {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#)
            }
            Work::ModernCall(tool) => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"bench-{id}"}},{ENVELOPE}}}}}"#
            ),
            Work::ModernList => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{{ENVELOPE}}}}}"#
            ),
        };
        self.mirror = match &self.body {
            Work::ModernCall(tool) => mirror_headers("tools/call", Some(tool)),
            Work::ModernList => mirror_headers("tools/list", None),
            _ => Vec::new(),
        };
        let a = self.post(body.into_bytes()).await?;
        if a.status != 200 {
            return Err(format!("HTTP {}: {}", a.status, excerpt(&a.body)));
        }
        if !has(&a.body, b"\"result\"") || has(&a.body, b"\"isError\":true") {
            return Err(format!("not a successful result: {}", excerpt(&a.body)));
        }
        Ok(())
    }
}

/// The request metadata headers of a stateless request.
fn mirror_headers(method: &'static str, name: Option<&str>) -> Vec<(&'static str, HeaderValue)> {
    let mut out = vec![
        ("mcp-protocol-version", HeaderValue::from_static(MODERN)),
        ("mcp-method", HeaderValue::from_static(method)),
    ];
    if let Some(v) = name.and_then(|n| HeaderValue::from_str(n).ok()) {
        out.push(("mcp-name", v));
    }
    out
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn excerpt(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

/// Opens `plan.sessions` sessions, warms them up, then measures `plan.calls` requests on each,
/// all sessions at once. `probe` is sampled right before and right after the measured part.
pub async fn run<P>(
    target: &Target,
    plan: Plan,
    probe: &impl Fn() -> P,
) -> Result<(Stats, P, P), String> {
    let mut sessions = Vec::with_capacity(plan.sessions);
    for _ in 0..plan.sessions {
        sessions.push(Session::open(target).await?);
    }
    let gate = Arc::new(tokio::sync::Barrier::new(plan.sessions + 1));
    let mut tasks = Vec::with_capacity(plan.sessions);
    // Paced: session i sends at start + (i / sessions + k) * interval, k = 0, 1, ...
    let interval = plan
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(plan.sessions as f64 / r));
    for (i, mut s) in sessions.into_iter().enumerate() {
        let gate = gate.clone();
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / plan.sessions as f64));
        tasks.push(tokio::spawn(async move {
            let mut out = Stats {
                latencies: Vec::with_capacity(plan.calls),
                ..Stats::default()
            };
            for _ in 0..plan.warmup {
                if let Err(e) = s.request().await {
                    out.errors += 1;
                    out.first_error.get_or_insert(format!("warm-up: {e}"));
                }
            }
            gate.wait().await;
            let start = Instant::now();
            for k in 0..plan.calls {
                if plan.deadline.is_some_and(|d| start.elapsed() > d) {
                    break;
                }
                if let (Some(iv), Some(off)) = (interval, offset) {
                    // A late answer delays only this session's next request, never the others:
                    // latency is taken from the actual send, which is right below saturation.
                    let at = start + off + iv.mul_f64(k as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t = Instant::now();
                match s.request().await {
                    Ok(()) => {
                        out.latencies.push(t.elapsed().as_nanos() as u64);
                        out.ok += 1;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            out
        }));
    }
    gate.wait().await;
    let start = Instant::now();
    let before = probe();
    let mut all = Stats::default();
    for t in tasks {
        let s = t.await.map_err(|e| format!("session task: {e}"))?;
        all.ok += s.ok;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
        all.latencies.extend(s.latencies);
    }
    all.wall = start.elapsed();
    let after = probe();
    all.latencies.sort_unstable();
    Ok((all, before, after))
}

/// Opens `n` sessions and makes one request on each; returns them still open (their
/// connections too), for measuring what open sessions cost the server.
pub async fn hold(target: &Target, n: usize) -> Result<Vec<Session>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = Session::open(target)
            .await
            .map_err(|e| format!("session {i}: {e}"))?;
        s.request().await.map_err(|e| format!("session {i}: {e}"))?;
        out.push(s);
    }
    Ok(out)
}
