//! Helpers shared by the tests of who may change the policy (policy_trust.rs, policy_signed.rs):
//! a policy laid out in a directory of the test's own, an unprivileged user acting on it, a
//! gateway start that must be refused, and the audit records of reloads.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{audit_records, fixture_bin, gateway_bin, Gateway};

/// How long any "eventually" may take on a loaded two-core machine. Not a performance bound.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The unprivileged user the attacker is (nobody/nogroup).
pub const NOBODY: u32 = 65534;

/// A policy serving the fixture server as `fixture__*`; `serial` goes into `[gateway]`.
pub fn policy(serial: Option<u64>, extra: &str) -> String {
    let serial = serial
        .map(|s| format!("serial = {s}\n"))
        .unwrap_or_default();
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nnaming = \"prefix\"\n{serial}\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{}\"\n{extra}",
        fixture_bin().display()
    )
}

/// What the attacker appends: a process server that leaves `marker` behind when it runs (as
/// whoever the gateway runs as).
pub fn pwn(marker: &Path) -> String {
    format!(
        "\n[servers.pwn]\nruntime = \"process\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"id > {}; exec sleep 30\"]\n",
        marker.display()
    )
}

/// The test's directory: `ROOT/conf/policy.toml` (the policy), `ROOT/audit` (the audit log),
/// `ROOT/state`. `ROOT` is a private tempdir made traversable (0755) so that the unprivileged
/// user can reach what the test opens to it.
pub struct Layout {
    pub root: tempfile::TempDir,
}

impl Layout {
    pub fn new() -> Layout {
        let root = tempfile::tempdir().expect("tempdir");
        chmod(root.path(), 0o755);
        std::fs::create_dir(root.path().join("conf")).expect("mkdir conf");
        Layout { root }
    }

    pub fn conf(&self) -> PathBuf {
        self.root.path().join("conf")
    }

    pub fn policy(&self) -> PathBuf {
        self.conf().join("policy.toml")
    }

    pub fn audit(&self) -> PathBuf {
        self.root.path().join("audit")
    }

    pub fn marker(&self) -> PathBuf {
        self.root.path().join("pwned")
    }

    /// Replaces the policy as editors do (new file, rename), as the test's own user (root).
    pub fn write(&self, text: &str) {
        replace(&self.policy(), text.as_bytes());
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "PORTCULLIS_AUDIT_DIR".into(),
                self.audit().display().to_string(),
            ),
            (
                "PORTCULLIS_STATE_DIR".into(),
                self.root.path().join("state").display().to_string(),
            ),
            ("PORTCULLIS_WATCH_INTERVAL".into(), "200ms".into()),
        ]
    }

    /// Starts the gateway on the policy and waits until its servers are ready.
    pub fn start(self, args: &[&str]) -> Gateway {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let path = self.policy();
        let gw = Gateway::launch(self.root, &path, &env, None, args);
        gw.wait_ready(PATIENCE);
        gw
    }

    /// Starts the gateway on the policy expecting a refusal: returns what it printed. Panics
    /// if it starts serving (it is then killed).
    pub fn refused(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(["serve", "--policy"])
            .arg(self.policy())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gateway");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                let out = child.wait_with_output().expect("output");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!out.status.success(), "exit status 0: {text}");
                return text;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "the gateway started on a policy it must refuse:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes `bytes` next to `path` and renames it into place.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `script` with `sh -c` as nobody:nogroup with no supplementary groups; returns whether
/// it succeeded and what it printed.
pub fn as_nobody(script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv (util-linux) runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `policy_reload` records so far: outcome and parsed detail.
pub fn reloads(audit: &Path) -> Vec<(String, Value)> {
    if !audit.exists() {
        return Vec::new();
    }
    audit_records(audit)
        .into_iter()
        .filter(|r| r["kind"] == "policy_reload")
        .map(|r| {
            let detail =
                serde_json::from_str(r["detail"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
            (r["outcome"].as_str().unwrap_or_default().to_owned(), detail)
        })
        .collect()
}

/// Waits until there are `n` policy_reload records; returns the `n`-th.
pub fn nth_reload(gw: &Gateway, audit: &Path, n: usize) -> (String, Value) {
    let start = Instant::now();
    loop {
        let all = reloads(audit);
        if all.len() >= n {
            return all[n - 1].clone();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{n} policy_reload record(s) not written within {PATIENCE:?}: {all:?}\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every kind of audit record so far, in order, with its outcome.
pub fn kinds(audit: &Path) -> Vec<(String, String)> {
    if !audit.exists() {
        return Vec::new();
    }
    audit_records(audit)
        .into_iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
