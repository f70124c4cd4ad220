//! Processes the benchmark starts and watches: CPU time and resident memory of a process and
//! its descendants (from /proc), loopback ports, and the echo upstream.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kernel clock ticks per second for /proc/PID/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// `(ppid, utime + stime ticks)` of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, _)) = stat(p) {
                    all.push((p, ppid));
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// CPU time (user + system) used so far by `pid` and its descendants.
pub fn tree_cpu(pid: u32) -> Duration {
    let ticks: u64 = tree(pid)
        .into_iter()
        .filter_map(|p| stat(p).map(|(_, t)| t))
        .sum();
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC)
}

/// CPU time used so far by `pid` alone (all its threads, not its children).
pub fn cpu(pid: u32) -> Duration {
    let ticks = stat(pid).map_or(0, |(_, t)| t);
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC)
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A child process killed (with its process group) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// Starts `cmd` in its own process group, output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited ({st})", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_port(p: &mut Proc, port: u16, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        p.alive()?;
        if start.elapsed() > limit {
            return Err(format!(
                "{} did not listen on 127.0.0.1:{port} within {}s",
                p.name,
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The benchmark's upstream: `portcullis-bench-echo --http` on a free loopback port.
pub struct Echo {
    pub proc: Proc,
    pub url: String,
}

pub fn echo_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_portcullis-bench-echo"))
}

impl Echo {
    pub fn start(dir: &Path) -> Result<Echo, String> {
        let port = free_port();
        let mut cmd = Command::new(echo_bin());
        cmd.args(["--http", &format!("127.0.0.1:{port}")]);
        let mut proc = Proc::spawn("echo upstream", cmd, &dir.join("echo.log"))?;
        wait_port(&mut proc, port, Duration::from_secs(10))?;
        Ok(Echo {
            proc,
            url: format!("http://127.0.0.1:{port}/mcp"),
        })
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let Ok(f) = std::fs::File::open(log) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
