//! What kind of result a server answered (complete, input required, a task), and replacing the
//! one member a client must not see as the server wrote it.

use serde_json::value::RawValue;

use crate::mcp::result::{self, Members};

/// A result as far as the bridge cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    Complete,
    /// `resultType: "input_required"`, with the server's `requestState` if it sent one.
    InputRequired {
        state: Option<String>,
    },
    /// `resultType: "task"` (the tasks extension), with the server's task id.
    Task {
        task: String,
    },
}

pub fn shape(result: &RawValue) -> Shape {
    match result::result_type(result.get()).as_deref() {
        Some("input_required") => Shape::InputRequired {
            state: Members::of(result.get()).and_then(|m| m.str("requestState")),
        },
        Some("task") => match Members::of(result.get()).and_then(|m| m.str("taskId")) {
            Some(task) => Shape::Task { task },
            None => Shape::Complete,
        },
        _ => Shape::Complete,
    }
}

/// `result` with its top-level string member `field` set to `value`.
pub fn with_field(result: &RawValue, field: &str, value: &str) -> Option<Box<RawValue>> {
    let members = Members::of(result.get())?;
    let value = serde_json::to_string(value).ok()?;
    RawValue::from_string(result::write_object(&members, &[field], &[(field, value)])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn shapes_and_rewrites() {
        assert_eq!(shape(&raw(r#"{"content":[]}"#)), Shape::Complete);
        assert_eq!(
            shape(&raw(
                r#"{"resultType":"input_required","requestState":"s1"}"#
            )),
            Shape::InputRequired {
                state: Some("s1".into())
            }
        );
        assert_eq!(
            shape(&raw(
                r#"{"resultType":"task","taskId":"t9","status":"working"}"#
            )),
            Shape::Task { task: "t9".into() }
        );
        let out = with_field(
            &raw(r#"{"resultType":"task","taskId":"t9"}"#),
            "taskId",
            "wrapped",
        )
        .unwrap();
        assert_eq!(out.get(), r#"{"resultType":"task","taskId":"wrapped"}"#);
    }
}
