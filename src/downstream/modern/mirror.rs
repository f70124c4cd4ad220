//! `Mcp-Param-*` headers of a `tools/call` against the body's arguments, for the arguments the
//! tool's schema marks with `x-mcp-header`: present exactly when the argument is, equal to it
//! after decoding, never twice. Headers the tool does not declare are ignored, as the
//! specification asks of intermediaries.

use http::HeaderMap;
use serde_json::Value;

use super::envelope::Rejection;
use crate::mcp::headers::{self, ParamHeader};
use crate::mcp::ErrorCode;

/// Checks the mirrored arguments of a call of a tool that declares `mirrored`.
pub fn check(
    mirrored: &[ParamHeader],
    arguments: Option<&Value>,
    headers: &HeaderMap,
) -> Result<(), Rejection> {
    for m in mirrored {
        let name = m.header_name();
        let shown = format!("Mcp-Param-{}", m.token);
        let argument = m.path.join(".");
        let mismatch = |what: String| {
            Rejection::new(
                ErrorCode::HEADER_MISMATCH,
                format!("header mismatch: {what}"),
            )
        };
        let mut values = headers.get_all(name.as_str()).iter();
        let raw = values.next();
        if raw.is_some() && values.next().is_some() {
            return Err(mismatch(format!("{shown} appears more than once")));
        }
        let rendered = m.value_in(arguments).and_then(headers::render);
        match (raw, m.value_in(arguments), rendered) {
            (None, None, _) | (None, Some(_), None) => {}
            (Some(_), None, _) => {
                return Err(mismatch(format!(
                    "{shown} is sent but the argument `{argument}` is absent"
                )))
            }
            (Some(_), Some(_), None) => {
                return Err(mismatch(format!(
                    "{shown} is sent but the argument `{argument}` cannot be mirrored"
                )))
            }
            (None, Some(_), Some(_)) => {
                return Err(mismatch(format!(
                    "{shown} is required: the tool mirrors the argument `{argument}`, which the body has"
                )))
            }
            (Some(raw), Some(value), Some(_)) => {
                let Some(decoded) = headers::decode_value(raw.as_bytes()) else {
                    return Err(mismatch(format!(
                        "{shown} holds characters a header may not, or a malformed =?base64?…?= value"
                    )));
                };
                if !m.matches(value, &decoded) {
                    return Err(mismatch(format!(
                        "{shown} differs from the argument `{argument}`"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use serde_json::json;

    fn region() -> Vec<ParamHeader> {
        headers::annotations(
            &json!({"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}),
        )
        .unwrap()
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn mirrored_arguments_must_match_exactly() {
        let m = region();
        let args = json!({"region": "eu"});
        assert!(check(&m, Some(&args), &with(&[("Mcp-Param-Region", "eu")])).is_ok());
        assert!(check(&m, Some(&args), &with(&[("mcp-param-region", "us")])).is_err());
        assert!(
            check(&m, Some(&args), &with(&[])).is_err(),
            "missing header"
        );
        assert!(
            check(&m, Some(&json!({})), &with(&[("Mcp-Param-Region", "eu")])).is_err(),
            "header without argument"
        );
        assert!(check(&m, Some(&json!({})), &with(&[])).is_ok());
        assert!(check(&m, Some(&json!({"region": null})), &with(&[])).is_ok());
        assert!(
            check(
                &m,
                Some(&args),
                &with(&[("Mcp-Param-Region", "eu"), ("Mcp-Param-Region", "eu")])
            )
            .is_err(),
            "twice"
        );
        // Undeclared headers pass untouched.
        assert!(check(
            &m,
            Some(&args),
            &with(&[("Mcp-Param-Region", "eu"), ("Mcp-Param-Other", "x")])
        )
        .is_ok());
    }
}
