//! JSON-RPC 2.0 messages, parsed only as far as routing needs.
//!
//! `params`, `result` and `error` stay as raw JSON so that every byte the peer sent that the
//! gateway does not need to change is passed through untouched.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{error_object, ErrorCode};

/// A JSON-RPC request id. MCP forbids `null` ids, and integer ids are all that is used in practice;
/// fractional numbers are rejected as an invalid request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Num(i64),
    Str(String),
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: Id,
    pub method: String,
    pub params: Option<Box<RawValue>>,
}

#[derive(Debug, Clone)]
pub struct Notification {
    pub method: String,
    pub params: Option<Box<RawValue>>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub id: Id,
    /// `Ok(result)` or `Err(error object)`, both raw.
    pub outcome: Result<Box<RawValue>, Box<RawValue>>,
}

#[derive(Debug, Clone)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

/// What a POST body held: one message or a JSON-RPC batch.
#[derive(Debug)]
pub enum Body {
    Single(Message),
    /// Entries that are not valid messages keep their id (when one could be read) so the
    /// batch answer can name them.
    Batch(Vec<Result<Message, ParseError>>),
}

/// Why bytes are not a JSON-RPC message. `id` is set when the id could be read, so that the
/// error response can carry it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<Id>,
}

impl ParseError {
    fn invalid(message: impl Into<String>, id: Option<Id>) -> Self {
        ParseError {
            code: ErrorCode::INVALID_REQUEST,
            message: message.into(),
            id,
        }
    }

    /// The JSON-RPC error response for this parse failure.
    pub fn to_response_bytes(&self) -> Bytes {
        error_response_bytes(self.id.as_ref(), self.code, &self.message)
    }
}

#[derive(Deserialize)]
struct Wire {
    jsonrpc: Option<String>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
    method: Option<String>,
    params: Option<Box<RawValue>>,
    result: Option<Box<RawValue>>,
    error: Option<Box<RawValue>>,
}

/// Keeps `"id": null` distinguishable from a missing id: both are errors, but different ones.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Message {
    /// Parses one JSON-RPC message.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| parse_failure(&e))?;
        Self::from_wire(wire)
    }

    fn from_wire(w: Wire) -> Result<Message, ParseError> {
        let id = match &w.id {
            None => None,
            Some(raw) => Some(parse_id(raw)?),
        };
        if w.jsonrpc.as_deref() != Some("2.0") {
            return Err(ParseError::invalid("`jsonrpc` must be \"2.0\"", id));
        }
        match (w.method, id, w.result, w.error) {
            (Some(method), Some(id), None, None) => Ok(Message::Request(Request {
                id,
                method,
                params: check_params(w.params, None)?,
            })),
            (Some(method), None, None, None) => Ok(Message::Notification(Notification {
                method,
                params: check_params(w.params, None)?,
            })),
            (None, Some(id), Some(result), None) => Ok(Message::Response(Response {
                id,
                outcome: Ok(result),
            })),
            (None, Some(id), None, Some(error)) => Ok(Message::Response(Response {
                id,
                outcome: Err(error),
            })),
            (None, id, None, None) => Err(ParseError::invalid(
                "message has neither `method` nor `result`/`error`",
                id,
            )),
            (_, id, _, _) => Err(ParseError::invalid(
                "message mixes request and response members (`method` with `result`/`error`, or both `result` and `error`)",
                id,
            )),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let raw_len = |v: Option<&RawValue>| v.map_or(0, |v| v.get().len());
        let (wire, payload) = match self {
            Message::Request(r) => (
                WireOut {
                    jsonrpc: "2.0",
                    id: Some(&r.id),
                    method: Some(&r.method),
                    params: r.params.as_deref(),
                    result: None,
                    error: None,
                },
                raw_len(r.params.as_deref()) + r.method.len(),
            ),
            Message::Notification(n) => (
                WireOut {
                    jsonrpc: "2.0",
                    id: None,
                    method: Some(&n.method),
                    params: n.params.as_deref(),
                    result: None,
                    error: None,
                },
                raw_len(n.params.as_deref()) + n.method.len(),
            ),
            Message::Response(r) => {
                let result = r.outcome.as_ref().ok().map(|v| &**v);
                let error = r.outcome.as_ref().err().map(|v| &**v);
                (
                    WireOut {
                        jsonrpc: "2.0",
                        id: Some(&r.id),
                        method: None,
                        params: None,
                        result,
                        error,
                    },
                    raw_len(result) + raw_len(error),
                )
            }
        };
        // Sized up front: a large result is copied once, not once per doubling of the buffer.
        let id_len = match wire.id {
            Some(Id::Str(s)) => s.len() * 6 + 2,
            _ => 20,
        };
        let mut out = Vec::with_capacity(payload + id_len + 64);
        // Serializing ids, strings and already-valid raw JSON cannot fail.
        if serde_json::to_writer(&mut out, &wire).is_err() {
            out.clear();
        }
        Bytes::from(out)
    }
}

/// Whether `serialized` (as [`Message::to_bytes`] and [`error_response_bytes`] write messages)
/// is a notification. Both write `jsonrpc` first and `id` right after it whenever a message has
/// one, so a notification is the only kind that has `method` second.
pub fn is_notification(serialized: &[u8]) -> bool {
    serialized.starts_with(br#"{"jsonrpc":"2.0","method":"#)
}

#[derive(Serialize)]
struct WireOut<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
}

impl Body {
    /// Parses a POST body: one message, or a non-empty batch.
    pub fn parse(bytes: &[u8]) -> Result<Body, ParseError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let items: Vec<Box<RawValue>> =
                serde_json::from_slice(bytes).map_err(|e| parse_failure(&e))?;
            if items.is_empty() {
                return Err(ParseError::invalid("empty batch", None));
            }
            Ok(Body::Batch(
                items
                    .iter()
                    .map(|raw| Message::parse(raw.get().as_bytes()))
                    .collect(),
            ))
        } else {
            Message::parse(bytes).map(Body::Single)
        }
    }
}

fn parse_failure(e: &serde_json::Error) -> ParseError {
    if e.is_data() {
        ParseError::invalid(format!("not a JSON-RPC message: {e}"), None)
    } else {
        ParseError {
            code: ErrorCode::PARSE_ERROR,
            message: format!("malformed JSON: {e}"),
            id: None,
        }
    }
}

fn parse_id(raw: &RawValue) -> Result<Id, ParseError> {
    match serde_json::from_str::<Id>(raw.get()) {
        Ok(id) => Ok(id),
        Err(_) => Err(ParseError::invalid(
            format!(
                "`id` must be a string or an integer, got {}",
                truncate(raw.get(), 40)
            ),
            None,
        )),
    }
}

fn check_params(
    params: Option<Box<RawValue>>,
    id: Option<Id>,
) -> Result<Option<Box<RawValue>>, ParseError> {
    match &params {
        Some(p) if !(p.get().starts_with('{') || p.get().starts_with('[')) => Err(
            ParseError::invalid("`params` must be an object or an array", id),
        ),
        _ => Ok(params),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A complete error response, serialized.
pub fn error_response_bytes(id: Option<&Id>, code: ErrorCode, message: &str) -> Bytes {
    error_response_with_data(id, code, message, None)
}

pub fn error_response_with_data(
    id: Option<&Id>,
    code: ErrorCode,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        jsonrpc: &'static str,
        id: Option<&'a Id>,
        error: &'a RawValue,
    }
    let err = error_object(code, message, data);
    Bytes::from(
        serde_json::to_vec(&Out {
            jsonrpc: "2.0",
            id,
            error: &err,
        })
        .unwrap_or_default(),
    )
}

/// Serializes any value as raw JSON (used for results the gateway builds itself).
pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keeps_params_bytes() {
        let src = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"b":1.50,"a":"\u00e9"}}}"#;
        let Message::Request(r) = Message::parse(src).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.id, Id::Num(7));
        assert_eq!(
            r.params.unwrap().get(),
            r#"{"name":"x","arguments":{"b":1.50,"a":"\u00e9"}}"#
        );
    }

    #[test]
    fn classifies_messages() {
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Message::Response(Response { outcome: Ok(_), .. }))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"m"}}"#),
            Ok(Message::Response(Response {
                outcome: Err(_),
                ..
            }))
        ));
    }

    #[test]
    fn rejects_bad_messages_with_reasons() {
        let e = Message::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::PARSE_ERROR);
        let e = Message::parse(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
        assert_eq!(e.id, Some(Id::Num(1)));
        let e = Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).unwrap_err();
        assert!(e.message.contains("`id`"), "{}", e.message);
        let e = Message::parse(br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
        let e = Message::parse(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
        let e = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#).unwrap_err();
        assert!(e.message.contains("params"));
    }

    #[test]
    fn parses_batches() {
        let Body::Batch(items) =
            Body::parse(br#" [{"jsonrpc":"2.0","id":1,"method":"ping"},{"bad":true}]"#).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
        assert!(Body::parse(b"[]").is_err());
    }

    #[test]
    fn only_notifications_are_told_apart_as_notifications() {
        let n =
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#)
                .unwrap()
                .to_bytes();
        assert!(is_notification(&n));
        for src in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}"#[..],
            br#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
            br#"{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"m"}}"#,
        ] {
            assert!(!is_notification(&Message::parse(src).unwrap().to_bytes()));
        }
        assert!(!is_notification(&error_response_bytes(
            None,
            ErrorCode::PARSE_ERROR,
            "x"
        )));
    }

    #[test]
    fn round_trips() {
        let src = br#"{"jsonrpc":"2.0","id":"x-1","method":"ping","params":{"_meta":{"k":[1,2]}}}"#;
        let m = Message::parse(src).unwrap();
        assert_eq!(&m.to_bytes()[..], &src[..]);
    }
}
