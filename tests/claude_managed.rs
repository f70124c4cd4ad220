//! Claude Code bound to the gateway by its managed configuration: the real CLI (npm
//! `@anthropic-ai/claude-code`, from `.peers/`) with the two files `portcullis client-config
//! claude --managed` writes installed where the CLI reads them. On Linux that path is fixed in
//! the CLI (`/etc/claude-code`, no variable moves it), so this test needs root and writes it,
//! putting back whatever was there before; run it under the privileged-test lock
//! (`flock /tmp/portcullis-priv.lock cargo test --test claude_managed`). Throwaway HOME,
//! telemetry and updater off, no prompt is ever run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Gateway;

const TOKEN: &str = "pcs_claude-managed-test-token-0123456789abcdef";
const MANAGED: &str = "/etc/claude-code";
/// A second MCP server a user might add: nothing listens there, the CLI only has to list it.
const ROGUE: &str = "http://127.0.0.1:9/mcp";

fn policy(listen: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "[gateway]\nlisten = \"{listen}\"\n\n[clients.dev]\ntoken_sha256 = \"{}\"\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{}\"\n",
        hex::encode(Sha256::digest(TOKEN.as_bytes())),
        common::fixture_bin().display()
    )
}

/// Moves an existing `/etc/claude-code` aside for the test and puts it back on drop.
struct ManagedDir {
    backup: PathBuf,
}

impl ManagedDir {
    fn take() -> Option<ManagedDir> {
        let backup = PathBuf::from(format!("{MANAGED}.portcullis-test-{}", std::process::id()));
        if Path::new(MANAGED).exists() {
            std::fs::rename(MANAGED, &backup).ok()?;
        }
        Some(ManagedDir { backup })
    }

    fn clear(&self) {
        let _ = std::fs::remove_dir_all(MANAGED);
    }
}

impl Drop for ManagedDir {
    fn drop(&mut self) {
        self.clear();
        if self.backup.exists() {
            let _ = std::fs::rename(&self.backup, MANAGED);
        }
    }
}

fn claude(bin: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("PORTCULLIS_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `claude mcp add` of an HTTP server `name` at `url` in the user's scope.
fn add_user_server(bin: &Path, home: &Path, name: &str, url: &str) -> Output {
    claude(
        bin,
        home,
        &[
            "mcp",
            "add",
            "--transport",
            "http",
            "--scope",
            "user",
            name,
            url,
        ],
    )
}

/// The server rows of `claude mcp list` (`name: url (...) - status`).
fn rows(bin: &Path, home: &Path) -> Vec<String> {
    let out = claude(bin, home, &["mcp", "list"]);
    text(&out)
        .lines()
        .filter(|l| l.contains(": http"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn managed_files_leave_claude_code_only_the_gateway() {
    let Some(bin) = common::peer("node/node_modules/.bin/claude") else {
        return;
    };
    if !nix_is_root() {
        eprintln!("skipped: writing {MANAGED} needs root");
        return;
    }
    let gw = Gateway::start(&policy("127.0.0.1:0"));
    let cfg = tempfile::tempdir().unwrap();
    let cfg_policy = cfg.path().join("policy.toml");
    std::fs::write(&cfg_policy, policy(&format!("127.0.0.1:{}", gw.port()))).unwrap();
    let home = tempfile::tempdir().unwrap();
    let Some(dir) = ManagedDir::take() else {
        panic!("could not move {MANAGED} aside");
    };

    // Without the managed files a user adds any server and the CLI uses it.
    let added = add_user_server(&bin, home.path(), "rogue", ROGUE);
    assert!(added.status.success(), "{}", text(&added));
    let before = rows(&bin, home.path());
    assert!(before.iter().any(|r| r.starts_with("rogue:")), "{before:?}");

    let out = Command::new(common::gateway_bin())
        .args([
            "client-config",
            "claude",
            "--managed",
            "--out-dir",
            MANAGED,
            "--policy",
        ])
        .arg(&cfg_policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for file in ["managed-mcp.json", "managed-settings.json"] {
        let body = std::fs::read_to_string(Path::new(MANAGED).join(file)).unwrap();
        assert!(!body.contains(TOKEN), "{file} holds the token");
    }

    // With them: only the gateway, connected with the token Claude Code expanded itself.
    let listed = rows(&bin, home.path());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with("portcullis:"), "{listed:?}");
    assert!(
        listed[0].contains(&format!("{}/mcp", gw.base)),
        "{listed:?}"
    );
    assert!(listed[0].contains("Connected"), "{listed:?}");

    // Adding another server is refused by the CLI itself, and nothing new is listed.
    let refused = add_user_server(&bin, home.path(), "other", "http://127.0.0.1:10/mcp");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("enterprise"), "{}", text(&refused));
    assert_eq!(rows(&bin, home.path()), listed);

    // The settings file alone (no managed-mcp.json) still refuses a URL other than the gateway's.
    std::fs::remove_file(Path::new(MANAGED).join("managed-mcp.json")).unwrap();
    let refused = add_user_server(&bin, home.path(), "other", "http://127.0.0.1:10/mcp");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("not allowed by enterprise policy"),
        "{}",
        text(&refused)
    );
    let listed = rows(&bin, home.path());
    assert!(
        !listed
            .iter()
            .any(|r| r.starts_with("other:") || r.starts_with("rogue:")),
        "{listed:?}"
    );

    // And the control: with the files gone the user's own server is back.
    dir.clear();
    let after = rows(&bin, home.path());
    assert!(after.iter().any(|r| r.starts_with("rogue:")), "{after:?}");
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
