//! `portcullis policy check|import|show` run as a user would: the built binary on real files.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn portcullis(args: &[&str], file: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg(file)
        .output()
        .expect("run portcullis");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// Checks `text` and returns its single diagnostic line, asserting exit status 1.
fn check_fails(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "policy.toml", text);
    let r = portcullis(&["policy", "check"], &path);
    assert_eq!(r.code, 1, "stdout: {} stderr: {}", r.stdout, r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one diagnostic: {}", r.stderr);
    (path.display().to_string(), lines[0].to_string())
}

#[test]
fn good_policy_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[servers.time]\nruntime = \"process\"\ncommand = \"mcp-server-time\"\n\n[servers.web]\nruntime = \"remote\"\nurl = \"https://example.com/mcp\"\n",
    );
    let r = portcullis(&["policy", "check"], &path);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("{}: ok (2 servers: time, web)\n", path.display())
    );
    assert!(r.stderr.is_empty());
}

#[test]
fn shipped_policies_check_ok() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy");
    for name in [
        "default.toml",
        "devcontainer.toml",
        "seed.toml",
        "compose.toml",
    ] {
        let r = portcullis(&["policy", "check"], &dir.join(name));
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(r.stdout.contains(": ok ("), "{}", r.stdout);
    }
}

#[test]
fn unknown_key_is_located() {
    let (path, line) = check_fails("[servers.time]\nruntime = \"process\"\n  comand = \"x\"\n");
    assert!(
        line.starts_with(&format!(
            "{path}:3:3: error: unknown key `comand` in [servers.time]; expected one of: runtime, command, "
        )),
        "{line}"
    );
}

#[test]
fn type_error_is_located() {
    let (path, line) =
        check_fails("[servers.t]\nruntime = \"docker\"\nimage = \"i\"\npool = \"two\"\n");
    assert_eq!(
        line,
        format!("{path}:4:8: error: wrong type for `pool` in [servers.t]: found string \"two\"; expected a non-negative integer")
    );
}

#[test]
fn bad_egress_rule_is_located() {
    let (path, line) = check_fails(
        "[servers.t]\nruntime = \"docker\"\nimage = \"i\"\negress.allow = [\"api.github.com:443\", \"api.github.com:70000\"]\n",
    );
    assert!(line.starts_with(&format!("{path}:4:39: error: port 70000 in egress rule \"api.github.com:70000\" is out of range")), "{line}");
}

#[test]
fn bad_server_name_is_located() {
    let (path, line) = check_fails("[servers.my_server]\nruntime = \"process\"\ncommand = \"x\"\n");
    assert!(
        line.starts_with(&format!(
            "{path}:1:10: error: server name `my_server` is invalid"
        )),
        "{line}"
    );
    assert!(line.contains("rename it, e.g. `my-server`"), "{line}");
}

#[test]
fn image_on_a_process_server_is_located() {
    let (path, line) = check_fails(
        "[servers.time]\nruntime = \"process\"\ncommand = \"x\"\nargs = []\n    image = \"mcp/time\"\n",
    );
    assert!(
        line.starts_with(&format!(
            "{path}:5:5: error: `image` is not a key of a runtime = \"process\" server"
        )),
        "{line}"
    );
}

#[test]
fn several_errors_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[servers.a]\nruntime = \"process\"\ncommand = \"x\"\nrate = \"5/week\"\n[servers.b]\nruntime = \"remote\"\nurl = \"nope\"\n",
    );
    let r = portcullis(&["policy", "check"], &path);
    assert_eq!(r.code, 1);
    let p = path.display().to_string();
    assert!(
        r.stderr
            .contains(&format!("{p}:4:8: error: unknown rate period")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{p}:7:7: error: url \"nope\"")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2 errors"), "{}", r.stderr);
}

#[test]
fn missing_file_fails_cleanly() {
    let r = portcullis(&["policy", "check"], Path::new("/nonexistent/policy.toml"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("/nonexistent/policy.toml: error: cannot read policy"),
        "{}",
        r.stderr
    );
}

/// Imports `json`, then checks the produced TOML with the CLI; returns the TOML.
fn import_and_check(file_name: &str, json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), file_name, json);
    let r = portcullis(&["policy", "import"], &src);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = write(dir.path(), "imported.toml", &r.stdout);
    let c = portcullis(&["policy", "check"], &out);
    assert_eq!(
        c.code, 0,
        "imported policy rejected: {}\n{}",
        c.stderr, r.stdout
    );
    r.stdout
}

#[test]
fn import_claude_mcp_json() {
    let toml = import_and_check(
        ".mcp.json",
        r#"{
  "mcpServers": {
    "github": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-github"],
      "env": { "GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_SUPERSECRETVALUE123", "LOG_LEVEL": "info" }
    },
    "sentry_prod": {
      "type": "http",
      "url": "https://mcp.sentry.dev/mcp",
      "headers": { "Authorization": "Bearer sntrys_LITERALSECRET", "X-Team": "core" }
    },
    "db": { "command": "db-mcp", "env": { "DATABASE_URL": "${DATABASE_URL}" } }
  }
}"#,
    );
    for secret in ["ghp_SUPERSECRETVALUE123", "sntrys_LITERALSECRET"] {
        assert!(
            !toml.contains(secret),
            "secret literal {secret} leaked:\n{toml}"
        );
    }
    assert!(
        toml.contains("[servers.github]") && toml.contains("runtime = \"process\""),
        "{toml}"
    );
    assert!(
        toml.contains("GITHUB_PERSONAL_ACCESS_TOKEN = \"env:GITHUB_PERSONAL_ACCESS_TOKEN\""),
        "{toml}"
    );
    assert!(toml.contains("LOG_LEVEL = \"info\""), "{toml}");
    assert!(
        toml.contains("[servers.sentry-prod]") && toml.contains("runtime = \"remote\""),
        "{toml}"
    );
    assert!(toml.contains("Bearer ${secret:"), "{toml}");
    assert!(
        toml.contains("DATABASE_URL = \"env:DATABASE_URL\""),
        "{toml}"
    );
    assert!(toml.contains("egress.allow = []"), "{toml}");
}

#[test]
fn import_servers_json() {
    let toml = import_and_check(
        "servers.json",
        r#"{
  "servers": {
    "time": { "type": "stdio", "command": "uvx", "args": ["mcp-server-time"] },
    "api.internal": { "type": "sse", "url": "https://mcp.internal/sse", "headers": { "X-Api-Key": "${input:api_key}" } },
    "fs": { "type": "stdio", "command": "mcp-fs", "env": { "SECRET_KEY": "hunter2hunter2" } }
  }
}"#,
    );
    assert!(!toml.contains("hunter2hunter2"), "{toml}");
    assert!(toml.contains("[servers.api-internal]"), "{toml}");
    assert!(toml.contains("X-Api-Key = \"${secret:API_KEY}\""), "{toml}");
    assert!(toml.contains("[servers.time]"), "{toml}");
}

#[test]
fn import_rejects_non_mcp_json_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "bad.json", "{\n  \"mcpServers\": [1,\n}\n");
    let r = portcullis(&["policy", "import"], &src);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with(&format!("{}:3:1: error: invalid JSON", src.display())),
        "{}",
        r.stderr
    );
}

#[test]
fn show_prints_effective_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[servers.time]\nruntime = \"process\"\ncommand = \"t\"\ncwd = \"work\"\n",
    );
    let r = portcullis(&["policy", "show"], &path);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "listen                127.0.0.1:8811",
        "naming                auto (effective: passthrough)",
        "max_body_bytes        4m",
        "session_idle_timeout  30m",
        "startup_timeout       30s",
        "list_changed_interval 250ms",
        "unstable_list_changes more than 60 per 1m",
        "lock                  none",
        "sanitize              strip",
        "egress                no rules: the host's network",
        // What the process server can and cannot do.
        "user                  65534:65534",
        "sandbox               gateway as root: runs as 65534:65534 with no capabilities",
        "cannot: see or signal other processes (own PID namespace), read the audit log and key",
        "gateway not root: the gateway's uid in a user namespace",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in\n{}", r.stdout);
    }
    assert!(
        r.stdout
            .contains(&dir.path().join("work").display().to_string()),
        "cwd not resolved:\n{}",
        r.stdout
    );
}

#[test]
fn serve_and_check_report_every_unknown_key_with_one_error_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[gateway]\nlisen = \"127.0.0.1:0\"\n[servers.time]\nruntime = \"process\"\ncomand = \"x\"\n",
    );
    let p = path.display().to_string();
    for args in [&["policy", "check"][..], &["serve", "--policy"][..]] {
        let r = portcullis(args, &path);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(lines.len(), 2, "{args:?}: {}", r.stderr);
        assert!(
            lines[0].starts_with(&format!("{p}:2:1: error: unknown key `lisen`")),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            lines[1].starts_with(&format!("{p}:5:1: error: unknown key `comand`")),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn show_prints_every_client_quota_and_the_shared_anonymous_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.toml",
        "[gateway]\nmax_sessions = 100\n\n[clients.anonymous]\nmax_sessions = 80\nsession_rate = { quota = \"2/s\", burst = 5 }\nweight = 3\n",
    );
    let r = portcullis(&["policy", "show"], &path);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "[clients.anonymous]\n",
        "max_sessions          80\n",
        "session_rate          2/s (burst 5)",
        "weight                3",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in\n{}", r.stdout);
    }
    // Without an entry, every anonymous caller shares one quota, shown with its defaults.
    let path = write(dir.path(), "q.toml", "[gateway]\nmax_sessions = 100\n");
    let r = portcullis(&["policy", "show"], &path);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "[clients.anonymous]  (implicit: every caller",
        "max_sessions          50 (default: 256, at most half of gateway.max_sessions)",
        "session_rate          10/s (burst 20)",
        "weight                1",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in\n{}", r.stdout);
    }
}

#[test]
fn bad_client_quotas_are_refused_with_what_to_write() {
    for (quota, want) in [
        ("max_sessions = 0", "4:16: error: `max_sessions` = 0 is out of range; use 1 to 1000000"),
        ("max_sessions = 500", "4:16: error: client `c` has max_sessions = 500, more than the gateway's own limit (gateway.max_sessions = 100); lower it to at most 100"),
        ("weight = 0", "4:10: error: `weight` = 0 is out of range; use 1 to 100"),
        ("weight = 101", "4:10: error: `weight` = 101 is out of range; use 1 to 100"),
        ("session_rate = \"0/s\"", "4:16: error: rate \"0/s\" allows no calls"),
        ("session_rate = \"fast\"", "4:16: error: invalid rate \"fast\""),
    ] {
        let (path, line) = check_fails(&format!(
            "[gateway]\nmax_sessions = 100\n[clients.c]\n{quota}\n"
        ));
        let want = format!("{path}:{want}");
        assert!(line.starts_with(&want), "{quota}: {line}\nwanted: {want}");
    }
}
