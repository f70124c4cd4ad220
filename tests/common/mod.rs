//! Shared test harness: start the real gateway binary on a policy, find MCP peers.
#![allow(dead_code)]

pub mod client;
pub mod compose;
pub mod denials;
pub mod docker;
pub mod fleet;
pub mod hostlab;
pub mod kit;
pub mod lock;
pub mod modern;
pub mod netlab;
pub mod remote;
pub mod rest;
pub mod sidecar;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The gateway binary under test: this build's, or `PORTCULLIS_BIN` (as for the Python tests),
/// which runs a test against another build, such as the one before a fix.
pub fn gateway_bin() -> PathBuf {
    std::env::var_os("PORTCULLIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")))
}

/// A count from the environment variable `name` (benches' knobs), else `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `token_sha256` a policy names for bearer token `token`.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn bench_echo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis-bench-echo"))
}

pub fn fixture_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis-fixture-server"))
}

/// A finished command's stdout and stderr, as one text for assertions and failure messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A peer installed by `make test` into `.peers/`. Missing peers fail under CI and skip loudly
/// otherwise (returns `None`).
pub fn peer(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join(".peers").join(rel);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "MCP peer `{}` is missing: run `make test` (or `bash tests/setup/install-deps.sh peers`)",
        p.display()
    );
    skip_or_fail(&msg);
    None
}

/// A test that cannot run here: under `CI=true` (where every capability and peer is installed)
/// that is a failure; locally it skips with a message nobody can miss.
pub fn skip_or_fail(msg: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPING: {msg} !!!!!!!!\n");
}

/// A running gateway; killed on drop. Its stderr is collected for assertions.
pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub url: String,
    pub stderr: Arc<Mutex<String>>,
    /// Every line the gateway printed on stdout (its banner).
    pub stdout: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `portcullis serve` on a policy (TOML text; `{fixture}` is replaced by the fixture
    /// server's path, `{peers}` by the peers folder) on a free loopback port.
    pub fn start(policy: &str) -> Gateway {
        Self::start_with(policy, &[])
    }

    pub fn start_with(policy: &str, env: &[(&str, &str)]) -> Gateway {
        let gw = Self::spawn(policy, env);
        gw.wait_ready(Duration::from_secs(60));
        gw
    }

    /// Starts the gateway without waiting for `/ready` (for listeners the harness cannot
    /// reach on its own, such as mTLS).
    pub fn spawn(policy: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn_as(policy, env, None)
    }

    /// [`Gateway::spawn`] as another user (`uid`, e.g. 65534 to see what happens without
    /// root); the policy's folder is then made readable for it.
    pub fn spawn_as(policy: &str, env: &[(&str, &str)], uid: Option<u32>) -> Gateway {
        Self::spawn_full(&gateway_bin(), policy, env, uid, None, &[])
    }

    /// [`Gateway::start_with`] with another gateway binary (a benchmark's baseline build).
    pub fn start_bin(bin: &Path, policy: &str, env: &[(&str, &str)]) -> Gateway {
        let gw = Self::spawn_full(bin, policy, env, None, None, &[]);
        gw.wait_ready(Duration::from_secs(60));
        gw
    }

    /// [`Gateway::spawn`] with the gateway in the network namespace at `netns` (only its
    /// network namespace changes: it shares this process's mounts, so `/run/netns` names it
    /// makes are visible here) and extra `serve` arguments. Its listener is then reachable only
    /// from inside that namespace: wait with [`Gateway::wait_ready_in`].
    pub fn spawn_in(policy: &str, env: &[(&str, &str)], netns: &Path, args: &[&str]) -> Gateway {
        Self::spawn_full(&gateway_bin(), policy, env, None, Some(netns), args)
    }

    /// Like [`Gateway::spawn_in`], but for a start that is expected to fail: the exit status
    /// and stderr of a gateway that exits (or `None` if it is still running after `limit`).
    pub fn run_in(
        policy: &str,
        env: &[(&str, &str)],
        netns: &Path,
        args: &[&str],
        limit: Duration,
    ) -> Option<(std::process::ExitStatus, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Self::write_policy_in(dir.path(), policy);
        let mut cmd = Self::command(&gateway_bin(), &path, env, None, Some(netns), args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start gateway");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Some((status, err));
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_policy_in(dir: &Path, policy: &str) -> PathBuf {
        if policy.contains("{shared}") {
            shared_dir(dir);
        }
        let text = policy
            .replace("{fixture}", &fixture_bin().display().to_string())
            .replace("{peers}", &repo_root().join(".peers").display().to_string())
            .replace("{shared}", &dir.join("shared").display().to_string())
            .replace("{tmp}", &dir.display().to_string());
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).expect("write policy");
        path
    }

    fn command(
        bin: &Path,
        path: &Path,
        env: &[(&str, &str)],
        uid: Option<u32>,
        netns: Option<&Path>,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(bin);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        if let Some(ns) = netns {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let file = std::fs::File::open(ns).expect("open the network namespace");
            // SAFETY: only setns(2) between fork and exec; the file stays open (it is moved
            // into the closure, which the Command keeps until spawn).
            unsafe {
                cmd.pre_exec(move || {
                    if nix::libc::setns(file.as_raw_fd(), nix::libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["serve", "--policy"])
            .arg(path)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info,portcullis=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn_full(
        bin: &Path,
        policy: &str,
        env: &[(&str, &str)],
        uid: Option<u32>,
        netns: Option<&Path>,
        args: &[&str],
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Self::write_policy_in(dir.path(), policy);
        if uid.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod policy dir");
        }
        let cmd = Self::command(bin, &path, env, uid, netns, args);
        Self::started(cmd, dir)
    }

    /// Starts `portcullis serve --policy PATH ARGS...` on a policy the caller prepared in `dir`
    /// (kept until the gateway is dropped); waits for the listening banner, not for `/ready`.
    pub fn launch(
        dir: tempfile::TempDir,
        path: &Path,
        env: &[(&str, &str)],
        uid: Option<u32>,
        args: &[&str],
    ) -> Gateway {
        if uid.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod policy dir");
        }
        let cmd = Self::command(&gateway_bin(), path, env, uid, None, args);
        Self::started(cmd, dir)
    }

    /// Spawns `cmd` and waits for the listening banner; `dir` lives as long as the gateway.
    fn started(mut cmd: Command, dir: tempfile::TempDir) -> Gateway {
        let mut child = cmd.spawn().expect("start gateway");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let s = String::from_utf8_lossy(&buf[..n]).to_string();
                eprint!("{s}");
                sink.lock().unwrap().push_str(&s);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let out_lines = Arc::new(Mutex::new(Vec::new()));
        let out_sink = out_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("Portcullis is listening on ") {
                    let _ = tx.send(rest.trim().to_owned());
                }
                out_sink.lock().unwrap().push(line);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("gateway did not start; stderr:\n{}", stderr.lock().unwrap())
            });
        let base = url.trim_end_matches("/mcp").to_owned();
        Gateway {
            child,
            base,
            url,
            stderr,
            stdout: out_lines,
            _dir: dir,
        }
    }

    /// Polls `/ready` (30 s at most) until its body mentions `needle`; returns the body.
    pub fn ready_says(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = http_get(&format!("{}/ready", self.base)).unwrap_or((0, String::new()));
            if body.contains(needle) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/ready never said `{needle}`: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `/ready` says every server is up.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        let ready = |base: &str| -> (u16, String) {
            if base.starts_with("https://") {
                // Readiness only; certificate checks are the TLS tests' business.
                let out = Command::new("curl")
                    .args(["-sk", "-o", "-", "-w", "\n%{http_code}"])
                    .arg(format!("{base}/ready"))
                    .output();
                let text = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
                (code.trim().parse().unwrap_or(0), body.to_owned())
            } else {
                http_get(&format!("{base}/ready")).unwrap_or((0, String::new()))
            }
        };
        loop {
            let (status, body) = ready(&self.base);
            if status == 200 {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "gateway not ready after {limit:?}: {body}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Gateway::wait_ready`] for a gateway in the network namespace at `netns`.
    pub fn wait_ready_in(&self, netns: &Path, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let url = format!("{}/ready", self.base);
        loop {
            let u = url.clone();
            let (status, body) = portcullis::egress::netns::in_netns(Some(netns), move || {
                Ok(http_get(&u).unwrap_or((0, String::new())))
            })
            .unwrap_or((0, String::new()));
            if status == 200 {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("not ready after {limit:?}: {body}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the gateway with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops the gateway gracefully with SIGTERM (what an orchestrator sends) and waits for it
    /// to exit, at most `limit`; returns its exit status. Panics if it does not exit in time
    /// (`Drop` then kills it).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child.id()).expect("pid");
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return status;
        }
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "gateway still running {limit:?} after SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The folder holding the policy file (`{tmp}`); the default audit log lives below it.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir().join("policy.toml")
    }

    /// Replaces the policy file the way editors do: write a new file, rename it over the old
    /// one. Placeholders as in [`Gateway::start`].
    pub fn write_policy(&self, policy: &str) {
        let text = policy
            .replace("{fixture}", &fixture_bin().display().to_string())
            .replace("{peers}", &repo_root().join(".peers").display().to_string())
            .replace("{shared}", &self.dir().join("shared").display().to_string())
            .replace("{tmp}", &self.dir().display().to_string());
        let tmp = self.dir().join(".policy.toml.new");
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policy_path()).expect("replace policy");
    }

    /// Sends SIGHUP (reload the policy).
    pub fn sighup(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child.id()).expect("pid");
        kill(Pid::from_raw(pid), Signal::SIGHUP).expect("SIGHUP");
    }

    /// Waits until `needle` occurs at least `times` times in the gateway's stderr.
    pub fn wait_for_log(&self, needle: &str, times: usize, limit: Duration) {
        let start = Instant::now();
        while self.stderr().matches(needle).count() < times {
            if start.elapsed() > limit {
                panic!(
                    "`{needle}` not logged {times} time(s) within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{shared}` in a policy: `DIR/shared`, a folder that confined process servers (another user,
/// a private `/tmp`) can write when the policy mounts it, e.g. for a test server's log:
/// `mounts = [{ source = "{shared}", target = "{shared}", read_only = false }]`. The gateway's
/// folder becomes traversable (not listable) by others for it.
fn shared_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).expect("create the shared folder");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

/// The named checks of a test that reports every case before it fails: `[PASS]`/`[FAIL]` lines
/// as it goes, a table at the end, one assertion listing every failed case.
pub struct Cases(pub Vec<(String, bool, String)>);

impl Cases {
    pub fn check(&mut self, case: &str, ok: bool, detail: &str) {
        eprintln!("[{}] {case}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.0.push((case.to_owned(), ok, detail.to_owned()));
    }

    pub fn result(&mut self, case: &str, r: Result<(), String>) {
        match r {
            Ok(()) => self.check(case, true, ""),
            Err(e) => self.check(case, false, &e),
        }
    }

    pub fn finish(self) {
        eprintln!("\n| case | outcome |\n|---|---|");
        for (case, ok, _) in &self.0 {
            eprintln!("| {case} | {} |", if *ok { "pass" } else { "FAIL" });
        }
        let failed: Vec<_> = self.0.iter().filter(|(_, ok, _)| !ok).collect();
        assert!(failed.is_empty(), "failed cases: {failed:#?}");
    }
}

/// The egress table protection in force, from a `/metrics` text: `owner`, `watch` or empty.
pub fn table_protection(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_egress_table_protection{") && l.ends_with(" 1"))
        .find_map(|l| {
            l.split("mode=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// A JSON Lines file as values (none when it does not exist yet).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Minimal blocking GET for readiness polling (keeps the harness free of async).
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Minimal blocking POST with an empty body; returns the status.
pub fn http_post(url: &str) -> u16 {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let Ok(mut s) = std::net::TcpStream::connect(hostport) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn fixture_policy() -> String {
    r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{fixture}"
"#
    .to_owned()
}

/// Every record of the audit log in `dir`, in order. A line still being written (the gateway may
/// be running) is skipped; `audit_verify` is what judges the log.
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `portcullis audit verify DIR`: whether it passed, and what it printed.
pub fn audit_verify(dir: &Path) -> (bool, String) {
    audit_verify_with(dir, &[])
}

/// `portcullis audit verify ARGS... DIR` (e.g. `--pubkey`, `--witness`): whether it passed,
/// and what it printed.
pub fn audit_verify_with(dir: &Path, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(gateway_bin())
        .args(["audit", "verify"])
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Live (non-zombie) child processes of `parent`, read from /proc.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
            && fields.first() != Some(&"Z")
        {
            out.push(pid);
        }
    }
    out
}

/// Resident memory of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// After a flood from one server: the gateway (`pid`) grew by less than 64 MiB over
/// `rss_before` KiB, and the neighbour's median call (`calm__echo`, in ms) during the flood stayed
/// within a loose bound of its quiet median, a cost no person at a client would notice.
pub fn flood_was_harmless(pid: u32, rss_before: u64, quiet: f64, during: f64) {
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        during < (quiet * 20.0).max(quiet + 100.0),
        "calm__echo median {during:.2} ms during the flood, {quiet:.2} ms before"
    );
}
