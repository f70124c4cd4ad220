//! The journald audit sink against a real `systemd-journald` (issue 24, part 2).
//!
//! The journal runs in a mount namespace the test makes (`unshare --mount`): a fresh tmpfs on
//! `/run` there holds its sockets (`/run/systemd/journal/socket`, the path every journald client
//! uses), so nothing clashes with the host, and its files go to this test's folder through a
//! bind mount, where `journalctl --directory` reads them. The gateway runs in the same namespace
//! (`nsenter`) with a `type = "journald"` sink; its records are read back from the journal and
//! compared field by field with the audit log, across a restart of journald.
//!
//! Privileged (root, mount namespaces):
//! `flock /tmp/portcullis-priv.lock cargo test --test audit_journald`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::{audit_records, skip_or_fail, Gateway};
use serde_json::{json, Value};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Sets up the namespace, then holds it (bounded: the test ends long before).
const HOLDER: &str = r#"
set -eu
dir=$1
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d /run/log/journal
mount --bind "$dir/journal" /run/log/journal
if [ -d /var/log/journal ]; then mount --bind "$dir/var" /var/log/journal; fi
cat > /run/systemd/journald.conf.d/test.conf <<CONF
[Journal]
Storage=volatile
ReadKMsg=no
RateLimitIntervalSec=0
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
ForwardToKMsg=no
CONF
touch "$dir/ready"
exec sleep 900
"#;

/// A mount namespace with a journal of its own.
struct Journal {
    dir: PathBuf,
    holder: Child,
    journald: Option<Child>,
    starts: usize,
}

impl Journal {
    fn new(dir: &Path) -> Option<Journal> {
        for tool in ["unshare", "nsenter", "journalctl"] {
            if Command::new(tool).arg("--version").output().is_err() {
                skip_or_fail(&format!("`{tool}` is missing (util-linux, systemd)"));
                return None;
            }
        }
        if !Path::new(JOURNALD).exists() {
            skip_or_fail(&format!("{JOURNALD} is missing: apt-get install systemd"));
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            skip_or_fail("the journald test needs root (mount namespaces)");
            return None;
        }
        for sub in ["journal", "var"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                HOLDER,
                "holder",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            holder,
            journald: None,
            starts: 0,
        };
        let start = Instant::now();
        while !dir.join("ready").exists() {
            if let Ok(Some(status)) = journal.holder.try_wait() {
                panic!("setting up the mount namespace failed ({status})");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "namespace not ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(journal)
    }

    /// Runs a command inside the namespace.
    fn nsenter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .map(str::to_owned)
            .to_vec()
    }

    fn start_journald(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("journald-{}.log", self.starts)))
            .expect("log file");
        let args = self.nsenter();
        let child = Command::new(&args[0])
            .args(&args[1..])
            .arg(JOURNALD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start journald");
        self.journald = Some(child);
        self.starts += 1;
        // journald says so in its own journal when it is up.
        let started = |j: &Journal| {
            j.entries()
                .iter()
                .filter(|e| e["MESSAGE"] == "Journal started")
                .count()
        };
        let start = Instant::now();
        while started(self) < self.starts {
            if let Some(Ok(Some(status))) = self.journald.as_mut().map(Child::try_wait) {
                panic!(
                    "systemd-journald exited ({status}): {}",
                    std::fs::read_to_string(
                        self.dir.join(format!("journald-{}.log", self.starts - 1))
                    )
                    .unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "journald did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops journald the way `systemctl restart` does (SIGTERM) and waits for it.
    fn stop_journald(&mut self) {
        if let Some(mut j) = self.journald.take() {
            let pid = nix::unistd::Pid::from_raw(j.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = j.wait();
        }
    }

    /// Every entry of the journal, as `journalctl -o json` gives it.
    fn entries(&self) -> Vec<Value> {
        let Some(machine) = std::fs::read_dir(self.dir.join("journal"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
        else {
            return Vec::new();
        };
        let out = Command::new("journalctl")
            .arg("--directory")
            .arg(machine.path())
            .args(["--output", "json", "--no-pager", "--quiet"])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit entries, by (log id, seq).
    fn audit_entries(&self) -> BTreeMap<(String, u64), Vec<Value>> {
        let mut out: BTreeMap<(String, u64), Vec<Value>> = BTreeMap::new();
        for e in self.entries() {
            if e["SYSLOG_IDENTIFIER"] != "portcullis-audit" {
                continue;
            }
            let id = e["AUDIT_LOG_ID"].as_str().unwrap_or_default().to_owned();
            let seq = e["AUDIT_SEQ"].as_str().and_then(|s| s.parse().ok());
            out.entry((id, seq.unwrap_or(u64::MAX)))
                .or_default()
                .push(e);
        }
        out
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop_journald();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// (log id, seq) of every record in the audit log.
fn logged(dir: &Path) -> BTreeSet<(String, u64)> {
    audit_records(dir)
        .iter()
        .map(|r| {
            (
                r["log_id"].as_str().expect("log_id").to_owned(),
                r["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

/// Waits until the journal holds every record of the audit log; returns what is missing.
fn wait_delivered(journal: &Journal, audit: &Path, limit: Duration) -> Vec<(String, u64)> {
    let start = Instant::now();
    loop {
        let have = journal.audit_entries();
        let missing: Vec<(String, u64)> = logged(audit)
            .into_iter()
            .filter(|k| !have.contains_key(k))
            .collect();
        if missing.is_empty() || start.elapsed() > limit {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn calls(client: &mut Mcp, n: usize, tag: &str) {
    for i in 0..n {
        let text = format!("{tag} {i}");
        let r = client.call_tool("echo", json!({ "text": text })).await;
        assert_eq!(tool_text(&r), text, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_a_real_journal_with_their_fields_and_survive_a_journald_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut journal) = Journal::new(&dir.path().join("ns")) else {
        return;
    };
    journal.start_journald();
    let gw_dir = tempfile::tempdir().expect("tempdir");
    let audit = gw_dir.path().join("audit");
    let policy = format!(
        r#"
[servers.fixture]
runtime = "process"
command = "{{fixture}}"

[audit]
dir = "{audit}"

[[audit.sinks]]
type = "journald"
name = "journal"
"#,
        audit = audit.display()
    );
    // The gateway runs in the journal's mount namespace (where its socket is the test's
    // journald): a wrapper script stands in for the gateway binary.
    let wrapper = gw_dir.path().join("portcullis-in-journal-ns");
    let mut script = String::from("#!/bin/sh\nexec");
    for arg in journal.nsenter() {
        script.push_str(&format!(" '{arg}'"));
    }
    script.push_str(&format!(" '{}' \"$@\"\n", common::gateway_bin().display()));
    std::fs::write(&wrapper, script).expect("write the wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
    }
    let gw = Gateway::start_bin(&wrapper, &policy, &[]);
    let mut client = Mcp::new(&gw.url);
    client.initialize(LATEST).await;
    calls(&mut client, 10, "before").await;

    let missing = wait_delivered(&journal, &audit, Duration::from_secs(30));
    if !missing.is_empty() {
        let sample: Vec<Value> = journal
            .entries()
            .into_iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "portcullis-audit")
            .take(1)
            .collect();
        panic!(
            "{} of {} records are not in the journal under AUDIT_LOG_ID/AUDIT_SEQ; an entry the sink wrote: {sample:#?}",
            missing.len(),
            logged(&audit).len()
        );
    }
    // Field by field: the documented fields, and the record itself as MESSAGE.
    let entries = journal.audit_entries();
    for record in audit_records(&audit) {
        let key = (
            record["log_id"].as_str().unwrap().to_owned(),
            record["seq"].as_u64().unwrap(),
        );
        let e = &entries[&key][0];
        assert_eq!(e["AUDIT_LOG_ID"], record["log_id"], "{e}");
        assert_eq!(e["AUDIT_SEQ"], record["seq"].to_string(), "{e}");
        assert_eq!(e["AUDIT_KIND"], record["kind"], "{e}");
        let message: Value = serde_json::from_str(e["MESSAGE"].as_str().expect("MESSAGE text"))
            .unwrap_or_else(|err| panic!("MESSAGE is not the record ({err}): {e}"));
        assert_eq!(message, record, "{e}");
    }

    // journald restarts while records keep coming: the sink resends from its cursor.
    journal.stop_journald();
    calls(&mut client, 10, "while journald is down").await;
    // The sink polls every 250 ms: let it try (and fail) several times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    journal.start_journald();
    calls(&mut client, 5, "after").await;
    let missing = wait_delivered(&journal, &audit, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "{} of {} records lost across the journald restart: {missing:?}",
        missing.len(),
        logged(&audit).len()
    );
    assert!(
        audit.join("cursors/journal.json").exists(),
        "the sink keeps its cursor"
    );
}
