//! The devcontainer kit brought up with Debian's docker-compose, from the files `portcullis init
//! devcontainer` writes: the workspace image is assembled offline
//! (tests/docker/workspace-image.sh: host Node, git, the real Claude Code CLI from `.peers/`), and
//! a test override runs a placeholder that only holds the network namespace (the real agent
//! and its rules are tested in `tests/workspace_egress.rs`). The gateway service is not
//! started (`--no-deps`). Needs root and the engine; run under the
//! privileged-test lock. No network: the project's network is created by compose and the
//! containers reach nothing outside it in this test.

mod common;

use std::process::{Command, Output};

const IMAGE: &str = "portcullis/workspace:test";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Stack {
    dir: tempfile::TempDir,
    project: String,
}

impl Stack {
    fn compose(&self) -> Command {
        let kit = self.dir.path().join(".devcontainer");
        let mut c = Command::new("docker-compose");
        c.arg("-f")
            .arg(kit.join("compose.yaml"))
            .arg("-f")
            .arg(self.dir.path().join("override.yaml"))
            .args(["--project-name", &self.project])
            .env("PORTCULLIS_POLICY_PUBKEY", "00".repeat(32))
            .env("PORTCULLIS_TOKEN", "pcs_not-a-real-token")
            .env("PORTCULLIS_TLS_DIR", self.dir.path().join("tls"));
        c
    }

    fn exec(&self, user: &str, cmd: &str) -> Output {
        self.compose()
            .args(["exec", "-T", "-u", user, "workspace", "sh", "-c", cmd])
            .output()
            .unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--timeout", "1"])
            .output();
    }
}

/// The engine (started by the harness when none answers: a socket file alone may be what a
/// stopped dockerd left), docker-compose and the Claude Code CLI from `.peers`. Under `CI=true`
/// a missing one fails the test instead of skipping it.
fn engine_ready() -> bool {
    if common::docker::engine().is_none() {
        return false;
    }
    if common::compose::docker_compose_present()
        && common::peer("node/node_modules/.bin/claude").is_some()
    {
        return true;
    }
    common::skip_or_fail("needs docker-compose and the Claude Code CLI in .peers: run `bash tests/setup/install-deps.sh all`");
    false
}

#[test]
fn the_workspace_runs_claude_as_non_root_and_cannot_touch_the_firewall_even_as_root() {
    if !engine_ready() {
        return;
    }
    let built = Command::new("bash")
        .arg(common::repo_root().join("tests/docker/workspace-image.sh"))
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::gateway_bin())
        .args(["init", "devcontainer"])
        .arg(dir.path().join(".devcontainer"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/ca.crt"), "").unwrap();
    // The placeholder agent: the workspace image's `sleep`, with the agent's own settings
    // (root, NET_ADMIN only) from the kit's compose file. Its healthcheck always passes: the
    // kit's asks the real agent whether its table is verified, and the workspace waits for it
    // (tests/workspace_egress.rs runs the real agent).
    std::fs::write(
        dir.path().join("override.yaml"),
        format!(
            "services:\n  egress-agent:\n    image: {IMAGE}\n    entrypoint: [\"sleep\"]\n    command: [\"infinity\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"exit 0\"]\n      interval: 1s\n  workspace:\n    image: {IMAGE}\n"
        ),
    )
    .unwrap();
    let stack = Stack {
        dir,
        project: format!("pckit{}", std::process::id()),
    };
    let up = stack
        .compose()
        .args([
            "up",
            "-d",
            "--no-deps",
            "--no-build",
            "egress-agent",
            "workspace",
        ])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));

    // Claude Code runs as the non-root user the kit names.
    let v = stack.exec("node", "claude --version");
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("(Claude Code)"), "{}", text(&v));
    let v = stack
        .compose()
        .args(["exec", "-T", "workspace", "cat", "/proc/self/status"])
        .output()
        .unwrap();
    let status = text(&v);
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t1000\t")),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");

    // Even root inside the workspace cannot change the namespace's rules: no capability.
    for cmd in [
        "nft flush ruleset",
        "nft add table inet mine",
        "iptables -F",
    ] {
        let o = stack.exec("0", cmd);
        assert!(
            !o.status.success(),
            "`{cmd}` succeeded as root in the workspace: {}",
            text(&o)
        );
        let t = text(&o);
        assert!(
            t.contains("Operation not permitted") || t.contains("Permission denied"),
            "`{cmd}`: {t}"
        );
    }
    // The control: the same command works in the agent that owns the namespace (NET_ADMIN),
    // so the refusal above is the missing capability, not a broken binary.
    let o = stack
        .compose()
        .args([
            "exec",
            "-T",
            "-u",
            "0",
            "egress-agent",
            "nft",
            "list",
            "ruleset",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // And the workspace really has the agent's network namespace, and no added capability.
    let ws = stack
        .compose()
        .args(["ps", "-q", "workspace"])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&ws.stdout).trim().to_owned();
    let mode = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}} {{.HostConfig.CapAdd}} {{.HostConfig.Privileged}}",
            &id,
        ])
        .output()
        .unwrap();
    let mode = text(&mode);
    assert!(mode.starts_with("container:"), "{mode}");
    assert!(
        mode.contains(" [] false") || mode.contains(" <nil> false"),
        "{mode}"
    );
}
