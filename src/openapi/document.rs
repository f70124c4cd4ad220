//! Reading a document: JSON or YAML text to a JSON value, the version check, 3.0 lifted to 3.1,
//! the structural check against the OpenAPI model (`oas3`), and the walk over its operations.
//!
//! The JSON value stays the source of truth for schemas (every JSON Schema keyword is kept,
//! not only those the typed model knows); the typed model checks the shape of the document and
//! gives typed parameters, bodies and responses.

use std::io::Read;
use std::path::Path;

use http::Method;
use serde_json::Value;

use super::{escape_pointer, Problem, SpecError};

/// Larger documents are refused before they are read.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// `$ref` chains between parameters, bodies or responses longer than this are refused.
const MAX_REF_CHAIN: usize = 16;

/// One operation of the document, before it is turned into a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRef {
    pub method: Method,
    pub path: String,
    pub operation_id: Option<String>,
    /// `/paths/~1pets/get`.
    pub pointer: String,
}

impl OperationRef {
    /// `GET /pets/{petId}`, as `operations.allow` and `deny` name it.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A parsed, structurally valid OpenAPI 3.0 or 3.1 document.
#[derive(Debug, Clone)]
pub struct Document {
    pub origin: String,
    pub(super) raw: Value,
    pub title: String,
    pub version: String,
}

impl Document {
    /// Reads and checks the document at `path`.
    pub fn read(path: &Path) -> Result<Document, SpecError> {
        let origin = path.display().to_string();
        let read_err = |reason: String| SpecError::Read {
            origin: origin.clone(),
            reason,
        };
        let too_big = || {
            read_err(format!(
                "it is larger than the {MAX_DOCUMENT_BYTES} bytes accepted"
            ))
        };
        let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
        // Not a device or a pipe: `/dev/zero` never ends, a FIFO may never answer.
        if !meta.is_file() {
            return Err(read_err("it is not a regular file".to_owned()));
        }
        if meta.len() > MAX_DOCUMENT_BYTES {
            return Err(too_big());
        }
        // Bounded again while reading: the file may grow after the check.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_DOCUMENT_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| read_err(e.to_string()))?;
        if text.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(too_big());
        }
        Document::parse(&text, &origin)
    }

    /// Checks a document's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Document, SpecError> {
        let mut raw = to_value(text, origin)?;
        let invalid = |pointer: &str, message: String| SpecError::Invalid {
            origin: origin.to_owned(),
            problem: Problem {
                pointer: pointer.to_owned(),
                message,
            },
        };
        if !raw.is_object() {
            return Err(invalid("", "the document is not an object".to_owned()));
        }
        if raw.get("swagger").is_some() {
            return Err(invalid("/swagger", "Swagger 2.0 documents are not supported; convert it to OpenAPI 3 (for example with swagger2openapi)".to_owned()));
        }
        let version = match raw.get("openapi") {
            Some(Value::String(v)) => v.clone(),
            Some(_) => {
                return Err(invalid(
                    "/openapi",
                    "`openapi` must be a string like \"3.1.0\"".to_owned(),
                ))
            }
            None => {
                return Err(invalid(
                    "",
                    "no `openapi` field: this is not an OpenAPI 3 document".to_owned(),
                ))
            }
        };
        if version.starts_with("3.0.") || version == "3.0" {
            super::schema::lift_30(&mut raw);
        } else if !(version.starts_with("3.1.") || version == "3.1") {
            return Err(invalid(
                "/openapi",
                format!("version \"{version}\" is not supported; OpenAPI 3.0.x and 3.1.x are"),
            ));
        }
        let spec: oas3::Spec = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let pointer = path_to_pointer(e.path());
            invalid(&pointer, structural(&e.into_inner().to_string()))
        })?;
        Ok(Document {
            origin: origin.to_owned(),
            raw,
            title: spec.info.title,
            version: spec.info.version,
        })
    }

    /// Every operation, in document order of paths, then methods in a fixed order.
    pub fn operations(&self) -> Result<Vec<OperationRef>, Problem> {
        const METHODS: [(&str, Method); 8] = [
            ("get", Method::GET),
            ("put", Method::PUT),
            ("post", Method::POST),
            ("delete", Method::DELETE),
            ("options", Method::OPTIONS),
            ("head", Method::HEAD),
            ("patch", Method::PATCH),
            ("trace", Method::TRACE),
        ];
        let mut out = Vec::new();
        let Some(paths) = self.raw.get("paths").and_then(Value::as_object) else {
            return Ok(out);
        };
        for (path, item) in paths {
            let at = format!("/paths/{}", escape_pointer(path));
            if item.get("$ref").is_some() {
                return Err(Problem {
                    pointer: format!("{at}/$ref"),
                    message: "path items that are `$ref`s are not supported; write the path item in place".to_owned(),
                });
            }
            for (key, method) in &METHODS {
                let Some(op) = item.get(*key) else { continue };
                out.push(OperationRef {
                    method: method.clone(),
                    path: path.clone(),
                    operation_id: op
                        .get("operationId")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    pointer: format!("{at}/{key}"),
                });
            }
        }
        Ok(out)
    }

    /// The value at `pointer`.
    pub(super) fn at(&self, pointer: &str) -> Option<&Value> {
        self.raw.pointer(pointer)
    }

    /// The object at `pointer`, following `$ref`s (parameters, bodies, responses); returns the
    /// pointer of the object reached and the object.
    pub(super) fn follow(&self, pointer: &str) -> Result<(String, &Value), Problem> {
        let mut at = pointer.to_owned();
        for _ in 0..MAX_REF_CHAIN {
            let v = self.at(&at).ok_or_else(|| Problem {
                pointer: at.clone(),
                message: "nothing is there".to_owned(),
            })?;
            match v.get("$ref") {
                Some(Value::String(r)) => at = ref_pointer(r, &format!("{at}/$ref"), self)?,
                Some(_) => {
                    return Err(Problem {
                        pointer: format!("{at}/$ref"),
                        message: "`$ref` must be a string".to_owned(),
                    })
                }
                None => return Ok((at, v)),
            }
        }
        Err(Problem {
            pointer: pointer.to_owned(),
            message: format!("more than {MAX_REF_CHAIN} `$ref`s in a chain"),
        })
    }
}

/// The JSON pointer a local `$ref` names, checked to exist. `at` is where the `$ref` is.
pub(super) fn ref_pointer(r: &str, at: &str, doc: &Document) -> Result<String, Problem> {
    let Some(fragment) = r.strip_prefix('#') else {
        return Err(Problem {
            pointer: at.to_owned(),
            message: format!("external `$ref` \"{r}\" is not supported; bundle the document into one file (for example with `redocly bundle`)"),
        });
    };
    let pointer = percent_encoding::percent_decode_str(fragment)
        .decode_utf8()
        .map_err(|_| Problem {
            pointer: at.to_owned(),
            message: format!("`$ref` \"{r}\" is not valid UTF-8 once decoded"),
        })?
        .into_owned();
    if doc.at(&pointer).is_none() {
        return Err(Problem {
            pointer: at.to_owned(),
            message: format!("unknown `$ref` \"{r}\": nothing in the document is at that pointer"),
        });
    }
    Ok(pointer)
}

/// Parses JSON (text starting with `{`) or YAML into a JSON value.
fn to_value(text: &str, origin: &str) -> Result<Value, SpecError> {
    let text = text.trim_start_matches('\u{feff}');
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax {
            origin: origin.to_owned(),
            format: "JSON",
            reason: e.to_string(),
        })
    } else {
        yaml_serde::from_str(text).map_err(|e| SpecError::Syntax {
            origin: origin.to_owned(),
            format: "YAML",
            reason: e.to_string(),
        })
    }
}

/// serde's message, in words for a policy author: an object that is neither a valid object of
/// its kind nor a `$ref` only says which Rust enum failed.
fn structural(message: &str) -> String {
    if message.contains("did not match any variant of untagged enum") {
        "not a valid OpenAPI object here (a field is missing, misspelt or has a value OpenAPI does not allow), and not a `$ref` either".to_owned()
    } else {
        message.to_owned()
    }
}

/// serde's path of a structural error as a JSON pointer.
fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&escape_pointer(key));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}
