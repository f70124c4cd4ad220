//! The HTTP request path of `/mcp`, `/sse` and `/messages` (Host/Origin guard, authentication,
//! content negotiation, session ids, body limits) down to the router, through the real request
//! handler but without a socket.
//!
//! Input: up to [`MAX_REQUESTS`] requests separated by a line `--next--`, each written like
//! HTTP/1.1 and read leniently: a request line `METHOD TARGET`, header lines `Name: value`
//! (lines that are no valid header are skipped), an empty line, the body. Placeholders make the
//! deeper paths reachable: `{session}` becomes the id of a live Streamable HTTP session
//! (protocol 2025-03-26) and `{legacy}` the id of a live legacy SSE session, both opened for
//! this input by client `fuzz`; `{token}` is `fuzz`'s bearer token, `{other}` that of client
//! `other`. Every input starts from a gateway without sessions.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

use crate::access::Access;
use crate::downstream::{InProcess, Reply};
use crate::router::audit_trail::AuditTrail;
use crate::router::Router;
use crate::sandbox::process::ProcessRuntime;
use crate::sandbox::Runtimes;
use crate::upstream::http::sse::Parser;

pub const MAX_REQUESTS: usize = 4;
const SEPARATOR: &[u8] = b"\n--next--\n";
const TOKEN: &str = "fuzz-token";
const OTHER_TOKEN: &str = "other-token";
/// Paths that need a credential.
const MCP_PATHS: &[&str] = &["/mcp", "/mcp/", "/sse", "/messages", "/messages/"];

/// No servers, two clients with tokens, one extra host and origin, a small body limit. The
/// fuzzer opens sessions far faster than any client would: creation rates would hide paths.
fn policy_toml() -> String {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        r#"
[gateway]
allowed_hosts = ["gateway.internal"]
allowed_origins = ["https://app.example"]
max_body_bytes = "16k"
max_sessions = 16

[clients.fuzz]
token_sha256 = "{}"
session_rate = "1000000/s"

[clients.other]
token_sha256 = "{}"
deny = ["*"]
session_rate = "1000000/s"
"#,
        hash(TOKEN),
        hash(OTHER_TOKEN)
    )
}

struct Gateway {
    rt: tokio::runtime::Runtime,
    handler: InProcess,
}

impl Gateway {
    fn start() -> Gateway {
        let policy = match crate::policy::parse(&policy_toml(), "fuzz-http.toml") {
            Ok(p) => p,
            Err(e) => panic!("the harness policy is invalid: {e}"),
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("no tokio runtime: {e}"),
        };
        let access = match Access::from_policy(&policy) {
            Ok(a) => Arc::new(a),
            Err(e) => panic!("the harness clients are invalid: {e}"),
        };
        let trail = AuditTrail::default();
        let runtimes = Runtimes {
            process: Arc::new(ProcessRuntime::new(
                crate::sandbox::firewall::Firewall::new(&policy.egress),
            )),
            docker: None,
        };
        let handler = {
            let _entered = rt.enter();
            let router = Router::start(&policy, Arc::new(runtimes), access.clone(), trail.clone());
            InProcess::new(&policy.gateway, router, access, trail)
        };
        Gateway { rt, handler }
    }

    fn run(&self, data: &[u8]) {
        self.rt.block_on(async {
            let mut live = Live::default();
            if contains(data, b"{session}") {
                live.session = self.initialize().await;
            }
            if contains(data, b"{legacy}") {
                live.legacy = self.open_legacy().await;
            }
            for text in split(data, SEPARATOR).take(MAX_REQUESTS) {
                let text = live.substitute(text);
                let Some(req) = parse_request(&text) else {
                    continue;
                };
                let facts = Facts::of(&req, &live);
                let reply = self.handler.handle(req).await;
                check(reply, &facts).await;
            }
            drop(live);
            self.handler.close_all_sessions().await;
            settle().await;
        });
    }

    /// A real initialize by client `fuzz`; the session id it returns.
    async fn initialize(&self) -> Option<String> {
        let req = Request::post("/mcp")
            .header(header::HOST, "127.0.0.1:8811")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{"sampling":{},"roots":{"listChanged":true}},"clientInfo":{"name":"fuzz","version":"1"}}}"#,
            )))
            .ok()?;
        let reply = self.handler.handle(req).await;
        let id = reply.headers().get("mcp-session-id")?.to_str().ok()?;
        Some(id.to_owned())
    }

    /// A real `GET /sse` by client `fuzz`: the session id from its `endpoint` event, and the
    /// stream, which keeps the session open while it lives.
    async fn open_legacy(&self) -> Option<(String, Reply)> {
        let req = Request::get("/sse")
            .header(header::HOST, "localhost:8811")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let mut reply = self.handler.handle(req).await;
        let frame = reply.body_mut().frame().now_or_never()??.ok()?;
        let data = frame.into_data().ok()?;
        let text = std::str::from_utf8(&data).ok()?;
        let id = text
            .split("session_id=")
            .nth(1)?
            .split_whitespace()
            .next()?;
        Some((id.to_owned(), reply))
    }
}

/// The sessions opened for this input.
#[derive(Default)]
struct Live {
    session: Option<String>,
    legacy: Option<(String, Reply)>,
}

impl Live {
    fn substitute(&self, text: &[u8]) -> Vec<u8> {
        let session = self.session.as_deref().unwrap_or("no-session");
        let legacy = self.legacy.as_ref().map_or("no-session", |l| l.0.as_str());
        let mut out = text.to_vec();
        for (from, to) in [
            (&b"{session}"[..], session),
            (b"{legacy}", legacy),
            (b"{token}", TOKEN),
            (b"{other}", OTHER_TOKEN),
        ] {
            out = replace(&out, from, to.as_bytes());
        }
        out
    }
}

/// What the request claimed, for checking what it got.
struct Facts {
    needs_credential: bool,
    /// The Authorization header contains a configured token (not necessarily well-formed).
    has_token: bool,
    /// Contains client `fuzz`'s token, the identity the live sessions belong to.
    has_owner_token: bool,
    /// Names a live session: `/mcp` with its Mcp-Session-Id, or `POST /messages` with its id.
    uses_live_session: bool,
}

impl Facts {
    fn of<B>(req: &Request<B>, live: &Live) -> Facts {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let path = req.uri().path();
        let session_header = req
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok());
        let mcp_session = path.starts_with("/mcp")
            && live.session.is_some()
            && session_header == live.session.as_deref();
        let legacy_session = path.starts_with("/messages")
            && req.method() == Method::POST
            && live
                .legacy
                .as_ref()
                .is_some_and(|(id, _)| req.uri().query().is_some_and(|q| q.contains(id.as_str())));
        Facts {
            needs_credential: MCP_PATHS.contains(&path),
            has_token: contains(auth, TOKEN.as_bytes()) || contains(auth, OTHER_TOKEN.as_bytes()),
            has_owner_token: contains(auth, TOKEN.as_bytes()),
            uses_live_session: mcp_session || legacy_session,
        }
    }
}

async fn check(mut reply: Reply, facts: &Facts) {
    let status = reply.status();
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        assert!(
            !facts.needs_credential || facts.has_token,
            "an MCP endpoint answered {status} without a credential"
        );
        assert!(
            !facts.uses_live_session || facts.has_owner_token,
            "another identity used a session ({status})"
        );
    }
    let content_type = reply
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type == "text/event-stream" {
        check_stream(&mut reply).await;
        return;
    }
    let Ok(body) = reply.into_body().collect().await.map(|c| c.to_bytes());
    if content_type == "application/json" {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
            panic!(
                "a JSON reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

/// The events a stream holds once the work the request started has run: every `message`
/// event carries one JSON value.
async fn check_stream(reply: &mut Reply) {
    settle().await;
    let mut parser = Parser::new(1 << 20);
    for _ in 0..16 {
        let Some(Some(Ok(frame))) = reply.body_mut().frame().now_or_never() else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = match parser.feed(&data) {
            Ok(evs) => evs,
            Err(e) => panic!("the gateway wrote an SSE event the parser refuses: {e}"),
        };
        for ev in events {
            if ev.event == "message" && !ev.data.is_empty() {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&ev.data) {
                    panic!("an SSE message is not JSON ({e}): {}", ev.data);
                }
            }
        }
        settle().await;
    }
}

/// Lets the tasks a request spawned (calls answered on a stream, audit writes) run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn parse_request(text: &[u8]) -> Option<Request<Full<Bytes>>> {
    let (head, body) = match find(text, b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| find(text, b"\n\n").map(|i| (i, 2)))
    {
        Some((i, n)) => (&text[..i], &text[i + n..]),
        None => (text, &[][..]),
    };
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut request_line = lines.next()?.split(|b| *b == b' ');
    let method = Method::from_bytes(request_line.next()?).ok()?;
    let uri = Uri::try_from(request_line.next().unwrap_or(b"/")).ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    builder.body(Full::new(Bytes::copy_from_slice(body))).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn split<'a>(data: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match find(r, separator) {
            Some(i) => {
                rest = Some(&r[i + separator.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(i) = find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

thread_local! {
    static GATEWAY: Gateway = Gateway::start();
}

pub fn http_request(data: &[u8]) {
    GATEWAY.with(|g| g.run(data));
}

/// Runs `f` with this thread's in-process gateway (no servers; clients `fuzz` and `other`)
/// and its runtime, for other harnesses of the request path.
pub(super) fn with_gateway<R>(f: impl FnOnce(&tokio::runtime::Runtime, &InProcess) -> R) -> R {
    GATEWAY.with(|g| f(&g.rt, &g.handler))
}

/// Client `fuzz`'s bearer token.
pub(super) const FUZZ_TOKEN: &str = TOKEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_list(token: &str, session: &str) -> Vec<u8> {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nmcp-session-id: {session}\r\ncontent-type: application/json\r\naccept: application/json\r\n\r\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}}"
        )
        .into_bytes()
    }

    /// The placeholders reach live sessions, and the checks see who used them: without this
    /// the fuzzer would only ever meet "unknown session".
    #[test]
    fn placeholders_open_live_sessions() {
        let g = Gateway::start();
        g.rt.block_on(async {
            let live = Live {
                session: g.initialize().await,
                legacy: g.open_legacy().await,
            };
            let session = live.session.clone().unwrap();
            assert_eq!(session.len(), 64);
            assert!(live.legacy.is_some());

            let owner =
                parse_request(&live.substitute(&tools_list("{token}", "{session}"))).unwrap();
            let facts = Facts::of(&owner, &live);
            assert!(facts.uses_live_session && facts.has_owner_token);
            assert_eq!(g.handler.handle(owner).await.status(), StatusCode::OK);

            let other =
                parse_request(&live.substitute(&tools_list("{other}", "{session}"))).unwrap();
            let facts = Facts::of(&other, &live);
            assert!(facts.uses_live_session && !facts.has_owner_token);
            assert_eq!(
                g.handler.handle(other).await.status(),
                StatusCode::NOT_FOUND
            );
            g.handler.close_all_sessions().await;
        });
    }

    #[test]
    fn requests_are_read_leniently() {
        let r = parse_request(
            b"GET /mcp?x=1 HTTP/1.1\nHost: a\nno colon here\nbad name: v\nX: y\n\nbody",
        )
        .unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().query(), Some("x=1"));
        assert_eq!(r.headers().len(), 2);
        assert!(parse_request(b"\xff /mcp").is_none());
        let parts: Vec<&[u8]> = split(b"a\n--next--\nb\n--next--\n", SEPARATOR).collect();
        assert_eq!(parts, vec![&b"a"[..], b"b", b""]);
    }
}
