//! Validation of a `runtime = "openapi"` server: the document is read and turned into tools
//! here, so that `policy check` reports a bad document (with its JSON pointers) and an
//! `operations` entry that names nothing, before anything runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::glob::glob_match;
use super::model::{Egress, OpenApiSpec, Runtime, SecretRef, ToolFilter};
use super::raw::{RawServer, Str};
use super::validate::Checker;
use crate::openapi::{Document, OperationRef, SpecError};

/// Default cap on one API answer.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// Operations named in a "matches nothing" message, at most.
const LISTED: usize = 12;

impl Checker<'_> {
    pub(super) fn openapi(
        &mut self,
        n: &str,
        rs: &RawServer,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
    ) -> Option<Runtime> {
        let at = rs.runtime.span().start;
        let base_url = match &rs.base_url {
            Some(u) => self.endpoint_url(n, u, egress, "base_url"),
            None => {
                self.error(at, format!("[servers.{n}] has runtime = \"openapi\" but no `base_url`; add base_url = \"https://api.example.com/v1\" (where requests go; the document's own `servers` are not used)"));
                None
            }
        };
        let (headers, ca_file, oauth) =
            self.http_credentials(n, rs, secrets, egress, base_url.as_deref());
        let operations = ToolFilter {
            allow: Self::op_patterns(
                &rs.operations
                    .as_ref()
                    .and_then(|o| o.get_ref().allow.clone()),
            ),
            deny: Self::op_patterns(
                &rs.operations
                    .as_ref()
                    .and_then(|o| o.get_ref().deny.clone()),
            ),
        };
        let max_response_bytes = self
            .size(&rs.max_response_bytes, "max_response_bytes")
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        let Some(spec_at) = &rs.spec else {
            self.error(at, format!("[servers.{n}] has runtime = \"openapi\" but no `spec`; add spec = \"path/to/openapi.yaml\" (OpenAPI 3.0 or 3.1, JSON or YAML)"));
            return None;
        };
        let spec = self.resolve(spec_at.get_ref());
        let doc = match Document::read(&spec) {
            Ok(d) => d,
            Err(e) => {
                self.spec_error(n, spec_at, e);
                return None;
            }
        };
        let ops = match doc.operations() {
            Ok(o) => o,
            Err(problem) => {
                let origin = doc.origin.clone();
                self.spec_error(n, spec_at, SpecError::Invalid { origin, problem });
                return None;
            }
        };
        self.patterns_match(n, &rs.operations, &ops);
        let api = match doc.tools(|op| selected(&operations, op)) {
            Ok(a) => a,
            Err(e) => {
                self.spec_error(n, spec_at, e);
                return None;
            }
        };
        Some(Runtime::OpenApi(OpenApiSpec {
            spec,
            base_url: base_url?,
            headers,
            ca_file,
            oauth,
            operations,
            max_response_bytes,
            api: Arc::new(api),
        }))
    }

    fn op_patterns(v: &Option<Vec<Str>>) -> Vec<String> {
        v.iter().flatten().map(|p| p.get_ref().clone()).collect()
    }

    /// Each problem of the document as its own diagnostic, at the `spec` key.
    fn spec_error(&mut self, n: &str, spec: &Str, e: SpecError) {
        let at = spec.span().start;
        match e {
            SpecError::Unsupported { origin, problems } => {
                for p in problems {
                    self.error(at, format!("[servers.{n}] OpenAPI document `{origin}` {p}; fix the document or leave the operation out with operations.deny"));
                }
            }
            other => self.error(at, format!("[servers.{n}] {other}")),
        }
    }

    /// Every `operations` entry must name at least one operation: a typo in `deny` would
    /// otherwise silently expose what it meant to hide.
    fn patterns_match(
        &mut self,
        n: &str,
        raw: &Option<toml::Spanned<super::raw::RawPatterns>>,
        ops: &[OperationRef],
    ) {
        let Some(raw) = raw else { return };
        let lists = [
            ("allow", &raw.get_ref().allow),
            ("deny", &raw.get_ref().deny),
        ];
        for (key, list) in lists {
            for p in list.iter().flatten() {
                if ops.iter().any(|op| matches(p.get_ref(), op)) {
                    continue;
                }
                let mut known: Vec<String> = ops
                    .iter()
                    .take(LISTED)
                    .map(|o| match &o.operation_id {
                        Some(id) => format!("{id} ({})", o.route()),
                        None => o.route(),
                    })
                    .collect();
                if ops.len() > LISTED {
                    known.push(format!("and {} more", ops.len() - LISTED));
                }
                self.error(p.span().start, format!("operations.{key} entry \"{}\" of [servers.{n}] names no operation of the document; name an operationId or \"METHOD /path\" (`*` matches any run of characters): {}", p.get_ref(), known.join(", ")));
            }
        }
    }
}

/// Whether `pattern` names `op`: its operationId, or `METHOD /path` (the method in any case).
fn matches(pattern: &str, op: &OperationRef) -> bool {
    if op
        .operation_id
        .as_deref()
        .is_some_and(|id| glob_match(pattern, id))
    {
        return true;
    }
    let normalized = match pattern.split_once(' ') {
        Some((method, path)) => format!("{} {}", method.to_ascii_uppercase(), path.trim_start()),
        None => return false,
    };
    glob_match(&normalized, &op.route())
}

/// Deny wins; an empty allow list keeps every operation.
fn selected(filter: &ToolFilter, op: &OperationRef) -> bool {
    if filter.deny.iter().any(|p| matches(p, op)) {
        return false;
    }
    filter.allow.is_empty() || filter.allow.iter().any(|p| matches(p, op))
}
