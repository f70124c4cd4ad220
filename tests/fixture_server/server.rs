//! `portcullis-fixture-server`: an MCP server over stdio (newline-delimited JSON-RPC 2.0)
//! that offers exactly what the official conformance suite's server scenarios expect,
//! plus a few tools Portcullis's own tests use (echo, slow, crash, ...).
//!
//! stdout carries protocol messages only; diagnostics go to stderr.
//!
//! Environment:
//!   FIXTURE_NAME                 serverInfo.name (default "portcullis-fixture")
//!   FIXTURE_TOOL_COUNT=N         adds N trivial tools extra_0..extra_{N-1}
//!   FIXTURE_RECONNECT_DELAY_MS   how long test_reconnection takes (default 500)
//!   FIXTURE_REQUEST_TIMEOUT_MS   how long to wait for sampling/elicitation answers (default 60000)
//!   FIXTURE_TRACE_STDERR=1       writes the `_meta.traceparent` of every tools/call (or `-`) to stderr

mod catalog;
mod net_probe;
mod tools;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use std::io::{BufRead, Write};
use tokio::sync::{mpsc, oneshot, Notify};

const SUPPORTED_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const LATEST_VERSION: &str = "2025-11-25";

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const RESOURCE_NOT_FOUND: i64 = -32002;

const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// A JSON-RPC error object, before it is wrapped in a response.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

enum Out {
    Line(String),
    /// Acknowledged once every line queued before it has been written and flushed.
    Flush(oneshot::Sender<()>),
}

/// Cancellation state of one incoming request.
#[derive(Default)]
pub struct Cancel {
    notify: Notify,
    cancelled: AtomicBool,
}

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub async fn cancelled(&self) {
        // notify_one stores a permit, so a cancel that lands before we wait is not lost.
        self.notify.notified().await;
    }
}

pub struct Server {
    out: mpsc::UnboundedSender<Out>,
    /// Our outgoing requests (sampling, elicitation) waiting for the client's answer.
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    next_out_id: AtomicU64,
    /// Incoming requests still being worked on, keyed by their serialized id.
    inflight: Mutex<HashMap<String, Arc<Cancel>>>,
    pub tool_calls: AtomicU64,
    /// Index into LOG_LEVELS of the lowest level still sent.
    min_log_level: AtomicU8,
    pub subscriptions: Mutex<HashSet<String>>,
    /// Grows when `emit_list_changed` runs, so that the list really changes.
    pub extra_tools: std::sync::atomic::AtomicUsize,
    pub reconnect_delay: Duration,
    request_timeout: Duration,
    name: String,
}

/// A poisoned lock only means another task panicked mid-update of a plain map; the
/// fixture keeps serving rather than cascading the panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("fixture: ignoring {name}={v:?} (not a number)");
            default
        }),
        Err(_) => default,
    }
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

impl Server {
    pub fn send(&self, msg: Value) {
        // The writer only goes away at shutdown; a message lost then has no reader anyway.
        let _ = self.out.send(Out::Line(msg.to_string()));
    }

    pub fn notify(&self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends notifications/message if `level` passes the level set by logging/setLevel.
    pub fn log(&self, level: &str, data: Value) {
        let Some(idx) = LOG_LEVELS.iter().position(|l| *l == level) else {
            return;
        };
        if idx as u8 >= self.min_log_level.load(Ordering::SeqCst) {
            self.notify(
                "notifications/message",
                json!({ "level": level, "logger": self.name, "data": data }),
            );
        }
    }

    /// Sends a request to the client and waits for its answer. `Ok` is the `result`,
    /// `Err` a readable description of the error object or the timeout.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = format!(
            "fixture-{}",
            self.next_out_id.fetch_add(1, Ordering::SeqCst)
        );
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id_key(&json!(id)), tx);
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let answer = tokio::time::timeout(self.request_timeout, rx).await;
        lock(&self.pending).remove(&id_key(&json!(id)));
        match answer {
            Ok(Ok(msg)) => {
                if let Some(result) = msg.get("result") {
                    Ok(result.clone())
                } else if let Some(err) = msg.get("error") {
                    Err(format!(
                        "client returned error {}: {}",
                        err.get("code").unwrap_or(&Value::Null),
                        err.get("message").and_then(Value::as_str).unwrap_or("")
                    ))
                } else {
                    Err("client answer has neither result nor error".into())
                }
            }
            Ok(Err(_)) => Err("request dropped".into()),
            Err(_) => Err(format!(
                "no answer to {method} within {} ms",
                self.request_timeout.as_millis()
            )),
        }
    }

    fn respond(&self, id: Value, outcome: Result<Value, RpcError>) {
        let msg = match outcome {
            Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Err(e) => json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": e.code, "message": e.message }
            }),
        };
        self.send(msg);
    }

    fn handle_line(self: &Arc<Self>, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Array(batch)) if !batch.is_empty() => {
                // 2025-03-26 allowed batches; answer each element on its own line.
                for msg in batch {
                    self.handle_message(msg);
                }
            }
            Ok(msg) => self.handle_message(msg),
            Err(e) => self.respond(
                Value::Null,
                Err(RpcError::new(PARSE_ERROR, format!("Parse error: {e}"))),
            ),
        }
    }

    fn handle_message(self: &Arc<Self>, msg: Value) {
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = msg.get("id").cloned();
        match (method, id) {
            (Some(method), Some(id)) if valid_id(&id) => {
                let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
                let cancel = Arc::new(Cancel::default());
                lock(&self.inflight).insert(id_key(&id), cancel.clone());
                let server = self.clone();
                tokio::spawn(async move {
                    let outcome = tokio::select! {
                        outcome = server.handle_request(&method, params, &id, &cancel) => Some(outcome),
                        _ = cancel.cancelled() => None,
                    };
                    lock(&server.inflight).remove(&id_key(&id));
                    // A cancelled request gets no response (spec: receivers SHOULD NOT answer).
                    match outcome {
                        Some(outcome) if !cancel.is_cancelled() => server.respond(id, outcome),
                        _ => eprintln!("fixture: request {id} ({method}) cancelled"),
                    }
                });
            }
            (Some(method), None) => self.handle_notification(&method, &msg),
            (None, Some(id)) if msg.get("result").is_some() || msg.get("error").is_some() => {
                match lock(&self.pending).remove(&id_key(&id)) {
                    Some(tx) => {
                        let _ = tx.send(msg);
                    }
                    None => eprintln!("fixture: answer for unknown request id {id}"),
                }
            }
            (_, id) => {
                let id = id.filter(valid_id).unwrap_or(Value::Null);
                self.respond(id, Err(RpcError::new(INVALID_REQUEST, "Invalid Request")));
            }
        }
    }

    fn handle_notification(&self, method: &str, msg: &Value) {
        // initialized, roots/list_changed, progress from the client: nothing to do.
        if method != "notifications/cancelled" {
            return;
        }
        if let Some(req) = msg.pointer("/params/requestId") {
            if let Some(c) = lock(&self.inflight).get(&id_key(req)) {
                c.cancelled.store(true, Ordering::SeqCst);
                c.notify.notify_one();
            }
        }
    }

    async fn handle_request(
        self: &Arc<Self>,
        method: &str,
        params: Value,
        id: &Value,
        cancel: &Arc<Cancel>,
    ) -> Result<Value, RpcError> {
        match method {
            "initialize" => Ok(self.initialize(&params)),
            "ping" => Ok(json!({})),
            "tools/list" => {
                Ok(json!({ "tools": catalog::tools(self.extra_tools.load(Ordering::SeqCst)) }))
            }
            "tools/call" => {
                self.tool_calls.fetch_add(1, Ordering::SeqCst);
                if std::env::var_os("FIXTURE_TRACE_STDERR").is_some() {
                    let tp = params
                        .pointer("/_meta/traceparent")
                        .and_then(Value::as_str)
                        .unwrap_or("-");
                    eprintln!("fixture: traceparent {tp}");
                }
                tools::call(self, params, id, cancel).await
            }
            "resources/list" => Ok(json!({ "resources": catalog::resources() })),
            "resources/templates/list" => {
                Ok(json!({ "resourceTemplates": catalog::resource_templates() }))
            }
            "resources/read" => {
                let uri = str_param(&params, "uri")?;
                catalog::read_resource(uri).ok_or_else(|| {
                    RpcError::new(RESOURCE_NOT_FOUND, format!("Resource not found: {uri}"))
                })
            }
            "resources/subscribe" => {
                let uri = str_param(&params, "uri")?;
                lock(&self.subscriptions).insert(uri.to_owned());
                Ok(json!({}))
            }
            "resources/unsubscribe" => {
                let uri = str_param(&params, "uri")?;
                lock(&self.subscriptions).remove(uri);
                Ok(json!({}))
            }
            "prompts/list" => Ok(json!({ "prompts": catalog::prompts() })),
            "prompts/get" => {
                let name = str_param(&params, "name")?;
                let args = params.get("arguments").cloned().unwrap_or(json!({}));
                catalog::get_prompt(name, &args).map_err(|m| RpcError::new(INVALID_PARAMS, m))
            }
            "completion/complete" => Ok(catalog::complete(&params)),
            "logging/setLevel" => {
                let level = str_param(&params, "level")?;
                let idx = LOG_LEVELS.iter().position(|l| *l == level).ok_or_else(|| {
                    RpcError::new(INVALID_PARAMS, format!("Unknown log level: {level}"))
                })?;
                self.min_log_level.store(idx as u8, Ordering::SeqCst);
                Ok(json!({}))
            }
            _ => Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("Method not found: {method}"),
            )),
        }
    }

    fn initialize(&self, params: &Value) -> Value {
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let version = requested
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .unwrap_or(LATEST_VERSION);
        json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": { "listChanged": true },
                "resources": { "subscribe": true, "listChanged": true },
                "prompts": { "listChanged": true },
                "logging": {},
                "completions": {}
            },
            "serverInfo": { "name": self.name, "version": env!("CARGO_PKG_VERSION") },
            "instructions": "Portcullis conformance fixture. Not for production use."
        })
    }
}

fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

pub fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("Missing string parameter: {key}")))
}

/// Blocking std I/O on plain threads: the crate's tokio build has no `io-std` feature,
/// and a dedicated writer thread keeps stdout ordered anyway.
fn write_loop(mut rx: mpsc::UnboundedReceiver<Out>) {
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    while let Some(item) = rx.blocking_recv() {
        match item {
            Out::Line(mut line) => {
                line.push('\n');
                // Flush per message: the peer waits for each line, batching would add latency.
                if let Err(e) = stdout
                    .write_all(line.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    eprintln!("fixture: stdout write failed: {e}");
                    std::process::exit(1);
                }
            }
            Out::Flush(ack) => {
                let _ = stdout.flush();
                let _ = ack.send(());
            }
        }
    }
}

fn read_loop(tx: mpsc::UnboundedSender<Vec<u8>>) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    loop {
        // Raw bytes, not lines(): a line with invalid UTF-8 must become a parse error
        // and the loop must go on.
        let mut buf = Vec::new();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if tx.send(buf).is_err() {
                    break;
                }
            }
            Err(e) => {
                eprintln!("fixture: stdin read error: {e}");
                break;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = std::thread::spawn(move || write_loop(rx));
    let server = Arc::new(Server {
        out: tx.clone(),
        pending: Mutex::new(HashMap::new()),
        next_out_id: AtomicU64::new(1),
        inflight: Mutex::new(HashMap::new()),
        tool_calls: AtomicU64::new(0),
        min_log_level: AtomicU8::new(0),
        subscriptions: Mutex::new(HashSet::new()),
        extra_tools: std::sync::atomic::AtomicUsize::new(env_num("FIXTURE_TOOL_COUNT", 0) as usize),
        reconnect_delay: Duration::from_millis(env_num("FIXTURE_RECONNECT_DELAY_MS", 500)),
        request_timeout: Duration::from_millis(env_num("FIXTURE_REQUEST_TIMEOUT_MS", 60_000)),
        name: std::env::var("FIXTURE_NAME").unwrap_or_else(|_| "portcullis-fixture".into()),
    });
    eprintln!(
        "fixture: {} pid {} ready on stdio",
        server.name,
        std::process::id()
    );

    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || read_loop(in_tx));
    while let Some(line) = in_rx.recv().await {
        server.handle_line(&line);
    }

    // stdin closed: the peer is gone. Flush what is queued and leave; in-flight work is moot.
    let (ack_tx, ack_rx) = oneshot::channel();
    if tx.send(Out::Flush(ack_tx)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), ack_rx).await;
    }
    drop(writer);
    eprintln!("fixture: stdin closed, exiting");
    std::process::exit(0);
}
