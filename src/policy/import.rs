//! `policy import`: a Claude `.mcp.json` or a `servers.json` -> policy TOML that passes `parse`.
//!
//! Secrets found in the input (by name or by `${VAR}` reference) are never copied: they become
//! `env:` secret references, so the produced file is safe to commit and review.

use super::error::{Diagnostic, Diagnostics, PolicyError};
use super::location::line_col;
use super::validate::{is_env_name, is_server_name, sanitize_server_name};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Converts the JSON `src` (named `origin` in messages) into policy TOML text.
pub fn import(src: &str, origin: &str) -> Result<String, PolicyError> {
    let fail = |line: usize, column: usize, message: String| {
        PolicyError::Invalid(Diagnostics(vec![Diagnostic {
            origin: origin.to_string(),
            line,
            column,
            message,
        }]))
    };
    let doc: Value = serde_json::from_str(src).map_err(|e| {
        let (line, column) = json_error_position(src, &e);
        fail(
            line,
            column,
            format!("invalid JSON: {e}; fix the syntax here"),
        )
    })?;
    let entries = ["mcpServers", "servers"]
        .iter()
        .find_map(|k| doc.get(*k).and_then(Value::as_object))
        .ok_or_else(|| {
            fail(1, 1, "no `mcpServers` or `servers` object found; expected a Claude .mcp.json ({\"mcpServers\": {...}}) or a servers.json ({\"servers\": {...}})".to_string())
        })?;

    let mut out = String::new();
    // Writing to a String cannot fail; results of write! are ignored for that reason.
    let _ = writeln!(
        out,
        "# Imported from {} by `portcullis policy import`.",
        json_str(origin)
    );
    let _ = writeln!(
        out,
        "# Review before use: every server starts with no network (egress.allow = []),"
    );
    let _ = writeln!(
        out,
        "# and credentials are read from the environment, never stored here."
    );
    let _ = writeln!(out, "\n[gateway]\nlisten = \"127.0.0.1:8811\"");

    let mut used = BTreeSet::new();
    for (orig_name, entry) in entries {
        let name = unique_name(orig_name, &mut used);
        let (line, column) = locate(src, orig_name);
        let Some(obj) = entry.as_object() else {
            return Err(fail(line, column, format!("server `{orig_name}` is not an object; expected {{\"command\": ...}} or {{\"url\": ...}}")));
        };
        let _ = writeln!(out);
        if name != *orig_name {
            let _ = writeln!(
                out,
                "# Renamed from {}: names are 1-32 letters, digits or `-`.",
                json_str(orig_name)
            );
        }
        let _ = writeln!(out, "[servers.{name}]");
        if obj.get("disabled").and_then(Value::as_bool) == Some(true) {
            let _ = writeln!(out, "# Note: this server was marked disabled.");
        }
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
        if obj.contains_key("url") || matches!(kind, "http" | "sse" | "streamable-http") {
            remote(&mut out, &name, obj)
                .map_err(|m| fail(line, column, format!("server `{orig_name}`: {m}")))?;
        } else {
            stdio(&mut out, &name, obj)
                .map_err(|m| fail(line, column, format!("server `{orig_name}`: {m}")))?;
        }
        let ignored: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| {
                ![
                    "type", "command", "args", "env", "cwd", "url", "headers", "disabled",
                ]
                .contains(k)
            })
            .collect();
        if !ignored.is_empty() {
            let shown: Vec<String> = ignored.iter().map(|k| json_str(k)).collect();
            let _ = writeln!(out, "# Not imported: {}", shown.join(", "));
        }
    }

    // The output must be a valid policy; if it is not, that is a bug here, reported as such.
    super::parse(&out, "<imported policy>").map_err(|e| {
        fail(
            0,
            0,
            format!("internal error: the imported policy does not validate: {e}"),
        )
    })?;
    Ok(out)
}

/// Where the entry `name` is written (the first `"name":`), for messages; 1:1 if not found.
/// Where a JSON syntax error is, as diagnostics count: serde_json counts columns in bytes and
/// reports column 0 at the very start of a line (an empty file, say); diagnostics count
/// characters from 1.
fn json_error_position(src: &str, e: &serde_json::Error) -> (usize, usize) {
    let line_start: usize = src
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    line_col(src, line_start + e.column().saturating_sub(1))
}

fn locate(src: &str, name: &str) -> (usize, usize) {
    let quoted = serde_json::to_string(name).unwrap_or_default();
    let mut from = 0;
    while let Some(i) = src.get(from..).and_then(|s| s.find(&quoted)) {
        let at = from + i;
        let after = src[at + quoted.len()..].trim_start();
        if after.starts_with(':') {
            return line_col(src, at);
        }
        from = at + quoted.len();
    }
    (1, 1)
}

fn unique_name(orig: &str, used: &mut BTreeSet<String>) -> String {
    let base = if is_server_name(orig) {
        orig.to_string()
    } else {
        sanitize_server_name(orig)
    };
    let mut name = base.clone();
    let mut n = 2;
    while used.contains(&name.to_ascii_lowercase()) {
        let suffix = format!("-{n}");
        let keep: String = base.chars().take(32 - suffix.len()).collect();
        name = format!("{keep}{suffix}");
        n += 1;
    }
    used.insert(name.to_ascii_lowercase());
    name
}

/// A single-line TOML basic string. (The toml serializer may choose a multi-line string, which
/// would break the line-oriented output and let a hostile name inject keys.)
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        json_str(k)
    }
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{what}` must contain only strings"))
            })
            .collect(),
        Some(_) => Err(format!("`{what}` must be an array of strings")),
    }
}

fn string_map(v: Option<&Value>, what: &str) -> Result<Map<String, Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(format!("`{what}` must be an object")),
    }
}

fn looks_secret_name(name: &str) -> bool {
    let u = name.to_ascii_uppercase();
    u.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| {
        [
            "TOKEN",
            "SECRET",
            "PASSWORD",
            "PASSWD",
            "CREDENTIAL",
            "AUTH",
        ]
        .iter()
        .any(|w| word.contains(w))
            || word.ends_with("KEY")
            || word == "PAT"
    })
}

/// The variable named by a value that is exactly `${VAR}`, `$VAR`, `${env:VAR}` or `${input:VAR}`.
fn reference(v: &str) -> Option<String> {
    let inner = v
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .or_else(|| v.strip_prefix('$'))?;
    let inner = inner
        .strip_prefix("env:")
        .or_else(|| inner.strip_prefix("input:"))
        .unwrap_or(inner);
    let name = inner.split(":-").next().unwrap_or(inner);
    // Only a value that is nothing but one reference can be replaced by a secret source.
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    plain.then(|| env_name(name))
}

/// `name` made into a valid environment variable name.
fn env_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn secrets_line(out: &mut String, secrets: &BTreeMap<String, String>) {
    if secrets.is_empty() {
        return;
    }
    let items: Vec<String> = secrets
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), json_str(&format!("env:{v}"))))
        .collect();
    let _ = writeln!(
        out,
        "# Set these in the gateway's environment (or switch to file: / dotenv: sources)."
    );
    let _ = writeln!(out, "secrets = {{ {} }}", items.join(", "));
}

fn stdio(out: &mut String, name: &str, obj: &Map<String, Value>) -> Result<(), String> {
    let command = obj
        .get("command")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or("no `command` (and no `url`); cannot tell how to run it")?;
    let args = strings(obj.get("args"), "args")?;
    let _ = writeln!(
        out,
        "# Runs as a plain child process, with the host's network and files. Prefer"
    );
    let _ = writeln!(
        out,
        "# runtime = \"docker\" with an image of this server to sandbox it and enforce egress."
    );
    let _ = writeln!(out, "runtime = \"process\"");
    let _ = writeln!(out, "command = {}", json_str(command));
    if !args.is_empty() {
        let a: Vec<String> = args.iter().map(|x| json_str(x)).collect();
        let _ = writeln!(out, "args = [{}]", a.join(", "));
        if args.iter().any(|a| a.contains("${")) {
            let _ = writeln!(out, "# Note: `${{...}}` in args is not expanded by portcullis; replace it with the value.");
        }
    }
    if let Some(cwd) = obj.get("cwd").and_then(Value::as_str) {
        let _ = writeln!(out, "cwd = {}", json_str(cwd));
    }
    let mut env = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (k, v) in string_map(obj.get("env"), "env")? {
        let val = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(format!("env `{k}` must be a string")),
        };
        let var = if is_env_name(&k) {
            k.clone()
        } else {
            env_name(&k)
        };
        if let Some(r) = reference(&val) {
            secrets.insert(var, r);
        } else if looks_secret_name(&k) || val.contains('$') {
            // A literal credential: drop it, and read it from the gateway's environment instead.
            secrets.insert(var.clone(), var);
        } else {
            env.insert(var, val);
        }
    }
    if !env.is_empty() {
        let items: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), json_str(v)))
            .collect();
        let _ = writeln!(out, "env = {{ {} }}", items.join(", "));
    }
    secrets_line(out, &secrets);
    let _ = writeln!(
        out,
        "# Enforced only for runtime = \"docker\"; list hosts like \"api.example.com:443\"."
    );
    let _ = writeln!(out, "egress.allow = []");
    let _ = name;
    Ok(())
}

fn remote(out: &mut String, name: &str, obj: &Map<String, Value>) -> Result<(), String> {
    let url = obj
        .get("url")
        .and_then(Value::as_str)
        .ok_or("has a remote `type` but no `url`")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("url {} is not http(s)", json_str(url)));
    }
    let _ = writeln!(out, "runtime = \"remote\"");
    let _ = writeln!(out, "url = {}", json_str(url));
    if let Some((ip, rule)) =
        super::validate::private_target_rule(url, &super::model::Egress::default())
    {
        let _ = writeln!(
            out,
            "# REVIEW: {ip} is a private/loopback address; the gateway reaches it only because of this rule."
        );
        let _ = writeln!(out, "egress.allow = [{}]", json_str(&rule));
    }
    let mut headers = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (h, v) in string_map(obj.get("headers"), "headers")? {
        let val = v
            .as_str()
            .ok_or_else(|| format!("header `{h}` must be a string"))?;
        let (templ, refs) = header_template(name, &h, val);
        for (secret, var) in refs {
            secrets.insert(secret, var);
        }
        headers.insert(h, templ);
    }
    if !headers.is_empty() {
        let items: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), json_str(v)))
            .collect();
        let _ = writeln!(out, "headers = {{ {} }}", items.join(", "));
    }
    secrets_line(out, &secrets);
    Ok(())
}

/// Rewrites a header value so that no credential stays in it: `${VAR}` becomes
/// `${secret:VAR}`; a literal credential becomes a reference to a new secret.
fn header_template(server: &str, header: &str, val: &str) -> (String, Vec<(String, String)>) {
    let mut refs = Vec::new();
    let mut out = String::new();
    let mut rest = val;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        match after.find('}') {
            Some(end) => {
                let var = reference(&after[..=end]).unwrap_or_else(|| env_name(header));
                out.push_str(&format!("${{secret:{var}}}"));
                refs.push((var.clone(), var));
                rest = &after[end + 1..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let sensitive = looks_secret_name(header)
        || header.eq_ignore_ascii_case("authorization")
        || header.eq_ignore_ascii_case("cookie");
    if refs.is_empty() && sensitive {
        let var = env_name(&format!("{server}_{header}"));
        let templ = match val.split_once(' ') {
            Some((scheme, _)) if header.eq_ignore_ascii_case("authorization") => {
                format!("{scheme} ${{secret:{var}}}")
            }
            _ => format!("${{secret:{var}}}"),
        };
        refs.push((var.clone(), var));
        return (templ, refs);
    }
    (out, refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_mcp_json_imports_without_secret_literals() {
        let src = r#"{"mcpServers": {
            "my_time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC", "GITHUB_TOKEN": "ghp_literal123"}},
            "gh": {"type": "http", "url": "https://api.githubcopilot.com/mcp/", "headers": {"Authorization": "Bearer ghp_literal456"}},
            "db": {"command": "db-mcp", "env": {"DB_URL": "${DATABASE_URL}"}}
        }}"#;
        let toml = import(src, ".mcp.json").unwrap();
        assert!(!toml.contains("ghp_literal"), "{toml}");
        let p = super::super::parse(&toml, "x").unwrap();
        assert!(p.servers.contains_key("my-time"));
        assert_eq!(
            p.servers["my-time"].secrets["GITHUB_TOKEN"],
            crate::policy::SecretRef::Env("GITHUB_TOKEN".into())
        );
        assert_eq!(
            p.servers["db"].secrets["DB_URL"],
            crate::policy::SecretRef::Env("DATABASE_URL".into())
        );
        match &p.servers["gh"].runtime {
            crate::policy::Runtime::Remote(r) => assert_eq!(
                r.headers["Authorization"],
                "Bearer ${secret:GH_AUTHORIZATION}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_loopback_url_gets_the_egress_rule_it_needs_marked_for_review() {
        let out = import(
            r#"{"mcpServers": {"local": {"type": "http", "url": "http://127.0.0.1:3000/mcp"}}}"#,
            ".mcp.json",
        )
        .unwrap();
        assert!(
            out.contains("# REVIEW: 127.0.0.1 is a private/loopback address"),
            "{out}"
        );
        assert!(out.contains("egress.allow = [\"127.0.0.1:3000\"]"), "{out}");
    }

    #[test]
    fn bad_json_has_a_location() {
        let e = import("{\n  \"mcpServers\": {,}\n}", "a.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.json:2:"), "{e}");
        assert!(import("{}", "a.json").is_err());
    }

    #[test]
    fn json_errors_point_at_a_character_of_the_file() {
        // Found by fuzzing (fuzz/regressions/policy_import/empty-file): an empty file was
        // reported at column 0.
        let e = import("", "a.json").unwrap_err().to_string();
        assert!(e.starts_with("a.json:1:1: error: invalid JSON"), "{e}");
        // Columns count characters, not UTF-8 bytes.
        let e = import("{\"\u{e9}\u{e9}\": [1,}", "a.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.json:1:11: error: invalid JSON"), "{e}");
    }

    #[test]
    fn references() {
        assert_eq!(reference("${GH}").as_deref(), Some("GH"));
        assert_eq!(reference("${env:GH}").as_deref(), Some("GH"));
        assert_eq!(reference("${input:api-key}").as_deref(), Some("API_KEY"));
        assert_eq!(reference("$TOKEN").as_deref(), Some("TOKEN"));
        assert_eq!(reference("$HOME/x"), None);
        assert_eq!(reference("plain"), None);
        assert!(
            looks_secret_name("GITHUB_TOKEN")
                && looks_secret_name("apiKey")
                && looks_secret_name("DB_PASSWORD")
        );
        assert!(
            !looks_secret_name("PATH")
                && !looks_secret_name("LOG_LEVEL")
                && !looks_secret_name("TZ")
        );
    }

    #[test]
    fn entry_errors_point_at_the_entry() {
        let e = import(
            "{\n \"servers\": {\n  \"x\": {\"args\": []}\n }\n}",
            "s.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("s.json:3:3: error: server `x`: no `command`"),
            "{e}"
        );
    }

    #[test]
    fn hostile_names_cannot_inject_toml() {
        let src = r#"{"mcpServers": {"a\n[servers.evil]\nruntime = \"process\"\ncommand = \"sh\"\n#": {"command": "x", "bad\nruntime = 1": 1}}}"#;
        let toml = import(src, "in\nx.json").unwrap();
        let p = super::super::parse(&toml, "x").unwrap();
        assert_eq!(p.servers.len(), 1, "{toml}");
        assert!(!p.servers.contains_key("evil"), "{toml}");
    }

    #[test]
    fn names_are_made_unique() {
        let mut used = BTreeSet::new();
        assert_eq!(unique_name("a_b", &mut used), "a-b");
        assert_eq!(unique_name("a-b", &mut used), "a-b-2");
    }
}
