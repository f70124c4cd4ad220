//! Remote MCP servers the tests run on 127.0.0.1 (the Python SDK's server, server-everything),
//! with a log of every request they received.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{peer, repo_root};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test server process on 127.0.0.1; killed on drop.
pub struct Remote {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
}

impl Remote {
    fn start(
        cmd: Vec<String>,
        env: Vec<(String, String)>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Remote {
        let log = dir.path().join("headers.jsonl");
        let child = spawn(&cmd, &env);
        let r = Remote {
            child,
            port,
            log,
            _dir: dir,
            cmd,
            env,
        };
        r.wait_listening();
        r
    }

    /// `tests/python/servers/remote_server.py` in `mode` (`streamable-http` or `sse`).
    pub fn python(mode: &str) -> Option<Remote> {
        Self::python_with(mode, &[])
    }

    /// Like [`Remote::python`], with the script's options (`--introspect URL`, `--tls CERT KEY`).
    pub fn python_with(mode: &str, options: &[String]) -> Option<Remote> {
        Self::script("remote_server.py", mode, options)
    }

    /// `tests/python/servers/modern_server.py` in `mode` (`modern`, `dual` or `legacy`): a
    /// server of the 2026-07-28 era, alone or beside the 2025 one, or one that predates it.
    pub fn modern(mode: &str) -> Option<Remote> {
        Self::script("modern_server.py", mode, &[])
    }

    /// A script of `tests/python/servers/` taking `MODE PORT LOG [OPTIONS]`.
    fn script(name: &str, mode: &str, options: &[String]) -> Option<Remote> {
        let python = peer("venv/bin/python")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = repo_root().join("tests/python/servers").join(name);
        let log = dir.path().join("headers.jsonl");
        let mut cmd = vec![
            python.display().to_string(),
            script.display().to_string(),
            mode.to_owned(),
            port.to_string(),
            log.display().to_string(),
        ];
        cmd.extend(options.iter().cloned());
        Some(Remote::start(cmd, vec![], port, dir))
    }

    pub fn everything(mode: &str) -> Option<Remote> {
        let js = peer("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let preload = repo_root().join("tests/remote/loopback-only.cjs");
        let cmd = vec![
            "node".to_owned(),
            "--require".to_owned(),
            preload.display().to_string(),
            js.display().to_string(),
            mode.to_owned(),
        ];
        Some(Remote::start(
            cmd,
            vec![("PORT".to_owned(), port.to_string())],
            port,
            dir,
        ))
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "test server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = spawn(&self.cmd, &self.env);
        self.wait_listening();
    }

    /// Every request the server received: method, path, headers (and, with `--introspect`,
    /// `auth`: "ok" or "refused").
    pub fn requests(&self) -> Vec<Value> {
        super::read_jsonl(&self.log)
    }
}

fn spawn(cmd: &[String], env: &[(String, String)]) -> Child {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start test server")
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop();
    }
}
