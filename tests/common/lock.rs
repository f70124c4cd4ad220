//! A lock file over `tests/python/servers/rug_pull.py`, shared by the Rust lock tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{gateway_bin, repo_root};

/// A policy with one server `rp` (rug_pull.py, which changes `add` and offers `exfiltrate`
/// after its first tool call) under the lock file `lock` in `mode`.
pub fn rug_pull_policy(lock: &Path, mode: &str) -> String {
    let script = repo_root().join("tests/python/servers/rug_pull.py");
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nlock = \"{}\"\nlock_mode = \"{mode}\"\n\n[servers.rp]\nruntime = \"process\"\ncommand = \"python3\"\nargs = [\"{}\"]\nenv = {{ RUG_PULL_AFTER = \"1\" }}\n",
        lock.display(),
        script.display()
    )
}

/// Writes `text` as `dir/policy.toml` and runs `portcullis tools lock` on it. `tools lock`
/// lists without calling tools, so the lock holds rug_pull.py's definitions before the pull.
pub fn write_lock(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(gateway_bin())
        .args(["tools", "lock", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}
