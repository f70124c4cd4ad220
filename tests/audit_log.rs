//! The writer: crash recovery, group commit, fail-closed, secrets, proofs and export.

mod audit_support;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use audit_support::*;
use portcullis::audit::{keys, AuditError, AuditEvent, AuditLog, Kind, RedactStrings};
use portcullis::policy::FsyncMode;
use serde_json::Value;

/// Opens a group-commit log in `dir` signed with the key in `key` (call inside a runtime).
fn open_group(dir: &std::path::Path, key: &std::path::Path) -> AuditLog {
    let mut cfg = config(dir);
    cfg.fsync = FsyncMode::Group;
    AuditLog::open(&cfg, Some(keys::read_signing(key).expect("key"))).expect("open")
}

fn records(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = 1;
    while segment(dir, i).exists() {
        for l in lines(&segment(dir, i)) {
            out.push(serde_json::from_str(&l).expect("json"));
        }
        i += 1;
    }
    out
}

#[test]
fn a_torn_final_record_is_cut_recorded_and_the_chain_continues() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let cfg = config(&dir);
    write(&cfg, &key, 40, 1);
    // What a crash in the middle of write(2) leaves.
    let seg = segment(&dir, 1);
    let mut bytes = std::fs::read(&seg).expect("read");
    let torn = br#"{"bytes_in":100,"client":"cli"#;
    bytes.extend_from_slice(torn);
    std::fs::write(&seg, &bytes).expect("write");
    assert_ne!(
        verify(&dir, &pk).code,
        0,
        "a torn log must not verify before recovery"
    );
    write(&cfg, &key, 10, 1);
    let r = verify(&dir, &pk);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = records(&dir);
    let rec = recs
        .iter()
        .find(|v| v["kind"] == "recovery")
        .expect("a recovery record");
    assert_eq!(rec["truncated_bytes"], torn.len() as u64);
    assert_eq!(rec["segment"], "audit-000001.jsonl");
    for (i, v) in recs.iter().enumerate() {
        assert_eq!(v["seq"], i as u64);
    }
}

#[test]
fn a_crash_without_final_checkpoint_is_noted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let cfg = config(&dir);
    write(&cfg, &key, 10, 1);
    // Drop the final checkpoint, as a kill -9 before shutdown would.
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    assert!(l.pop().expect("line").contains("\"checkpoint\""));
    write_lines(&seg, &l);
    write(&cfg, &key, 5, 1);
    assert_eq!(verify(&dir, &pk).code, 0);
    let recs = records(&dir);
    assert!(recs.iter().any(|v| v["kind"] == "recovery"
        && v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("without a final checkpoint")));
}

#[test]
fn group_commit_64_concurrent_appenders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let mut cfg = config(&dir);
    cfg.fsync = FsyncMode::Group;
    cfg.queue_capacity = 16;
    let key = keys::read_signing(&key).expect("key");
    let seqs = rt().block_on(async {
        let log = AuditLog::open(&cfg, Some(key)).expect("open");
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20 {
                    got.push(log.append(event(t * 100 + i)).await.expect("append"));
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        log.shutdown().await.expect("shutdown");
        all
    });
    assert_eq!(seqs.len(), 64 * 20);
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "every append got its own seq");
    let recs = records(&dir);
    for (i, v) in recs.iter().enumerate() {
        assert_eq!(v["seq"], i as u64, "records are in seq order without gaps");
    }
    for s in &seqs {
        let k = &recs[*s as usize]["kind"];
        assert!(
            k == "call" || k == "result",
            "seq {s} is an appended event, got {k}"
        );
    }
    assert_eq!(verify(&dir, &pk).code, 0);
}

/// Points the writer's open segment at /dev/full (ENOSPC on every write), as a full disk would.
/// Returns `(writer fd, saved duplicate of the real file)`.
fn break_segment(path: &std::path::Path) -> (i32, i32) {
    let target = std::fs::canonicalize(path).expect("canonical");
    let mut fd = None;
    for e in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(target.as_path()) {
            let n: i32 = e.file_name().to_string_lossy().parse().expect("fd");
            // Our own handles are read-only; the writer's has write access (octal flags).
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            if flags & 0o3 != 0 {
                fd = Some(n);
            }
        }
    }
    let fd = fd.expect("the writer's segment fd");
    let saved = nix::unistd::dup(fd).expect("dup");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    nix::unistd::dup2(full.as_raw_fd(), fd).expect("dup2");
    (fd, saved)
}

/// Puts the real file back under the writer's fd (only that fd: tests run in parallel).
fn restore_segment(fd: i32, saved: i32) {
    nix::unistd::dup2(saved, fd).expect("dup2 back");
    let _ = nix::unistd::close(saved);
}

#[test]
fn fail_closed_refuses_every_append_after_a_write_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    rt().block_on(async {
        let log = open_group(&dir, &key);
        log.append(event(0)).await.expect("first append");
        let _ = break_segment(&segment(&dir, 1));
        let e = log
            .append(event(1))
            .await
            .expect_err("write to a full disk");
        assert!(matches!(e, AuditError::Io(_)), "{e:?}");
        assert!(log.failure().is_some());
        for i in 2..5 {
            let e = log.append(event(i)).await.expect_err("fail-closed");
            assert!(matches!(e, AuditError::Failed(_)), "{e:?}");
            assert!(e.to_string().contains("refused"));
        }
    });
}

/// Puts `/dev/null` under the writer's fd: writes still succeed, `fdatasync` fails (EINVAL).
fn unsyncable_segment(path: &std::path::Path) -> std::os::fd::OwnedFd {
    let (fd, saved) = break_segment(path);
    let _ = nix::unistd::close(saved);
    // Writes to /dev/null succeed (at any offset); fdatasync on it fails with EINVAL.
    let null: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
        .into();
    nix::unistd::dup2(null.as_raw_fd(), fd).expect("dup2 /dev/null");
    null
}

#[test]
fn a_failed_fdatasync_in_group_mode_acknowledges_nothing_and_stops_the_log() {
    // Whatever fail_closed says: after a failed fdatasync the kernel may have dropped the
    // batch's pages, so no record written since can be called durable.
    for fail_closed in [true, false] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (key, _) = keygen(tmp.path(), "k");
        let dir = tmp.path().join("log");
        let mut cfg = config(&dir);
        cfg.fsync = FsyncMode::Group;
        cfg.fail_closed = fail_closed;
        let key = keys::read_signing(&key).expect("key");
        rt().block_on(async {
            let log = AuditLog::open(&cfg, Some(key)).expect("open");
            log.append(event(0)).await.expect("first append");
            let _pipe = unsyncable_segment(&segment(&dir, 1));
            let appends: Vec<_> = (1..9).map(|i| log.append(event(i))).collect();
            for r in futures_util::future::join_all(appends).await {
                let e = r.expect_err("no record may be acknowledged without a good sync");
                let text = e.to_string();
                assert!(
                    text.contains("fdatasync failed") || matches!(e, AuditError::Failed(_)),
                    "{text}"
                );
            }
            let failure = log.failure().expect("the log stopped");
            assert!(failure.contains("fdatasync failed"), "{failure}");
            let e = log.append(event(9)).await.expect_err("stopped");
            assert!(matches!(e, AuditError::Failed(_)), "{e:?}");
        });
    }
}

#[test]
fn fail_open_loses_the_batch_but_keeps_the_chain_intact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let mut cfg = config(&dir);
    cfg.fail_closed = false;
    cfg.fsync = FsyncMode::Always;
    let key = keys::read_signing(&key).expect("key");
    rt().block_on(async {
        let log = AuditLog::open(&cfg, Some(key)).expect("open");
        log.append(event(0)).await.expect("first append");
        let (fd, saved) = break_segment(&segment(&dir, 1));
        assert!(log.append(event(1)).await.is_err());
        assert!(log.failure().is_none(), "fail-open does not stop the log");
        restore_segment(fd, saved);
        log.append(event(2)).await.expect("appends work again");
        log.shutdown().await.expect("shutdown");
    });
    assert_eq!(verify(&dir, &pk).code, 0);
}

#[test]
fn secrets_never_reach_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let secret = "ghp_S3cr3tT0kenValue0123456789";
    for record_arguments in [false, true] {
        let dir = tmp.path().join(format!("log-{record_arguments}"));
        let mut cfg = config(&dir);
        cfg.record_arguments = record_arguments;
        let key = keys::read_signing(&key).expect("key");
        rt().block_on(async {
            let log = AuditLog::open(&cfg, Some(key)).expect("open");
            log.set_redactor(Arc::new(RedactStrings(vec![secret.to_string()])));
            let args = format!("{{\"token\":\"{secret}\",\"q\":\"visible\"}}");
            log.append(
                AuditEvent::new(Kind::Call)
                    .tool("search")
                    .arguments(&args)
                    .detail(format!("upstream said: bad credentials {secret}")),
            )
            .await
            .expect("append");
            log.shutdown().await.expect("shutdown");
        });
        let text = std::fs::read_to_string(segment(&dir, 1)).expect("read");
        assert!(!text.contains(secret), "secret leaked: {text}");
        assert!(text.contains("args_sha256"));
        assert_eq!(text.contains("visible"), record_arguments, "{text}");
        assert_eq!(verify(&dir, &pk).code, 0);
    }
}

#[test]
fn reserved_kinds_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(&tmp.path().join("log"));
    rt().block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        let e = log
            .append(AuditEvent::new(Kind::Checkpoint))
            .await
            .expect_err("reserved");
        assert_eq!(e, AuditError::Reserved("checkpoint"));
        log.shutdown().await.expect("shutdown");
    });
    // No key given: one was generated next to the log, private and with its public half.
    let key = tmp.path().join("log/signing.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(keys::pub_path(&key).exists());
    let r = portcullis(&["audit", "verify"], &tmp.path().join("log"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("from the log directory itself"));
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(&tmp.path().join("log"));
    rt().block_on(async {
        let a = AuditLog::open(&cfg, None).expect("open");
        let e = AuditLog::open(&cfg, None).expect_err("second writer");
        assert!(e.to_string().contains("another process"), "{e}");
        a.shutdown().await.expect("shutdown");
    });
}

#[test]
fn segments_link_and_prove_and_export_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let mut cfg = config(&dir);
    cfg.max_segment_bytes = 4096;
    write(&cfg, &key, 200, 2);
    assert!(segment(&dir, 3).exists(), "rotation happened");
    let first = &lines(&segment(&dir, 2))[0];
    let v: Value = serde_json::from_str(first).expect("json");
    assert_eq!(v["kind"], "segment_start");
    assert_eq!(v["prev_segment"], "audit-000001.jsonl");
    let last_of_1: Value =
        serde_json::from_str(lines(&segment(&dir, 1)).last().expect("l")).expect("json");
    assert_eq!(
        last_of_1["kind"], "checkpoint",
        "a segment is closed by a checkpoint"
    );
    assert_eq!(verify(&dir, &pk).code, 0);

    // Removing a whole middle segment is found.
    let moved = tmp.path().join("moved");
    std::fs::rename(segment(&dir, 2), &moved).expect("mv");
    let r = verify(&dir, &pk);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
    std::fs::rename(&moved, segment(&dir, 2)).expect("mv back");

    for seq in [0u64, 1, 57, 150] {
        let p = portcullis(&["audit", "prove", "--seq", &seq.to_string()], &dir);
        assert_eq!(p.code, 0, "{}", p.stderr);
        let proof_path = tmp.path().join("proof.json");
        std::fs::write(&proof_path, &p.stdout).expect("write proof");
        let o = std::process::Command::new(bin())
            .args(["audit", "verify-proof", "--pubkey"])
            .arg(&pk)
            .arg(&proof_path)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // A proof for another record does not verify.
        let mut forged: Value = serde_json::from_str(&p.stdout).expect("json");
        forged["seq"] = (seq + 1).into();
        std::fs::write(&proof_path, forged.to_string()).expect("write");
        let o = std::process::Command::new(bin())
            .args(["audit", "verify-proof", "--pubkey"])
            .arg(&pk)
            .arg(&proof_path)
            .output()
            .expect("run");
        assert!(!o.status.success());
    }

    let e = portcullis(
        &[
            "audit", "export", "--from", "10", "--to", "19", "--format", "jsonl",
        ],
        &dir,
    );
    assert_eq!(e.code, 0);
    let seqs: Vec<u64> = e
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, (10..=19).collect::<Vec<_>>());
    let c = portcullis(
        &[
            "audit", "export", "--from", "10", "--to", "12", "--format", "cef",
        ],
        &dir,
    );
    assert_eq!(c.stdout.lines().count(), 3);
    assert!(c
        .stdout
        .lines()
        .all(|l| l.starts_with("CEF:0|Portcullis|portcullis|")));

    let t = portcullis(&["audit", "tail", "-n", "5", "--kind", "checkpoint"], &dir);
    assert_eq!(t.code, 0);
    assert!(
        t.stdout.lines().count() <= 5 && t.stdout.contains("tree_size="),
        "{}",
        t.stdout
    );
}

/// The bytes of a segment up to its first zero byte, and the file's length.
fn records_end(path: &std::path::Path) -> (usize, u64) {
    let bytes = std::fs::read(path).expect("read segment");
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    (end, bytes.len() as u64)
}

#[test]
fn segment_space_is_allocated_ahead_while_written_and_given_back_at_the_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    rt().block_on(async {
        let log = open_group(&dir, &key);
        for i in 0..20 {
            log.append(event(i)).await.expect("append");
        }
        // Live: the records, then zeros up to the allocated size. `audit verify` reads the
        // live log as it is.
        let (end, len) = records_end(&segment(&dir, 1));
        assert!(len > end as u64, "no space allocated ahead: {len} bytes");
        assert!(std::fs::read(segment(&dir, 1)).expect("read")[end..]
            .iter()
            .all(|&b| b == 0));
        let out = verify(&dir, &pk);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        log.shutdown().await.expect("shutdown");
    });
    let (end, len) = records_end(&segment(&dir, 1));
    assert_eq!(len, end as u64, "a closed segment keeps no zeros");
    assert_eq!(verify(&dir, &pk).code, 0);
}

#[test]
fn a_crash_leaves_allocated_space_that_the_next_open_cuts_without_calling_it_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let crashed = tmp.path().join("crashed");
    rt().block_on(async {
        let log = open_group(&dir, &key);
        for i in 0..10 {
            log.append(event(i)).await.expect("append");
        }
        // What a kill -9 leaves: the durable records and the zeros after them.
        std::fs::create_dir(&crashed).expect("mkdir");
        std::fs::copy(segment(&dir, 1), segment(&crashed, 1)).expect("copy");
        log.shutdown().await.expect("shutdown");
    });
    let (end, len) = records_end(&segment(&crashed, 1));
    assert!(len > end as u64);
    rt().block_on(async {
        let log = open_group(&crashed, &key);
        log.append(event(10)).await.expect("append after the crash");
        log.shutdown().await.expect("shutdown");
    });
    let recs = records(&crashed);
    let recovery: Vec<&Value> = recs.iter().filter(|v| v["kind"] == "recovery").collect();
    assert_eq!(recovery.len(), 1, "{recs:?}");
    assert!(
        recovery[0].get("truncated_bytes").is_none(),
        "zeros are not lost records: {}",
        recovery[0]
    );
    assert_eq!(
        recs.iter()
            .filter(|v| v["kind"] != "segment_start"
                && v["kind"] != "checkpoint"
                && v["kind"] != "recovery")
            .count(),
        11
    );
    let out = verify(&crashed, &pk);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
