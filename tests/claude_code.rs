//! The real Claude Code CLI (npm `@anthropic-ai/claude-code`, installed into `.peers/` by
//! `make test`) connected exactly the way `portcullis client-config claude` and the start-up
//! banner tell a user to: the printed line is run by a shell, as a paste would be, in a
//! throwaway HOME with the CLI's telemetry and network extras switched off. No prompt is ever
//! run (there is no model API here); `claude mcp list` only health-checks the gateway.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Gateway;

const TOKEN: &str = "pcs_claude-code-test-token-0123456789abcdef";

fn token_sha256() -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(TOKEN.as_bytes()))
}

fn policy(listen: &str) -> String {
    format!(
        r#"
[gateway]
listen = "{listen}"

[clients.dev]
token_sha256 = "{}"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
"#,
        token_sha256()
    )
}

/// `program` in `cwd` with `home` as its HOME, the peers' `claude` on PATH, the CLI's
/// telemetry and updater off, and nothing else of ours in its environment.
fn in_home(program: &Path, home: &Path, cwd: &Path, token: Option<&str>) -> Command {
    let bin_dir = common::repo_root().join(".peers/node/node_modules/.bin");
    let mut c = Command::new(program);
    c.current_dir(cwd)
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", home)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1");
    if let Some(t) = token {
        c.env("PORTCULLIS_TOKEN", t);
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Project-scoped servers wait for the user's approval in an interactive session; a test
/// approves it the way that dialog does, in the CLI's own state file.
fn approve_project_server(home: &Path, project: &Path) {
    let state = home.join(".claude.json");
    let mut doc: serde_json::Value = std::fs::read_to_string(&state)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    doc["projects"][project.display().to_string()] = serde_json::json!({
        "enabledMcpjsonServers": ["portcullis"],
        "hasTrustDialogAccepted": true
    });
    std::fs::write(&state, doc.to_string()).unwrap();
}

/// The `portcullis:` row of `claude mcp list`, run with or without the token in its environment.
fn gateway_row(bin: &Path, home: &Path, project: &Path, token: Option<&str>, case: &str) -> String {
    let out = in_home(bin, home, project, token)
        .args(["mcp", "list"])
        .output()
        .unwrap();
    let listed = text(&out);
    listed
        .lines()
        .find(|l| l.starts_with("portcullis:"))
        .unwrap_or_else(|| panic!("{case}: no portcullis row in\n{listed}"))
        .to_owned()
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn pasted_client_config_lines_connect_claude_code_and_keep_the_token_out_of_its_files() {
    let Some(bin) = common::peer("node/node_modules/.bin/claude") else {
        return;
    };
    let gw = Gateway::start(&policy("127.0.0.1:0"));
    // client-config reads the listener from the policy: give it the port the gateway got.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg_policy = cfg_dir.path().join("policy.toml");
    std::fs::write(
        &cfg_policy,
        policy(&format!("127.0.0.1:{}", gw.port()))
            .replace("{fixture}", &common::fixture_bin().display().to_string()),
    )
    .unwrap();

    let config_line = |scope: &str, transport: &str| -> String {
        let out = Command::new(common::gateway_bin())
            .args([
                "client-config",
                "claude",
                "--scope",
                scope,
                "--transport",
                transport,
            ])
            .arg("--policy")
            .arg(&cfg_policy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout.lines().next().unwrap().to_owned()
    };

    // The banner prints the same command as client-config (user scope, Streamable HTTP).
    let banner = gw.stdout.lock().unwrap().clone();
    let wanted = format!("Connect Claude Code with:  {}", config_line("user", "http"));
    assert!(
        banner.iter().any(|l| l == &wanted),
        "banner {banner:#?} lacks `{wanted}`"
    );

    for scope in ["user", "project"] {
        for transport in ["http", "sse"] {
            let case = format!("{scope}/{transport}");
            let home = tempfile::tempdir().unwrap();
            let project = tempfile::tempdir().unwrap();
            let line = config_line(scope, transport);
            assert!(
                line.ends_with("--header 'Authorization: Bearer ${PORTCULLIS_TOKEN}'"),
                "{case}: {line}"
            );
            // Pasted into a shell that has the token: the single quotes keep it out of the
            // command, so Claude Code stores the reference, not the value.
            let added = in_home(Path::new("sh"), home.path(), project.path(), Some(TOKEN))
                .arg("-c")
                .arg(&line)
                .output()
                .unwrap();
            assert!(
                added.status.success(),
                "{case}: `{line}` failed: {}",
                text(&added)
            );
            if scope == "project" {
                assert!(project.path().join(".mcp.json").exists(), "{case}");
                approve_project_server(home.path(), project.path());
            }
            for dir in [home.path(), project.path()] {
                let leaked = files_containing(dir, TOKEN);
                assert!(leaked.is_empty(), "{case}: token stored in {leaked:?}");
            }

            let row = gateway_row(&bin, home.path(), project.path(), Some(TOKEN), &case);
            assert!(row.contains("Connected"), "{case}: {row}");
            let suffix = if transport == "sse" { "/sse" } else { "/mcp" };
            assert!(
                row.contains(&format!("{}{suffix}", gw.base)),
                "{case}: {row}"
            );

            // Without the variable the header is empty and the gateway refuses the client.
            let row = gateway_row(&bin, home.path(), project.path(), None, &case);
            assert!(!row.contains("Connected"), "{case}: {row}");
        }
    }
}
