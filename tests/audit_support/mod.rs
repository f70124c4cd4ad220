//! Helpers shared by the audit tests: write logs with the library, run the real binary.
#![allow(dead_code)]

pub mod receiver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis::audit::{keys, AuditConfig, AuditEvent, AuditLog, Kind, Outcome};
use portcullis::policy::FsyncMode;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn config(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.fsync = FsyncMode::None;
    c.checkpoint_every = 50;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

/// A key pair written by the real `audit keygen`; returns (private, public) paths.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(name);
    let o = Command::new(bin())
        .args(["audit", "keygen", "--out"])
        .arg(&out)
        .output()
        .expect("run keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (out.clone(), keys::pub_path(&out))
}

pub fn event(i: u64) -> AuditEvent {
    AuditEvent::new(if i % 2 == 0 { Kind::Call } else { Kind::Result })
        .client(format!("client-{}", i % 3))
        .session(format!("sess-{}", i % 7))
        .server("github")
        .tool("list_prs")
        .method("tools/call")
        .arguments(&format!("{{\"n\":{i}}}"))
        .outcome(Outcome::Ok)
        .latency_us(1000 + i)
        .bytes_in(100)
        .bytes_out(2000)
}

/// Writes `n` events with `conc` concurrent appenders, then shuts down cleanly.
pub fn write(cfg: &AuditConfig, key: &Path, n: u64, conc: u64) {
    let key = keys::read_signing(key).expect("key");
    rt().block_on(async {
        let log = AuditLog::open(cfg, Some(key)).expect("open");
        let mut tasks = Vec::new();
        for t in 0..conc {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    log.append(event(i)).await.expect("append");
                    i += conc;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        log.shutdown().await.expect("shutdown");
    });
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn portcullis(args: &[&str], dir: &Path) -> Out {
    let o = Command::new(bin())
        .args(args)
        .arg(dir)
        .output()
        .expect("run portcullis");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn verify(dir: &Path, pubkey: &Path) -> Out {
    let pk = pubkey.display().to_string();
    portcullis(&["audit", "verify", "--pubkey", &pk], dir)
}

pub fn segment(dir: &Path, i: u64) -> PathBuf {
    dir.join(format!("audit-{i:06}.jsonl"))
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read segment")
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).expect("write segment");
}
