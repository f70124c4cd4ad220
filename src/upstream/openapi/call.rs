//! One `tools/call` as one HTTP exchange: the request from the arguments, the configured
//! headers and token, same-origin redirects, a capped and timed body, and the tool result.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::super::http::{oauth::TokenSource, HttpClient, SendError, Sender};
use crate::mcp::ErrorCode;
use crate::openapi::response::{failure, result, Answer};
use crate::openapi::{request, Api, Tool};
use crate::secrets::Redactor;

/// Redirects followed for one call, at most.
const MAX_REDIRECTS: usize = 5;
const ACCEPTED: &str = "application/json, text/plain;q=0.9, */*;q=0.8";

/// What every call of one server shares.
pub(super) struct Caller {
    pub api: Arc<Api>,
    /// `base_url`: requests go to its origin, below its path.
    pub base: Uri,
    /// The policy's headers, secrets filled in, marked sensitive.
    pub headers: HeaderMap,
    pub client: HttpClient,
    pub oauth: Option<Arc<TokenSource>>,
    pub redactor: Arc<Redactor>,
    pub max_response: usize,
    pub limit: Duration,
    pub server: Arc<str>,
}

impl Caller {
    /// `scheme://authority` of the base URL.
    pub(super) fn origin(&self) -> String {
        format!(
            "{}://{}",
            self.base.scheme_str().unwrap_or("http"),
            self.base.authority().map_or("", |a| a.as_str())
        )
    }

    /// The result of `tools/call` with these params; `Err` is a JSON-RPC error (an unknown
    /// tool or unreadable params), everything else a tool result.
    pub(super) async fn tools_call(
        &self,
        params: Option<&RawValue>,
    ) -> Result<Value, Box<RawValue>> {
        let invalid =
            |m: String| crate::mcp::error::error_object(ErrorCode::INVALID_PARAMS, &m, None);
        let params: Value = params
            .map(|p| serde_json::from_str(p.get()))
            .transpose()
            .map_err(|e| invalid(format!("unreadable tools/call params: {e}")))?
            .unwrap_or(Value::Null);
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("tools/call needs a `name`".to_owned()))?;
        let tool = self
            .api
            .tool(name)
            .ok_or_else(|| invalid(format!("unknown tool `{name}`")))?;
        let empty = Map::new();
        let args = match params.get("arguments") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Ok(failure("`arguments` must be an object")),
        };
        Ok(match self.call(tool, args).await {
            Ok(r) => r,
            Err(reason) => failure(&self.redactor.redact(&reason)),
        })
    }

    async fn call(&self, tool: &Tool, args: &Map<String, Value>) -> Result<Value, String> {
        let built = request::build(tool, self.base.path(), args)?;
        let mut uri: Uri = format!("{}{}", self.origin(), built.path_and_query)
            .parse()
            .map_err(|e| format!("the arguments make no valid URL: {e}"))?;
        let mut method = tool.method.clone();
        let mut body = built.body.clone();
        tracing::debug!(server = %self.server, tool = %tool.name, %method, path = %self.redactor.redact(uri.path()), "openapi call");
        for _ in 0..=MAX_REDIRECTS {
            let req = self.request(&method, &uri, &built.headers, body.as_ref())?;
            let sender = Sender {
                client: &self.client,
                oauth: self.oauth.as_deref(),
                redactor: &self.redactor,
            };
            let resp = sender.send(req, self.limit).await.map_err(|e| match e {
                SendError::Connection(e) => format!("the API could not be reached: {e}"),
                SendError::Token(e) => format!("no access token for the API: {e}"),
            })?;
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let to = self.redirect_target(&uri, resp.headers().get(LOCATION))?;
                // 303, and 301/302 after a POST as browsers do, turn into a GET without a body.
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                }
                uri = to;
                continue;
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = self.read(resp.into_body()).await?;
            let (text, binary) = match std::str::from_utf8(&bytes) {
                Ok(t) => (self.redactor.redact(t).into_owned(), None),
                Err(_) => (String::new(), Some(bytes.len())),
            };
            let answer = Answer {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or(""),
                content_type: content_type.as_deref(),
                body: &text,
                binary,
            };
            return Ok(result(tool, &answer));
        }
        Err(format!(
            "the API redirected more than {MAX_REDIRECTS} times"
        ))
    }

    fn request(
        &self,
        method: &Method,
        uri: &Uri,
        params: &[(String, String)],
        body: Option<&(String, Vec<u8>)>,
    ) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::builder().method(method.clone()).uri(uri.clone());
        let Some(h) = req.headers_mut() else {
            return Err("cannot build the request".to_owned());
        };
        for (name, value) in params {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header `{name}` is not valid in HTTP"))?;
            h.append(name, value);
        }
        // The policy's headers win over anything an argument could set.
        for (k, v) in &self.headers {
            h.insert(k, v.clone());
        }
        h.insert(ACCEPT, HeaderValue::from_static(ACCEPTED));
        let bytes = match body {
            Some((ct, b)) => {
                let ct = HeaderValue::from_str(ct)
                    .map_err(|_| format!("content type `{ct}` is not valid in HTTP"))?;
                h.insert(CONTENT_TYPE, ct);
                Bytes::from(b.clone())
            }
            None => Bytes::new(),
        };
        req.body(Full::new(bytes))
            .map_err(|e| format!("cannot build the request: {e}"))
    }

    /// Where a redirect goes, if it stays on the base URL's origin: the configured headers
    /// and tokens must not follow the client anywhere else.
    fn redirect_target(&self, from: &Uri, location: Option<&HeaderValue>) -> Result<Uri, String> {
        let loc = location
            .and_then(|l| l.to_str().ok())
            .ok_or("the API answered with a redirect without a usable Location")?;
        let target: Uri = if loc.starts_with('/') && !loc.starts_with("//") {
            format!("{}{loc}", self.origin())
                .parse()
                .map_err(|_| format!("the API redirected to an unusable location `{loc}`"))?
        } else {
            loc.parse()
                .map_err(|_| format!("the API redirected to an unusable location `{loc}`"))?
        };
        let same =
            target.scheme() == self.base.scheme() && target.authority() == self.base.authority();
        if !same {
            return Err(format!(
                "the API redirected {} to `{}`, outside base_url's origin {}; the gateway follows redirects only within that origin (credentials must not leave it)",
                from.path(),
                self.redactor.redact(loc),
                self.origin()
            ));
        }
        Ok(target)
    }

    async fn read(&self, body: hyper::body::Incoming) -> Result<Bytes, String> {
        let limited = Limited::new(body, self.max_response);
        match tokio::time::timeout(self.limit, limited.collect()).await {
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(format!(
                "the API's answer is larger than {} bytes (the server's max_response_bytes)",
                self.max_response
            )),
            Ok(Err(e)) => Err(format!("reading the API's answer failed: {e}")),
            Err(_) => Err(format!(
                "the API's answer did not arrive within {}s",
                self.limit.as_secs()
            )),
        }
    }
}
