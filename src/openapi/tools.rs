//! Operations to tools: names, input schemas from parameters and the request body, output
//! schemas from the 2xx JSON response, and hints from the HTTP method.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use oas3::spec::{Parameter, ParameterIn, ParameterStyle, RequestBody};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::document::{Document, OperationRef};
use super::schema::inline;
use super::{
    escape_pointer, Api, Body, BodyEncoding, Location, Output, Param, Problem, SpecError, Style,
    Tool,
};

/// The longest tool name clients accept.
const MAX_NAME: usize = 64;
/// Descriptions are cut here: a tool list is read by a model on every turn.
const MAX_DESCRIPTION: usize = 4096;
/// Header parameters the specification says to ignore: the gateway sets these itself.
const IGNORED_HEADERS: [&str; 3] = ["accept", "content-type", "authorization"];
/// Header parameters a tool may not set: they frame the request or carry other credentials.
const FORBIDDEN_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "cookie",
    "proxy-authorization",
];

impl Document {
    /// The tools of the operations `select` keeps. Every problem of every selected operation
    /// is reported at once.
    pub fn tools(&self, select: impl Fn(&OperationRef) -> bool) -> Result<Api, SpecError> {
        let unsupported = |problems| SpecError::Unsupported {
            origin: self.origin.clone(),
            problems,
        };
        let ops = self.operations().map_err(|p| unsupported(vec![p]))?;
        let mut problems = Vec::new();
        let mut tools = Vec::new();
        let mut taken = BTreeSet::new();
        for op in ops.iter().filter(|o| select(o)) {
            match self.tool(op, &mut taken) {
                Ok(t) => tools.push(t),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if !problems.is_empty() {
            return Err(unsupported(problems));
        }
        Ok(Api {
            title: self.title.clone(),
            version: self.version.clone(),
            tools,
        })
    }

    fn tool(&self, op: &OperationRef, taken: &mut BTreeSet<String>) -> Result<Tool, Vec<Problem>> {
        let raw = self.at(&op.pointer).cloned().unwrap_or(Value::Null);
        let mut problems = Vec::new();
        let declared = self.parameters(op, &mut problems);
        let mut params = Vec::new();
        let mut properties = Map::new();
        let mut required = Vec::new();
        let collide = colliding_names(&declared);
        for (at, p) in &declared {
            let lower = p.name.to_ascii_lowercase();
            if p.location == ParameterIn::Header && IGNORED_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            match self.param(at, p, &collide) {
                Ok((param, schema)) => {
                    if param.required {
                        required.push(Value::String(param.arg.clone()));
                    }
                    properties.insert(param.arg.clone(), schema);
                    params.push(param);
                }
                Err(e) => problems.push(e),
            }
        }
        for placeholder in placeholders(&op.path) {
            let declared = params
                .iter()
                .any(|p| p.location == Location::Path && p.name == placeholder);
            if !declared {
                problems.push(Problem {
                    pointer: op.pointer.clone(),
                    message: format!("the path has a placeholder `{{{placeholder}}}` that no path parameter of this operation defines"),
                });
            }
        }
        let body = match raw.get("requestBody") {
            Some(_) => {
                let arg = body_arg(&params);
                match self.body(&format!("{}/requestBody", op.pointer), arg) {
                    Ok((body, schema)) => {
                        if body.required {
                            required.push(Value::String(body.arg.clone()));
                        }
                        properties.insert(body.arg.clone(), schema);
                        Some(body)
                    }
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                }
            }
            None => None,
        };
        let (output, output_schema) = match self.output(op) {
            Ok(o) => o,
            Err(e) => {
                problems.push(e);
                (Output::Untyped, None)
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let name = unique_name(tool_name(op), taken);
        let summary = raw.get("summary").and_then(Value::as_str);
        let mut definition = json!({
            "name": name,
            "description": description(op, summary, raw.get("description").and_then(Value::as_str)),
            "inputSchema": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            },
            "annotations": hints(&op.method),
        });
        if let Some(s) = summary {
            definition["title"] = json!(s);
        }
        if let Some(s) = output_schema {
            definition["outputSchema"] = s;
        }
        Ok(Tool {
            name,
            operation_id: op.operation_id.clone(),
            method: op.method.clone(),
            path: op.path.clone(),
            definition,
            params,
            body,
            output,
        })
    }

    /// The path item's parameters overridden by the operation's (same name and location),
    /// each with the pointer of its definition.
    fn parameters(
        &self,
        op: &OperationRef,
        problems: &mut Vec<Problem>,
    ) -> Vec<(String, Parameter)> {
        let item = format!("/paths/{}", escape_pointer(&op.path));
        let mut out: Vec<(String, Parameter)> = Vec::new();
        for owner in [item, op.pointer.clone()] {
            let n = self
                .at(&format!("{owner}/parameters"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                let at = format!("{owner}/parameters/{i}");
                let parsed = self.follow(&at).and_then(|(at, v)| {
                    serde_json::from_value::<Parameter>(v.clone())
                        .map(|p| (at.clone(), p))
                        .map_err(|e| Problem {
                            pointer: at,
                            message: format!("not a valid parameter: {e}"),
                        })
                });
                match parsed {
                    Ok((at, p)) => {
                        out.retain(|(_, q)| !(q.name == p.name && q.location == p.location));
                        out.push((at, p));
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
        out
    }

    fn param(
        &self,
        at: &str,
        p: &Parameter,
        collide: &BTreeSet<String>,
    ) -> Result<(Param, Value), Problem> {
        let location = match p.location {
            ParameterIn::Path => Location::Path,
            ParameterIn::Query => Location::Query,
            ParameterIn::Header => Location::Header,
            ParameterIn::Cookie => Location::Cookie,
        };
        let problem = |pointer: String, message: String| Problem { pointer, message };
        if location == Location::Header
            && FORBIDDEN_HEADERS.contains(&p.name.to_ascii_lowercase().as_str())
        {
            return Err(problem(
                format!("{at}/name"),
                format!("header parameter `{}` cannot be set by a tool; leave this operation out with operations.deny", p.name),
            ));
        }
        let style = style_for(location, p.style).ok_or_else(|| {
            problem(
                format!("{at}/style"),
                format!(
                    "style `{:?}` does not apply to {} parameters",
                    p.style,
                    location.as_str()
                ),
            )
        })?;
        let (mut schema, json) = match (&p.schema, &p.content) {
            (Some(_), _) => (inline(self, &format!("{at}/schema"))?, false),
            (None, Some(content)) => {
                let (mt, _) = content.iter().next().ok_or_else(|| {
                    problem(format!("{at}/content"), "`content` is empty".to_owned())
                })?;
                if !is_json(mt) {
                    return Err(problem(
                        format!("{at}/content"),
                        format!("parameter content `{mt}` is not supported (only JSON)"),
                    ));
                }
                let s = format!("{at}/content/{}/schema", escape_pointer(mt));
                let schema = if self.at(&s).is_some() {
                    inline(self, &s)?
                } else {
                    json!({})
                };
                (schema, true)
            }
            (None, None) => (json!({}), false),
        };
        if let (Value::Object(m), Some(d)) = (&mut schema, &p.description) {
            m.entry("description").or_insert_with(|| json!(d));
        }
        if let (Value::Object(m), Some(true)) = (&mut schema, p.deprecated) {
            m.insert("deprecated".to_owned(), json!(true));
        }
        let arg = if collide.contains(&p.name) {
            format!("{}_{}", location.as_str(), p.name)
        } else {
            p.name.clone()
        };
        let param = Param {
            name: p.name.clone(),
            arg,
            location,
            style,
            explode: p.explode.unwrap_or(style == Style::Form),
            required: location == Location::Path || p.required == Some(true),
            json,
        };
        Ok((param, schema))
    }

    fn body(&self, at: &str, arg: String) -> Result<(Body, Value), Problem> {
        let (at, v) = self.follow(at)?;
        let rb: RequestBody = serde_json::from_value(v.clone()).map_err(|e| Problem {
            pointer: at.clone(),
            message: format!("not a valid request body: {e}"),
        })?;
        let pick = |want: fn(&str) -> bool| rb.content.keys().find(|k| want(k)).cloned();
        let (content_type, encoding) = if let Some(mt) = pick(is_json) {
            (mt, BodyEncoding::Json)
        } else if let Some(mt) = pick(|m| media(m) == "application/x-www-form-urlencoded") {
            (mt, BodyEncoding::Form)
        } else if let Some(mt) = pick(|m| media(m) == "text/plain") {
            (mt, BodyEncoding::Text)
        } else {
            return Err(Problem {
                pointer: format!("{at}/content"),
                message: format!(
                    "request body types {} are not supported (JSON, form-urlencoded and text/plain are); leave this operation out with operations.deny",
                    rb.content.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let s = format!("{at}/content/{}/schema", escape_pointer(&content_type));
        let mut schema = if self.at(&s).is_some() {
            inline(self, &s)?
        } else if encoding == BodyEncoding::Text {
            json!({"type": "string"})
        } else {
            json!({})
        };
        if let (Value::Object(m), Some(d)) = (&mut schema, &rb.description) {
            m.entry("description").or_insert_with(|| json!(d));
        }
        let body = Body {
            arg,
            content_type,
            encoding,
            required: rb.required == Some(true),
        };
        Ok((body, schema))
    }

    /// The output schema, when every 2xx response declares the same JSON schema with a type.
    fn output(&self, op: &OperationRef) -> Result<(Output, Option<Value>), Problem> {
        let at = format!("{}/responses", op.pointer);
        let Some(responses) = self.at(&at).and_then(Value::as_object) else {
            return Ok((Output::Untyped, None));
        };
        let mut schemas = Vec::new();
        for code in responses.keys().filter(|c| c.starts_with('2')) {
            let (rat, r) = self.follow(&format!("{at}/{}", escape_pointer(code)))?;
            let content = r.get("content").and_then(Value::as_object);
            match content.and_then(|c| c.keys().find(|k| is_json(k))) {
                Some(mt) => {
                    let s = format!("{rat}/content/{}/schema", escape_pointer(mt));
                    if self.at(&s).is_none() {
                        return Ok((Output::Untyped, None));
                    }
                    schemas.push(inline(self, &s)?);
                }
                None => return Ok((Output::Untyped, None)),
            }
        }
        let Some(first) = schemas.first() else {
            return Ok((Output::Untyped, None));
        };
        if schemas.iter().any(|s| s != first) {
            return Ok((Output::Untyped, None));
        }
        match first.get("type") {
            Some(Value::String(t)) if t == "object" => Ok((Output::Object, Some(first.clone()))),
            Some(_) => Ok((
                Output::Wrapped,
                Some(json!({
                    "type": "object",
                    "properties": { "result": first },
                    "required": ["result"],
                })),
            )),
            None => Ok((Output::Untyped, None)),
        }
    }
}

/// The `{name}`s of a path template.
fn placeholders(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + len]);
        rest = &rest[open + len + 1..];
    }
    out
}

fn style_for(location: Location, style: Option<ParameterStyle>) -> Option<Style> {
    use ParameterStyle as P;
    let s = match style {
        None => {
            return Some(match location {
                Location::Path | Location::Header => Style::Simple,
                Location::Query | Location::Cookie => Style::Form,
            })
        }
        Some(P::Simple) => Style::Simple,
        Some(P::Label) => Style::Label,
        Some(P::Matrix) => Style::Matrix,
        Some(P::Form) => Style::Form,
        Some(P::SpaceDelimited) => Style::SpaceDelimited,
        Some(P::PipeDelimited) => Style::PipeDelimited,
        Some(P::DeepObject) => Style::DeepObject,
    };
    let fits = match location {
        Location::Path => matches!(s, Style::Simple | Style::Label | Style::Matrix),
        Location::Query => matches!(
            s,
            Style::Form | Style::SpaceDelimited | Style::PipeDelimited | Style::DeepObject
        ),
        Location::Header => s == Style::Simple,
        Location::Cookie => s == Style::Form,
    };
    fits.then_some(s)
}

/// The media type without parameters, lower-cased.
fn media(mt: &str) -> String {
    mt.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn is_json(mt: &str) -> bool {
    let m = media(mt);
    m == "application/json" || m.ends_with("+json")
}

/// Parameter names used more than once (in different locations).
fn colliding_names(params: &[(String, Parameter)]) -> BTreeSet<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p) in params {
        *seen.entry(p.name.as_str()).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// `body`, unless a parameter already has that name.
fn body_arg(params: &[Param]) -> String {
    let mut arg = "body".to_owned();
    while params.iter().any(|p| p.arg == arg) {
        arg.insert_str(0, "request_");
    }
    arg
}

fn description(op: &OperationRef, summary: Option<&str>, long: Option<&str>) -> String {
    let mut d = match (summary, long) {
        (Some(s), Some(l)) if l.starts_with(s) => l.to_owned(),
        (Some(s), Some(l)) => format!("{s}\n\n{l}"),
        (Some(s), None) | (None, Some(s)) => s.to_owned(),
        (None, None) => op.route(),
    };
    if d.len() > MAX_DESCRIPTION {
        let mut cut = MAX_DESCRIPTION;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
        d.push('…');
    }
    d
}

/// What the HTTP method says about the operation (RFC 9110 safe and idempotent methods).
fn hints(method: &Method) -> Value {
    let read_only = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut h = json!({ "readOnlyHint": read_only, "openWorldHint": true });
    if *method == Method::DELETE {
        h["destructiveHint"] = json!(true);
    }
    if read_only || matches!(*method, Method::PUT | Method::DELETE) {
        h["idempotentHint"] = json!(true);
    }
    h
}

/// The operationId, or `method_path` without one, in `[A-Za-z0-9_-]`, at most 64 characters.
fn tool_name(op: &OperationRef) -> String {
    let source = match &op.operation_id {
        Some(id) if !id.trim().is_empty() => id.clone(),
        _ => format!("{}_{}", op.method.as_str().to_ascii_lowercase(), op.path),
    };
    let mut name = String::with_capacity(source.len());
    for c in source.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        };
        if !(c == '_' && (name.is_empty() || name.ends_with('_'))) {
            name.push(c);
        }
    }
    while name.ends_with('_') {
        name.pop();
    }
    if name.is_empty() {
        name.push_str("operation");
    }
    // A hash of what was written keeps apart two names that shorten or sanitize alike.
    if name.len() > MAX_NAME || !source.is_ascii() {
        return with_hash(&name, &source);
    }
    name
}

fn with_hash(name: &str, source: &str) -> String {
    let digest = hex::encode(&Sha256::digest(source.as_bytes())[..4]);
    let head: String = name.chars().take(MAX_NAME - 9).collect();
    format!("{head}_{digest}")
}

/// `name`, or `name` with a hash of itself and a counter when an earlier tool took it.
fn unique_name(name: String, taken: &mut BTreeSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 2u32;
    while taken.contains(&candidate) {
        candidate = with_hash(&name, &format!("{name}#{n}"));
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

#[cfg(test)]
pub(super) fn name_of(op: &OperationRef) -> String {
    tool_name(op)
}
