//! Real fleet parts on loopback for the fleet tests: haproxy and redis-server started and
//! stopped here (a missing one fails under CI=true and skips loudly otherwise).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    let msg = format!("`{name}` is not installed: run `bash tests/setup/install-deps.sh` (apt-get install -y haproxy redis-server)");
    super::skip_or_fail(&msg);
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts on `port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn redis(bin: &Path, port: u16, dir: &Path) -> Proc {
    let child = Command::new(bin)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_port(port, "redis-server");
    Proc(child)
}

pub fn haproxy(bin: &Path, port: u16, backends: &[u16], dir: &Path) -> Proc {
    let shipped = std::fs::read_to_string(super::repo_root().join("deploy/haproxy.cfg"))
        .expect("deploy/haproxy.cfg");
    // The shipped file, with this test's ports and no server lines of its own.
    let mut cfg: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .map(|l| l.replace("127.0.0.1:8811", &format!("127.0.0.1:{port}")) + "\n")
        .collect();
    for (i, p) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server gw{} 127.0.0.1:{p} check\n", i + 1));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    wait_port(port, "haproxy");
    Proc(child)
}
