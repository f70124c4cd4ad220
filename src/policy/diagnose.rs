//! Turns the TOML parser's and serde's errors into `FILE:LINE:COL: error: WHAT; HOW TO FIX`.

use super::error::Diagnostic;
use super::location::{key_before, line_col};

/// `path` is the table being read when deserialization failed (empty for syntax errors).
pub fn from_toml_error(
    src: &str,
    origin: &str,
    e: &toml::de::Error,
    path: &[String],
) -> Diagnostic {
    let at = e.span().map_or(0, |s| s.start);
    let (line, column) = line_col(src, at);
    let msg = e.message().trim();
    let table = table_name(path);
    let message = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let options = backticked(expected);
        let mut m = format!("unknown key `{key}` {table}");
        if options.is_empty() {
            m.push_str("; this table takes no keys");
        } else {
            m.push_str(&format!("; expected one of: {}", options.join(", ")));
            if let Some(best) = closest(key, &options) {
                m.push_str(&format!(" (did you mean `{best}`?)"));
            }
        }
        m
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        let key = rest.trim_end_matches('`');
        let hint = if key == "runtime" {
            "add runtime = \"process\", \"docker\" or \"remote\"".to_string()
        } else {
            format!("add `{key}`")
        };
        format!("missing required key `{key}` {table}; {hint}")
    } else if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let what = match key_before(src, at) {
            Some(k) => format!("`{k}` {table}"),
            None => format!("a value {table}"),
        };
        format!(
            "wrong type for {what}: found {found}; expected {}",
            plain_type(expected)
        )
    } else if msg.starts_with("invalid length") {
        format!("{msg} {table}")
    } else {
        // A syntax error from the TOML parser; its own text already says what it expected.
        format!(
            "invalid TOML: {}; fix the syntax here (see https://toml.io)",
            msg.replace('\n', ": ")
        )
    };
    Diagnostic {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

fn table_name(path: &[String]) -> String {
    if path.is_empty() {
        return "at the top level".to_string();
    }
    let parts: Vec<String> = path
        .iter()
        .map(|p| {
            if !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                p.clone()
            } else {
                format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect();
    format!("in [{}]", parts.join("."))
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn plain_type(t: &str) -> String {
    match t {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        other => other.to_string(),
    }
}

/// The option within edit distance 2 of `key`, if one is clearly closest.
fn closest(key: &str, options: &[String]) -> Option<String> {
    options
        .iter()
        .map(|o| (edit_distance(key, o), o))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let opts: Vec<String> = ["runtime", "command", "args"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(closest("comand", &opts).as_deref(), Some("command"));
        assert_eq!(closest("zzzzzz", &opts), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
