//! Answers as a 2026-07-28 client must get them: every result with `resultType` and the
//! gateway's `io.modelcontextprotocol/serverInfo` in `_meta`, cacheable results with `ttlMs`
//! and `cacheScope`, errors with the HTTP status their code calls for and the revision's codes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use crate::mcp::result::{write_object, Members};
use crate::mcp::{meta, ErrorCode, Id};
use crate::router::Answer;

/// The HTTP status of a JSON-RPC error code in the stateless era.
pub fn status_of(code: i64) -> StatusCode {
    match ErrorCode(code) {
        ErrorCode::PARSE_ERROR
        | ErrorCode::INVALID_REQUEST
        | ErrorCode::INVALID_PARAMS
        | ErrorCode::HEADER_MISMATCH
        | ErrorCode::MISSING_CLIENT_CAPABILITY
        | ErrorCode::UNSUPPORTED_PROTOCOL_VERSION => StatusCode::BAD_REQUEST,
        ErrorCode::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        ErrorCode::FORBIDDEN => StatusCode::FORBIDDEN,
        ErrorCode::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    }
}

/// Cache hints of a cacheable result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cache {
    pub ttl_ms: u64,
    /// `cacheScope: "public"`: the same for every caller. Never for a result that may differ
    /// per client.
    pub public: bool,
}

impl Cache {
    /// The hints for a server's result read through the gateway: the server's `ttlMs` (0 when it
    /// gave none), public only when the server said so and every caller of the gateway sees the
    /// same thing.
    pub fn of_upstream(result: &str, shared: bool) -> Cache {
        let m = Members::of(result);
        let ttl_ms = m
            .as_ref()
            .and_then(|m| m.get("ttlMs"))
            .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let public = shared && m.and_then(|m| m.str("cacheScope")).as_deref() == Some("public");
        Cache { ttl_ms, public }
    }

    fn members(&self) -> [(&'static str, String); 2] {
        [
            ("ttlMs", self.ttl_ms.to_string()),
            (
                "cacheScope",
                if self.public {
                    "\"public\""
                } else {
                    "\"private\""
                }
                .to_owned(),
            ),
        ]
    }
}

fn server_info_member() -> &'static str {
    static INFO: OnceLock<String> = OnceLock::new();
    INFO.get_or_init(|| {
        format!(
            "{}:{}",
            serde_json::to_string(meta::SERVER_INFO).unwrap_or_default(),
            crate::router::views::server_info()
        )
    })
}

/// A result object for a 2026-07-28 client. `cache` applies only to a complete result (an
/// `InputRequiredResult` is never cacheable).
pub fn result(result: &str, cache: Option<Cache>) -> String {
    let Some(members) = Members::of(result) else {
        return result.to_owned();
    };
    let kind = members.str("resultType");
    let complete = kind.as_deref().is_none_or(|k| k == "complete");
    // The gateway is the server this client talks to: its identity replaces a server's own.
    let meta = match members.get("_meta").and_then(|m| Members::of(m.get())) {
        Some(m) => {
            let mut inner = write_object(&m, &[meta::SERVER_INFO], &[]);
            inner.pop();
            if inner.len() > 1 {
                inner.push(',');
            }
            format!("{inner}{}}}", server_info_member())
        }
        None => format!("{{{}}}", server_info_member()),
    };
    let mut replaced = vec!["resultType", "_meta"];
    let mut extra: Vec<(&str, String)> = vec![
        (
            "resultType",
            serde_json::to_string(kind.as_deref().unwrap_or("complete")).unwrap_or_default(),
        ),
        ("_meta", meta),
    ];
    if let (true, Some(c)) = (complete, cache) {
        replaced.extend(["ttlMs", "cacheScope"]);
        extra.extend(c.members());
    }
    write_object(&members, &replaced, &extra)
}

/// The complete response to request `id` with a list page the router built (its top level has
/// only the list and `nextCursor`): the members are added without reading the page, and the
/// page itself is not copied. The cached page is shared by every answer (`Bytes` over the
/// cache's `Arc`); the head and the closing brace are the only bytes written per answer, so a
/// page of a thousand tools costs the gateway one `writev`, not three copies of the page.
pub fn list_response(id: &Id, page: Arc<str>, cache: Cache) -> [Bytes; 3] {
    let [(_, ttl), (_, scope)] = cache.members();
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".into());
    let mut head = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"resultType\":\"complete\",\"ttlMs\":{ttl},\"cacheScope\":{scope},\"_meta\":{{{}}}",
        server_info_member()
    );
    let page = Bytes::from_owner(SharedPage(page));
    // The page is a JSON object: everything after its `{` follows the head's members.
    let body = match page.first() {
        Some(b'{') => page.slice(1..),
        _ => page,
    };
    if !body.starts_with(b"}") {
        head.push(',');
    }
    [Bytes::from(head), body, Bytes::from_static(b"}")]
}

/// A cached page lent to `Bytes` without a copy.
struct SharedPage(Arc<str>);

impl AsRef<[u8]> for SharedPage {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A complete response to request `id` with `result` (a JSON object).
pub fn response(id: &Id, result: &str) -> Bytes {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".into());
    let mut out = Vec::with_capacity(result.len() + id.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

/// An error response for a 2026-07-28 client and its status. The 2025 era's "resource not
/// found" (-32002) is reported as invalid params (-32602), as the revision asks.
pub fn error(answer: &Answer) -> (StatusCode, Bytes) {
    let code = answer.code.unwrap_or(0);
    if ErrorCode(code) != ErrorCode::RESOURCE_NOT_FOUND {
        return (status_of(code), answer.bytes.clone());
    }
    let mut v: Value = match serde_json::from_slice(&answer.bytes) {
        Ok(v) => v,
        Err(_) => return (status_of(code), answer.bytes.clone()),
    };
    v["error"]["code"] = Value::from(ErrorCode::INVALID_PARAMS.0);
    (
        status_of(ErrorCode::INVALID_PARAMS.0),
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn results_get_type_server_info_and_hints() {
        let r = parse(&result(r#"{"content":[{"type":"text","text":"x"}]}"#, None));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(
            r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "portcullis"
        );
        assert!(r.get("ttlMs").is_none());

        let r = parse(&result(
            r#"{"contents":[],"_meta":{"k":1},"ttlMs":5,"cacheScope":"public"}"#,
            Some(Cache {
                ttl_ms: 0,
                public: false,
            }),
        ));
        assert_eq!(r["_meta"]["k"], 1);
        assert!(r["_meta"]["io.modelcontextprotocol/serverInfo"].is_object());
        assert_eq!(r["ttlMs"], 0);
        assert_eq!(r["cacheScope"], "private");

        // An interim result keeps its type and gets no cache hints.
        let r = parse(&result(
            r#"{"resultType":"input_required","requestState":"s"}"#,
            Some(Cache {
                ttl_ms: 9,
                public: true,
            }),
        ));
        assert_eq!(r["resultType"], "input_required");
        assert!(r.get("ttlMs").is_none());
    }

    #[test]
    fn list_pages_are_spliced() {
        let joined = |id: Id, page: &str, cache: Cache| {
            let parts = list_response(&id, Arc::from(page), cache);
            parse(std::str::from_utf8(&parts.concat()).unwrap())
        };
        let page = r#"{"tools":[{"name":"a","_meta":{"x":1}}],"nextCursor":"c"}"#;
        let cache = Cache {
            ttl_ms: 60000,
            public: true,
        };
        let resp = joined(Id::Str("q".into()), page, cache);
        assert_eq!(resp["jsonrpc"], "2.0");
        assert_eq!(resp["id"], "q");
        let r = &resp["result"];
        assert_eq!(r["tools"][0]["name"], "a");
        assert_eq!(r["nextCursor"], "c");
        assert_eq!(r["cacheScope"], "public");
        assert_eq!(r["ttlMs"], 60000);
        assert_eq!(r["resultType"], "complete");
        assert!(r["_meta"]["io.modelcontextprotocol/serverInfo"].is_object());
        let empty = Cache {
            ttl_ms: 1,
            public: false,
        };
        let r = joined(Id::Num(7), "{}", empty);
        assert_eq!(r["id"], 7);
        assert_eq!(r["result"]["cacheScope"], "private");
        assert_eq!(r["result"]["ttlMs"], 1);
        assert_eq!(
            Cache::of_upstream(r#"{"ttlMs":300,"cacheScope":"public"}"#, false),
            Cache {
                ttl_ms: 300,
                public: false
            }
        );
        let resp = parse(std::str::from_utf8(&response(&Id::Num(4), "{}")).unwrap());
        assert_eq!(resp, json!({"jsonrpc": "2.0", "id": 4, "result": {}}));
    }
}
