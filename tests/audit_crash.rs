//! kill -9 a writer process under load, many times: every append that was acknowledged has its
//! record on disk afterwards, recovery continues the chain, and `audit verify` passes.

mod audit_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_support::*;
use portcullis::audit::{AuditEvent, AuditLog, Kind};
use portcullis::policy::FsyncMode;

const CHILD_ENV: &str = "PORTCULLIS_AUDIT_CRASH_DIR";
/// Set: the writer rotates its checkpoint key every this many milliseconds.
const EPOCH_ENV: &str = "PORTCULLIS_AUDIT_CRASH_EPOCH_MS";
/// Set: retention archives sealed segments into this directory as fast as it can.
const ARCHIVE_ENV: &str = "PORTCULLIS_AUDIT_CRASH_ARCHIVE";

fn child_config(dir: &std::path::Path) -> portcullis::audit::AuditConfig {
    let mut cfg = config(dir);
    cfg.key_epoch = std::env::var(EPOCH_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    cfg.retention = std::env::var(ARCHIVE_ENV).ok().map(retention_into);
    cfg
}

fn retention_into(archive: String) -> portcullis::audit::retention::Retention {
    portcullis::audit::retention::Retention {
        max_age: None,
        max_bytes: Some(96 << 10),
        archive_dir: Some(archive.into()),
        sinks: Vec::new(),
        check_every: Duration::from_millis(10),
    }
}

/// Not a test on its own: the writer process the crash test starts (and kills).
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut cfg = child_config(std::path::Path::new(&dir));
    cfg.fsync = FsyncMode::Group;
    cfg.checkpoint_every = 97;
    cfg.max_segment_bytes = 64 << 10;
    rt().block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let log = log.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let seq = log.append(event(t * 1_000_000 + i)).await.expect("append");
                    // Printed only after append resolved: this is "the client got its response".
                    use std::io::Write;
                    let mut o = out.lock().expect("lock");
                    let _ = writeln!(o, "ACK {seq}");
                    let _ = o.flush();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn random_ms(lo: u64, hi: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("random");
    lo + u64::from_le_bytes(b) % (hi - lo)
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    kill_rounds(&dir, 8, (5, 300), None);
}

/// The same with the checkpoint key rotating every second: kills land before, during and after
/// rotations, and every restart continues a log that verifies against its first public key.
#[test]
fn kill_9_across_key_rotations_keeps_the_log_verifiable_with_the_first_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    kill_rounds(&dir, 6, (300, 2000), Some(1000));
    let rotations = (1..)
        .map(|i| segment(&dir, i))
        .take_while(|p| p.exists())
        .flat_map(|p| lines(&p))
        .filter(|l| l.contains(r#""kind":"key_rotation""#))
        .count();
    assert!(rotations >= 3, "only {rotations} key rotations happened");
}

/// `rounds` times: start a writer, kill -9 it after `kill_after_ms` (random in the range) once
/// it is acknowledging, reopen and verify. Then every acknowledged record must be on disk.
fn kill_rounds(
    dir: &std::path::Path,
    rounds: u32,
    kill_after_ms: (u64, u64),
    epoch_ms: Option<u64>,
) {
    kill_rounds_with(dir, rounds, kill_after_ms, epoch_ms, None);
}

/// Retention archiving segments as fast as the writer seals them, killed at random moments:
/// every acknowledged record is on disk or in the archive, and the log verifies every time.
#[test]
fn kill_9_during_retention_loses_nothing_and_the_log_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let archive = tmp.path().join("archive");
    kill_rounds_with(&dir, 6, (100, 1200), None, Some(&archive));
    let archived = std::fs::read_dir(&archive).map(|d| d.count()).unwrap_or(0);
    assert!(archived >= 3, "only {archived} segments were archived");
}

fn kill_rounds_with(
    dir: &std::path::Path,
    rounds: u32,
    kill_after_ms: (u64, u64),
    epoch_ms: Option<u64>,
    archive: Option<&std::path::Path>,
) {
    let me = std::env::current_exe().expect("exe");
    let mut acked_all: BTreeSet<u64> = BTreeSet::new();
    for round in 0..rounds {
        let mut cmd = Command::new(&me);
        if let Some(ms) = epoch_ms {
            cmd.env(EPOCH_ENV, ms.to_string());
        }
        if let Some(a) = archive {
            cmd.env(ARCHIVE_ENV, a);
        }
        let mut child = cmd
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let acked = Arc::new(Mutex::new(Vec::new()));
        let a2 = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("ACK ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    a2.lock().expect("lock").push(n);
                }
            }
        });
        // Wait for the writer to be under way, then kill it at a random moment.
        let start = std::time::Instant::now();
        while acked.lock().expect("lock").is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(random_ms(
            kill_after_ms.0,
            kill_after_ms.1,
        )));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let _ = reader.join();
        let acked = std::mem::take(&mut *acked.lock().expect("lock"));
        assert!(
            !acked.is_empty(),
            "round {round}: the writer acknowledged nothing"
        );
        acked_all.extend(acked);

        // Restart: recovery runs, the chain continues.
        let mut reopen = config(dir);
        reopen.key_epoch = epoch_ms.map(Duration::from_millis);
        reopen.retention = archive.map(|a| retention_into(a.display().to_string()));
        rt().block_on(async {
            let log = AuditLog::open(&reopen, None).expect("reopen after kill -9");
            log.append(AuditEvent::new(Kind::GatewayStart).detail(format!("round {round}")))
                .await
                .expect("append after recovery");
            log.shutdown().await.expect("shutdown");
        });
        // The first key, as an auditor holds it (the generated key's .pub is never rewritten).
        let first = portcullis::audit::keys::pub_path(&dir.join("signing.key"));
        let pk = first.display().to_string();
        let r = portcullis(&["audit", "verify", "--pubkey", &pk], dir);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
    }
    let mut on_disk = BTreeSet::new();
    let mut recoveries = 0;
    let mut texts: Vec<String> = portcullis::audit::segment::list(dir)
        .expect("list")
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).expect("read segment"))
        .collect();
    // What retention archived counts: it was moved, not lost.
    if let Some(a) = archive {
        for e in std::fs::read_dir(a).into_iter().flatten().flatten() {
            let mut t = String::new();
            if e.path().extension().is_some_and(|x| x == "gz") {
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(e.path()).expect("gz")),
                    &mut t,
                )
                .expect("gunzip");
                texts.push(t);
            }
        }
    }
    for text in &texts {
        for l in text.lines().filter(|l| !l.starts_with('\0')) {
            let l = l.trim_end_matches('\0');
            if l.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            if v["kind"] == "call" || v["kind"] == "result" {
                on_disk.insert(v["seq"].as_u64().expect("seq"));
            }
            if v["kind"] == "recovery" {
                recoveries += 1;
            }
        }
    }
    eprintln!(
        "{} acknowledged appends over {rounds} kills, {} call/result records on disk, {recoveries} recovery records",
        acked_all.len(),
        on_disk.len()
    );
    let lost: Vec<&u64> = acked_all.difference(&on_disk).collect();
    assert!(lost.is_empty(), "acknowledged but not on disk: {lost:?}");
    // A kill right after a checkpoint leaves nothing to recover, so not every round has one.
    assert!(recoveries >= 1, "kill -9 left no recovery record");
}
