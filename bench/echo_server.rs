//! `portcullis-bench-echo`: the benchmark's upstream MCP server, as small and fast as an MCP
//! server can be, so that what the benchmark measures is the gateway in front of it.
//!
//!   portcullis-bench-echo --http 127.0.0.1:PORT [--tools N] [--resources N] [--big]   Streamable HTTP on /mcp
//!   portcullis-bench-echo --stdio [--tools N] [--resources N] [--big]                 JSON-RPC lines on stdio
//!   portcullis-bench-echo --http 127.0.0.1:PORT --static FILE                        the same bytes to every POST
//!
//! `--static`: the ceiling of a row whose answer is always the same (a cached list page): an
//! HTTP server that reads nothing and computes nothing, only sends FILE, on the same hyper
//! stack as the gateway.
//!
//! Tools: `echo` (returns its `text` argument) plus `tool_1` .. `tool_{N-1}` that behave the same,
//! so that `tools/list` can be made as long as a benchmark needs. With `--resources N`, also
//! resources `bench://r/0` .. `bench://r/{N-1}` (for `resources/list`). With `--big`, also `big`,
//! which answers with a text of `bytes` bytes, written from one shared buffer so that many large
//! answers in flight cost this server one copy. Only loopback addresses are accepted for
//! `--http`: this server exists for benchmarks on one machine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

struct Server {
    /// The `tools/list` result, serialized once.
    tools: Box<serde_json::value::RawValue>,
    /// The `resources/list` result, when the server has resources.
    resources: Option<Box<serde_json::value::RawValue>>,
    sessions: AtomicU64,
    /// The text `big` answers with (a prefix of it), grown to the largest size asked for.
    big: std::sync::Mutex<Bytes>,
    /// `--static`: the answer to every POST.
    fixed: Option<Bytes>,
}

/// Largest answer `big` makes.
const MAX_BIG: usize = 1 << 30;

/// A serialized answer: one buffer, or a large one in parts that share the `big` text.
enum Answer {
    Whole(Vec<u8>),
    Parts([Bytes; 3]),
}

fn raw(v: &Value, what: &str) -> Box<serde_json::value::RawValue> {
    match serde_json::value::to_raw_value(v) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-bench-echo: cannot build {what}: {e}");
            std::process::exit(1)
        }
    }
}

impl Server {
    fn new(tool_count: usize, resource_count: usize, big: bool) -> Server {
        let schema =
            json!({"type":"object","properties":{"text":{"type":"string"}},"required":["text"]});
        let tools: Vec<Value> = (0..tool_count.max(1))
            .map(|i| {
                let name = if i == 0 {
                    "echo".to_owned()
                } else {
                    format!("tool_{i}")
                };
                json!({"name": name, "description": "Returns its `text` argument", "inputSchema": schema})
            })
            .chain(big.then(|| json!({"name": "big", "description": "Answers with a text of `bytes` bytes",
                "inputSchema": {"type":"object","properties":{"bytes":{"type":"integer"}},"required":["bytes"]}})))
            .collect();
        let resources: Vec<Value> = (0..resource_count)
            .map(|i| json!({"uri": format!("bench://r/{i}"), "name": format!("r{i}"), "mimeType": "text/plain"}))
            .collect();
        Server {
            tools: raw(&json!({ "tools": tools }), "tools/list"),
            resources: (resource_count > 0)
                .then(|| raw(&json!({ "resources": resources }), "resources/list")),
            sessions: AtomicU64::new(1),
            big: std::sync::Mutex::new(Bytes::new()),
            fixed: None,
        }
    }

    /// The answer of `big`: `{"jsonrpc":"2.0","id":ID,"result":{"content":[{"type":"text","text":"xxx"}]}}`.
    fn big(&self, id: &Value, bytes: usize) -> Answer {
        let bytes = bytes.min(MAX_BIG);
        let text = match self.big.lock() {
            Ok(mut b) => {
                if b.len() < bytes {
                    let pattern = b"abcdefghijklmnopqrstuvwxyz0123456789";
                    *b = Bytes::from(
                        pattern
                            .iter()
                            .copied()
                            .cycle()
                            .take(bytes)
                            .collect::<Vec<u8>>(),
                    );
                }
                b.slice(..bytes)
            }
            Err(_) => return Answer::Whole(error(id, -32603, "poisoned")),
        };
        let head = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":""#
        );
        Answer::Parts([Bytes::from(head), text, Bytes::from_static(br#""}]}}"#)])
    }

    /// The answer to one message, serialized; `None` for notifications and responses.
    fn answer(&self, body: &[u8]) -> Option<Answer> {
        let msg: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Some(Answer::Whole(error(
                    &Value::Null,
                    -32700,
                    &format!("parse error: {e}"),
                )))
            }
        };
        let params = msg.get("params");
        if msg.get("method").and_then(Value::as_str) == Some("tools/call")
            && params.and_then(|p| p.get("name")).and_then(Value::as_str) == Some("big")
        {
            let bytes = params
                .and_then(|p| p.get("arguments"))
                .and_then(|a| a.get("bytes"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let id = msg.get("id")?;
            return Some(self.big(id, usize::try_from(bytes).unwrap_or(MAX_BIG)));
        }
        self.small(msg).map(Answer::Whole)
    }

    fn small(&self, msg: Value) -> Option<Vec<u8>> {
        let id = msg.get("id")?;
        let method = msg.get("method").and_then(Value::as_str)?;
        let params = msg.get("params");
        let result = match method {
            "initialize" => {
                let asked = params
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let version = VERSIONS
                    .iter()
                    .find(|v| **v == asked)
                    .unwrap_or(&VERSIONS[3]);
                let capabilities = match self.resources {
                    Some(_) => json!({"tools": {}, "resources": {}}),
                    None => json!({"tools": {}}),
                };
                json!({"protocolVersion": version, "capabilities": capabilities,
                       "serverInfo": {"name": "portcullis-bench-echo", "version": "1"}})
            }
            "ping" => json!({}),
            "tools/list" => return Some(cached(id, &self.tools)),
            "resources/list" if self.resources.is_some() => {
                return self.resources.as_ref().map(|r| cached(id, r))
            }
            "resources/templates/list" if self.resources.is_some() => {
                json!({"resourceTemplates": []})
            }
            "tools/call" => {
                let text = params
                    .and_then(|p| p.get("arguments"))
                    .and_then(|a| a.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                json!({"content": [{"type": "text", "text": text}]})
            }
            other => return Some(error(id, -32601, &format!("method `{other}` not found"))),
        };
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})).ok()
    }
}

fn cached(id: &Value, result: &serde_json::value::RawValue) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get()).into_bytes()
}

fn error(id: &Value, code: i64, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc":"2.0","id":id,"error":{"code":code,"message":message}}))
        .unwrap_or_default()
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(server: Arc<Server>, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::POST => {}
        Method::DELETE => return reply(StatusCode::OK, Vec::new()),
        // No server-initiated messages: no standalone stream.
        _ => return reply(StatusCode::METHOD_NOT_ALLOWED, Vec::new()),
    }
    let Ok(body) = req.into_body().collect().await.map(|c| c.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST, Vec::new());
    };
    if let Some(fixed) = &server.fixed {
        let mut r = Response::new(Full::new(fixed.clone()).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let initialize = body
        .windows(b"\"initialize\"".len())
        .any(|w| w == b"\"initialize\"");
    match server.answer(&body) {
        None => reply(StatusCode::ACCEPTED, Vec::new()),
        Some(out) => {
            let mut r = match out {
                Answer::Whole(out) => reply(StatusCode::OK, out),
                Answer::Parts(parts) => {
                    let frames = futures_util::stream::iter(
                        parts
                            .into_iter()
                            .map(|p| Ok::<_, Infallible>(hyper::body::Frame::data(p))),
                    );
                    Response::new(http_body_util::StreamBody::new(frames).boxed())
                }
            };
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            if initialize {
                let n = server.sessions.fetch_add(1, Ordering::Relaxed);
                if let Ok(v) = header::HeaderValue::from_str(&format!("echo-{n:016x}")) {
                    r.headers_mut().insert("mcp-session-id", v);
                }
            }
            r
        }
    }
}

async fn serve_http(addr: SocketAddr, server: Arc<Server>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on http://{}/mcp", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(server, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One line in, one line out: nothing to overlap, so plain blocking I/O.
fn serve_stdio(server: &Server) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match server.answer(line.as_bytes()) {
            Some(Answer::Whole(answer)) => out.write_all(&answer)?,
            Some(Answer::Parts(parts)) => {
                for p in parts {
                    out.write_all(&p)?;
                }
            }
            None => continue,
        }
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: portcullis-bench-echo (--http 127.0.0.1:PORT | --stdio) [--tools N] [--resources N] [--big] [--static FILE]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut http = None;
    let mut stdio = false;
    let mut tools = 1usize;
    let mut big = false;
    let mut resources = 0usize;
    let mut fixed = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--http" => {
                http = args.get(i + 1).and_then(|a| a.parse::<SocketAddr>().ok());
                i += 1;
            }
            "--stdio" => stdio = true,
            "--big" => big = true,
            "--tools" => {
                tools = args.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(0);
                i += 1;
            }
            "--static" => {
                let Some(path) = args.get(i + 1) else { usage() };
                match std::fs::read(path) {
                    Ok(b) => fixed = Some(Bytes::from(b)),
                    Err(e) => {
                        eprintln!("portcullis-bench-echo: cannot read {path}: {e}");
                        std::process::exit(1)
                    }
                }
                i += 1;
            }
            "--resources" => {
                resources = args.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(0);
                i += 1;
            }
            _ => usage(),
        }
        i += 1;
    }
    let mut server = Server::new(tools, resources, big);
    server.fixed = fixed;
    let server = Arc::new(server);
    let result = match (http, stdio) {
        (Some(addr), false) if addr.ip().is_loopback() => {
            tokio::runtime::Runtime::new().and_then(|rt| rt.block_on(serve_http(addr, server)))
        }
        (Some(addr), false) => {
            eprintln!(
                "refusing to listen on {addr}: the benchmark server listens on loopback only"
            );
            std::process::exit(2)
        }
        (None, true) => serve_stdio(&server),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("portcullis-bench-echo: {e}");
        std::process::exit(1);
    }
}
