//! An OpenAPI document turned into MCP tools (`runtime = "openapi"`).
//!
//! Contract: [`Document::read`] / [`Document::parse`] take an OpenAPI 3.0 or 3.1 document (JSON
//! or YAML) and [`Document::tools`] makes one [`Tool`] per selected operation: its name, MCP tool
//! definition (input schema from the parameters and the request body with every `$ref` inlined,
//! output schema from the 2xx JSON response) and what a call needs to become an HTTP request
//! ([`request::build`]) and an HTTP response to become a tool result ([`response::result`]).
//! Everything here is pure: no network, no secrets. The upstream adapter
//! (`crate::upstream::openapi`) does the HTTP, with the egress check, timeouts and size caps of
//! a remote server.
//!
//! Bad documents are refused with where the problem is: the file, and a line and column for
//! syntax errors or a JSON pointer (RFC 6901) for everything else. Constructs a call could not
//! honour (multipart bodies, external `$ref`s, parameter styles that do not fit their location)
//! are reported for the operations the policy selects, so that a policy names them in
//! `operations.deny` rather than getting tools that fail at call time.

mod document;
pub mod request;
pub mod response;
mod schema;
mod tools;

pub use document::{Document, OperationRef};

use http::Method;
use serde_json::Value;

/// Where a parameter goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
    Cookie,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
            Location::Cookie => "cookie",
        }
    }
}

/// How a parameter value is serialized (OpenAPI `style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Simple,
    Label,
    Matrix,
    Form,
    SpaceDelimited,
    PipeDelimited,
    DeepObject,
}

/// One parameter of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The name on the wire.
    pub name: String,
    /// The property of the tool's arguments that carries it.
    pub arg: String,
    pub location: Location,
    pub style: Style,
    pub explode: bool,
    pub required: bool,
    /// `content: application/json` instead of `schema`: the value is sent as JSON text.
    pub json: bool,
}

/// How the request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    Json,
    Form,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The property of the tool's arguments that carries it.
    pub arg: String,
    pub content_type: String,
    pub encoding: BodyEncoding,
    pub required: bool,
}

/// How a JSON answer becomes `structuredContent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// No output schema: objects are passed as they are, other values only as text.
    Untyped,
    /// The 2xx schema is an object: the answer is the structured content.
    Object,
    /// The 2xx schema is not an object (MCP wants one): the answer goes under `result`.
    Wrapped,
}

/// One operation as an MCP tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The upstream tool name (the router may prefix it with the server's name).
    pub name: String,
    pub operation_id: Option<String>,
    pub method: Method,
    /// The path template as the document writes it (`/pets/{petId}`).
    pub path: String,
    /// The tool definition as `tools/list` shows it.
    pub definition: Value,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    pub output: Output,
}

/// The tools of one document, as the policy selected them.
#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub title: String,
    pub version: String,
    pub tools: Vec<Tool>,
}

impl Api {
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// One thing wrong with a document, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A JSON pointer into the document (empty: the whole document).
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at {}: {}", self.pointer, self.message)
        }
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read OpenAPI document `{origin}`: {reason}")]
    Read { origin: String, reason: String },
    #[error("OpenAPI document `{origin}` is not valid {format}: {reason}")]
    Syntax {
        origin: String,
        format: &'static str,
        reason: String,
    },
    #[error("OpenAPI document `{origin}`: {problem}")]
    Invalid { origin: String, problem: Problem },
    #[error("OpenAPI document `{origin}`: {}", list(.problems))]
    Unsupported {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// RFC 6901 escaping of one pointer segment.
pub(crate) fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
