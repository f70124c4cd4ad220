//! Audit retention: old sealed segments are archived or deleted, never before every sink has
//! them; what stays still proves itself from the anchor; a segment removed behind retention's
//! back is found.

mod audit_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audit_support::*;
use portcullis::audit::retention::{anchor_for, Retention};
use portcullis::audit::sinks::{SinkOptions, Sinks};
use portcullis::audit::{anchor, AuditConfig, AuditLog};
use portcullis::policy::{AuditSink, SinkKind};
use serde_json::Value;

fn retention_config(dir: &Path, archive: Option<PathBuf>, sinks: &[&str]) -> AuditConfig {
    let mut c = config(dir);
    c.max_segment_bytes = 16 << 10;
    c.retention = Some(Retention {
        max_age: None,
        max_bytes: Some(64 << 10),
        archive_dir: archive,
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        check_every: Duration::from_millis(50),
    });
    c
}

fn witness(path: &Path) -> AuditSink {
    AuditSink {
        name: "w".into(),
        kind: SinkKind::WitnessDir {
            path: path.to_path_buf(),
        },
        witness: true,
    }
}

fn segments(dir: &Path) -> Vec<u64> {
    portcullis::audit::segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// Bytes of records, as retention counts them (not the space written ahead of them). A
/// segment that retention removes between the listing and the read no longer counts.
fn total_bytes(dir: &Path) -> u64 {
    portcullis::audit::segment::list(dir)
        .unwrap()
        .iter()
        .filter_map(|(_, p)| match portcullis::audit::segment::records_end(p) {
            Ok(end) => Some(end),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{}: {e}", p.display()),
        })
        .sum()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

struct Log {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    first_pub: PathBuf,
    witness: PathBuf,
    archive: PathBuf,
}

/// 1,500 records with a witness that is down for the first half: retention must wait for it.
fn write_with_late_witness() -> Log {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let archive = tmp.path().join("archive");
    let wdir = tmp.path().join("witness");
    let cfg = retention_config(&dir, Some(archive.clone()), &["w"]);
    rt().block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        for i in 0..750 {
            log.append(event(i)).await.expect("append");
        }
        // The witness has acknowledged nothing: nothing may go, however big the log is.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(segments(&dir)[0], 1, "removed before the witness had it");
        assert!(total_bytes(&dir) > 64 << 10);
        let opts = SinkOptions {
            poll: Duration::from_millis(20),
            ..SinkOptions::default()
        };
        let sinks = Sinks::start(&dir, &[witness(&wdir)], opts).expect("witness");
        for i in 750..1500 {
            log.append(event(i)).await.expect("append");
        }
        let d = dir.clone();
        let shrunk = tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(20), || total_bytes(&d) <= 80 << 10)
        })
        .await
        .unwrap();
        assert!(
            shrunk,
            "retention did not bring the log under max_bytes: {} bytes in {:?}; witness cursor {:?}",
            total_bytes(&dir),
            segments(&dir),
            std::fs::read_to_string(dir.join("cursors/w.json"))
        );
        log.shutdown().await.expect("shutdown");
        tokio::time::sleep(Duration::from_millis(200)).await;
        sinks.stop(Duration::from_secs(3)).await;
    });
    Log {
        first_pub: dir.join("signing.key.pub"),
        _tmp: tmp,
        dir,
        witness: wdir,
        archive,
    }
}

fn verify_log(l: &Log, extra: &[&str]) -> Out {
    let pk = l.first_pub.display().to_string();
    let mut args = vec!["audit", "verify", "--pubkey", &pk];
    args.extend_from_slice(extra);
    portcullis(&args, &l.dir)
}

#[test]
fn old_segments_go_after_the_witness_has_them_and_the_rest_still_proves_itself() {
    let l = write_with_late_witness();
    let segs = segments(&l.dir);
    assert!(segs[0] > 1, "nothing was removed: {segs:?}");
    assert!(anchor::path(&l.dir, segs[0]).exists());
    let w = l.witness.display().to_string();
    let r = verify_log(&l, &["--witness", &w]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Every removal is a record of the log, naming the anchor it left.
    let recs: Vec<Value> = segs
        .iter()
        .flat_map(|i| lines(&segment(&l.dir, *i)))
        .map(|s| serde_json::from_str(&s).unwrap())
        .collect();
    let removals: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "retention").collect();
    assert!(!removals.is_empty());
    assert_eq!(removals.last().unwrap()["first_retained"], segs[0]);
    // The archive holds every removed segment, whole.
    for i in 1..segs[0] {
        let gz = l.archive.join(format!("audit-{i:06}.jsonl.gz"));
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()),
            &mut text,
        )
        .unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "segment_start", "{}", gz.display());
    }
    // An inclusion proof of a retained record still checks against the first key.
    let seq = recs[5]["seq"].as_u64().unwrap().to_string();
    let proof = portcullis(&["audit", "prove", "--seq", &seq], &l.dir);
    assert_eq!(proof.code, 0, "{}", proof.stderr);
    let pf = l.dir.parent().unwrap().join("proof.json");
    std::fs::write(&pf, &proof.stdout).unwrap();
    let ok = std::process::Command::new(bin())
        .args(["audit", "verify-proof", "--pubkey"])
        .arg(&l.first_pub)
        .arg(&pf)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The writer continues the shortened log after a restart.
    rt().block_on(async {
        let log = AuditLog::open(&config(&l.dir), None).expect("reopen");
        log.append(event(9999)).await.expect("append");
        log.shutdown().await.expect("shutdown");
    });
    let r = verify_log(&l, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn tampering_with_the_retained_part_is_still_found() {
    let l = write_with_late_witness();
    let seg = segment(&l.dir, segments(&l.dir)[0]);
    let mut ls = lines(&seg);
    // Which line is the first event depends on how many retention records landed first.
    let i = ls
        .iter()
        .position(|l| l.contains("client-"))
        .expect("the retained segment holds an event");
    ls[i] = ls[i].replacen("client-", "client_", 1);
    write_lines(&seg, &ls);
    let r = verify_log(&l, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("TAMPERED"), "{}", r.stderr);
}

/// Root deletes the oldest remaining segment and writes the anchor any reader can compute:
/// the retention records say the log should start earlier.
#[test]
fn a_segment_removed_behind_retentions_back_is_found() {
    let l = write_with_late_witness();
    let lowest = segments(&l.dir)[0];
    let forged = anchor_for(&l.dir, lowest).unwrap();
    anchor::write(&l.dir, &forged).unwrap();
    std::fs::remove_file(segment(&l.dir, lowest)).unwrap();
    std::fs::remove_file(anchor::path(&l.dir, lowest)).unwrap();
    let r = verify_log(&l, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("beyond what retention recorded"),
        "{}",
        r.stderr
    );
    // Without even the anchor it is found too: by the missing anchor, or, when retention had
    // already written the next segment's anchor for a removal it had not recorded yet as the
    // writer stopped (it writes the anchor first), by the last retention record.
    let l = write_with_late_witness();
    let lowest = segments(&l.dir)[0];
    std::fs::remove_file(segment(&l.dir, lowest)).unwrap();
    let r = verify_log(&l, &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("not by retention")
            || r.stderr.contains("beyond what retention recorded"),
        "{}",
        r.stderr
    );
}
