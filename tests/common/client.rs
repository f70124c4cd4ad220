//! A bare Streamable HTTP client for asserting transport behaviour byte by byte.
#![allow(dead_code)]

use serde_json::{json, Value};

pub const LATEST: &str = "2025-11-25";

pub struct Raw {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The JSON messages in an SSE body, in order (priming and keep-alives skipped).
    pub fn sse_messages(&self) -> Vec<Value> {
        sse_events(&self.body)
            .into_iter()
            .filter(|(_, d)| !d.trim().is_empty())
            .map(|(_, d)| serde_json::from_str(&d).unwrap())
            .collect()
    }

    /// The single JSON-RPC message of a response, whether sent as JSON or as SSE.
    pub fn message(&self) -> Value {
        if self.content_type().starts_with("text/event-stream") {
            self.sse_messages()
                .into_iter()
                .find(|m| m.get("id").is_some() && m.get("method").is_none())
                .expect("no response in the stream")
        } else {
            self.json()
        }
    }
}

/// (id, data) of each SSE event.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut id = None;
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                let v = v.strip_prefix(' ').unwrap_or(v);
                data = Some(match data {
                    Some(d) => format!("{d}\n{v}"),
                    None => v.to_owned(),
                });
            }
        }
        if id.is_some() || data.is_some() {
            out.push((id, data.unwrap_or_default()));
        }
    }
    out
}

pub struct Mcp {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    pub protocol: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer: Option<String>,
    next: u64,
}

impl Mcp {
    pub fn new(url: &str) -> Mcp {
        Mcp {
            http: reqwest::Client::builder().build().unwrap(),
            url: url.to_owned(),
            session: None,
            protocol: LATEST.to_owned(),
            bearer: None,
            next: 1,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    pub async fn post_with(&self, body: &str, headers: &[(&str, &str)]) -> Raw {
        let mut req = self.http.post(&self.url).body(body.to_owned());
        let mut has_ct = false;
        let mut has_accept = false;
        for (k, v) in headers {
            has_ct |= k.eq_ignore_ascii_case("content-type");
            has_accept |= k.eq_ignore_ascii_case("accept");
            req = req.header(*k, *v);
        }
        if !has_ct {
            req = req.header("content-type", "application/json");
        }
        if !has_accept {
            req = req.header("accept", "application/json, text/event-stream");
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Raw {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, msg: &Value) -> Raw {
        let proto = self.protocol.clone();
        let headers: Vec<(&str, &str)> = if self.session.is_some() {
            vec![("mcp-protocol-version", proto.as_str())]
        } else {
            vec![]
        };
        self.post_with(&msg.to_string(), &headers).await
    }

    pub async fn initialize(&mut self, version: &str) -> Value {
        self.initialize_with(
            version,
            json!({"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}}),
        )
        .await
    }

    /// `initialize` declaring `capabilities`.
    pub async fn initialize_with(&mut self, version: &str, capabilities: Value) -> Value {
        let r = self
            .post(
                &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                    "protocolVersion": version,
                    "capabilities": capabilities,
                    "clientInfo": {"name": "portcullis-test", "version": "0"}
                }}),
            )
            .await;
        assert_eq!(r.status, 200, "initialize: {}", r.body);
        let sid = r
            .headers
            .get("mcp-session-id")
            .expect("no Mcp-Session-Id")
            .to_str()
            .unwrap()
            .to_owned();
        self.session = Some(sid);
        let msg = r.message();
        self.protocol = msg["result"]["protocolVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let n = self
            .post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        assert_eq!(n.status, 202, "initialized: {}", n.body);
        msg
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id();
        self.post(&json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
            .await
            .message()
    }

    pub async fn call_tool(&mut self, name: &str, args: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": args}))
            .await
    }
}

/// The text of the first content item of a tool result.
pub fn tool_text(resp: &Value) -> String {
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {resp}"))
        .to_owned()
}

/// The median time, in milliseconds, of `n` calls of `tool` (with `{"text": i}`), each answered.
pub async fn median_call_ms(c: &mut Mcp, tool: &str, n: usize) -> f64 {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        let r = c.call_tool(tool, json!({"text": format!("{i}")})).await;
        assert!(r.get("result").is_some(), "{r}");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    v[n / 2]
}
