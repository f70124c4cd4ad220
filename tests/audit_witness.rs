//! Evidence against root on the gateway's host: forward-secure checkpoint keys (one per epoch,
//! each certifying the next, the old one destroyed) and witnesses (the seals kept elsewhere),
//! attacked the way that adversary would: cut the tail, rewrite the past and re-sign it with the
//! key found on disk, delete records and continue the log with the current key.

mod audit_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_support::*;
use portcullis::audit::chain::{leaf_hash, record_hash, to_hex, GENESIS};
use portcullis::audit::merkle::Frontier;
use portcullis::audit::sinks::{witness_dir::WitnessDir, SinkOptions, Sinks};
use portcullis::audit::{canonical, checkpoint, epochs, keys, AuditConfig, AuditLog};
use portcullis::policy::{AuditSink, SinkKind};
use serde_json::Value;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: PathBuf,
    first_pub: PathBuf,
    witness: PathBuf,
}

fn epoch_config(dir: &Path, key: &Path, epoch: Option<Duration>) -> AuditConfig {
    let mut c = config(dir);
    c.signing_key = Some(key.to_path_buf());
    c.key_epoch = epoch;
    c.checkpoint_every = 25;
    c
}

fn witness_sink(path: &Path) -> AuditSink {
    AuditSink {
        name: "witness-1".into(),
        kind: SinkKind::WitnessDir {
            path: path.to_path_buf(),
        },
        witness: true,
    }
}

fn fast() -> SinkOptions {
    SinkOptions {
        poll: Duration::from_millis(20),
        ..SinkOptions::default()
    }
}

/// `n` records spread over `spread`, with a witness directory receiving the seals; the writer
/// reads its key from (and rotates it in) a file, as the gateway does.
fn write_log(epoch: Option<Duration>, n: u64, spread: Duration) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (key, first_pub) = keygen(tmp.path(), "cp.key");
    let dir = tmp.path().join("log");
    let witness = tmp.path().join("other-volume");
    append_for(&dir, &key, &witness, epoch, 0..n, spread);
    Fixture {
        _tmp: tmp,
        dir,
        key,
        first_pub,
        witness,
    }
}

fn append_for(
    dir: &Path,
    key: &Path,
    witness: &Path,
    epoch: Option<Duration>,
    events: std::ops::Range<u64>,
    spread: Duration,
) {
    let cfg = epoch_config(dir, key, epoch);
    rt().block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        let sinks = Sinks::start(dir, &[witness_sink(witness)], fast()).expect("witness");
        let pause = spread / u32::try_from(events.end - events.start).unwrap_or(1).max(1);
        for i in events {
            log.append(event(i)).await.expect("append");
            tokio::time::sleep(pause).await;
        }
        log.shutdown().await.expect("shutdown");
        // Let the witness take the final seal.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sinks.stop(Duration::from_secs(3)).await;
    });
}

fn verify_with(f: &Fixture, extra: &[&str]) -> Out {
    let pk = f.first_pub.display().to_string();
    let mut args = vec!["audit", "verify", "--pubkey", &pk];
    args.extend_from_slice(extra);
    portcullis(&args, &f.dir)
}

fn records(dir: &Path) -> Vec<Value> {
    lines(&segment(dir, 1))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn keys_rotate_each_epoch_and_the_first_public_key_verifies_the_whole_log() {
    let f = write_log(
        Some(Duration::from_secs(1)),
        120,
        Duration::from_millis(3500),
    );
    let recs = records(&f.dir);
    let rotations: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "key_rotation")
        .collect();
    assert!(rotations.len() >= 2, "{} rotations", rotations.len());
    // The key file holds only the current epoch's key: the last rotation's.
    let on_disk = keys::read_signing(&f.key).unwrap();
    assert_eq!(
        keys::key_id(&on_disk.verifying_key()),
        rotations.last().unwrap()["next_key_id"].as_str().unwrap()
    );
    assert!(!epochs::next_path(&f.key).exists());
    let first = keys::read_verifying(&f.first_pub).unwrap();
    assert_ne!(keys::key_id(&first), keys::key_id(&on_disk.verifying_key()));
    let r = verify_with(&f, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("key rotation(s) followed"),
        "{}",
        r.stdout
    );
    let w = f.witness.display().to_string();
    let r = verify_with(&f, &["--witness", &w, "--now"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("witness"), "{}", r.stdout);
    // An inclusion proof of an early record checks against the first key through the
    // certificates the proof carries.
    let proof = portcullis(&["audit", "prove", "--seq", "3"], &f.dir);
    assert_eq!(proof.code, 0, "{}", proof.stderr);
    let pf = f.dir.parent().unwrap().join("proof.json");
    std::fs::write(&pf, &proof.stdout).unwrap();
    let pk = f.first_pub.display().to_string();
    let ok = std::process::Command::new(bin())
        .args(["audit", "verify-proof", "--pubkey", &pk])
        .arg(&pf)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Attack (a): cut the tail back to a record boundary.
#[test]
fn a_cut_tail_is_found_by_the_witness_and_by_expect_until() {
    let f = write_log(
        Some(Duration::from_secs(1)),
        80,
        Duration::from_millis(1500),
    );
    let seg = segment(&f.dir, 1);
    let all = lines(&seg);
    let kept = &all[..all.len() - 30];
    let last_kept: Value = serde_json::from_str(kept.last().unwrap()).unwrap();
    write_lines(&seg, kept);
    // Without evidence kept elsewhere the cut log still verifies (what root counts on).
    let alone = verify_with(&f, &[]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    // The witness holds the seals that were cut off.
    let w = f.witness.display().to_string();
    let r = verify_with(&f, &["--witness", &w]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("the log lacks the seal at seq") && r.stderr.contains("cut off its end"),
        "{}",
        r.stderr
    );
    // Without a witness: the auditor knows the gateway ran until it stopped.
    let stopped = all.last().unwrap();
    let stopped: Value = serde_json::from_str(stopped).unwrap();
    let until = stopped["ts"].as_str().unwrap();
    let r = verify_with(&f, &["--expect-until", until]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("INCOMPLETE") && r.stderr.contains("missing"),
        "{}",
        r.stderr
    );
    assert!(last_kept["seq"].as_u64().unwrap() < stopped["seq"].as_u64().unwrap());
}

/// Re-links every record after the first edit and re-signs every seal with `key`: all an
/// attacker holding only the current key file can do.
fn rewrite_and_resign(seg: &Path, key: &ed25519_dalek::SigningKey, edit: impl Fn(&mut Value)) {
    let mut prev = GENESIS;
    let mut frontier = Frontier::new();
    let mut out = Vec::new();
    for line in lines(seg) {
        let mut v: Value = serde_json::from_str(&line).unwrap();
        edit(&mut v);
        v["prev"] = Value::String(to_hex(&prev));
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "checkpoint" || kind == "key_rotation" {
            let seq = v["seq"].as_u64().unwrap();
            let root = frontier.root();
            let log_id = v["log_id"].as_str().unwrap().to_owned();
            v["root"] = Value::String(to_hex(&root));
            v["key_id"] = Value::String(keys::key_id(&key.verifying_key()));
            v["sig"] = Value::String(if kind == "checkpoint" {
                checkpoint::sign(key, &log_id, seq, &root)
            } else {
                let next = epochs::parse_public(v["next_public_key"].as_str().unwrap()).unwrap();
                epochs::sign(key, &log_id, seq, &root, &next)
            });
        }
        let bytes = canonical::to_vec(&v).unwrap();
        prev = record_hash(&bytes);
        frontier.push(leaf_hash(&bytes));
        out.push(String::from_utf8(bytes).unwrap());
    }
    write_lines(seg, &out);
}

/// Attack (b): a record of an earlier epoch rewritten, the chain re-linked and every seal
/// re-signed with the key file found on the host.
#[test]
fn a_past_epoch_rewritten_and_resigned_with_the_key_on_disk_is_found() {
    let edit = |v: &mut Value| {
        if v["seq"] == 5 {
            v["client"] = Value::String("someone-else".into());
        }
    };
    // With one key for the life of the log, the key on disk re-signs the past: undetectable.
    let single = write_log(None, 60, Duration::from_millis(300));
    let stolen = keys::read_signing(&single.key).unwrap();
    rewrite_and_resign(&segment(&single.dir, 1), &stolen, edit);
    let r = verify_with(&single, &[]);
    assert_eq!(
        r.code, 0,
        "with a single key the forgery passes: {}",
        r.stderr
    );

    // With key epochs the key on disk belongs to the last epoch only.
    let f = write_log(
        Some(Duration::from_secs(1)),
        90,
        Duration::from_millis(2500),
    );
    let stolen = keys::read_signing(&f.key).unwrap();
    rewrite_and_resign(&segment(&f.dir, 1), &stolen, edit);
    let r = verify_with(&f, &[]);
    assert_eq!(r.code, 1, "forgery not found: {}", r.stdout);
    assert!(
        r.stderr.contains("not by the given public key") && r.stderr.contains("re-signed"),
        "{}",
        r.stderr
    );
}

/// Attack (c): records deleted within the current epoch and the log continued with the current
/// key (a fork). It verifies on its own; the witness holds the original seals.
#[test]
fn a_forked_log_continued_with_the_current_key_is_found_by_the_witness() {
    let f = write_log(
        Some(Duration::from_secs(3600)),
        120,
        Duration::from_millis(400),
    );
    let seg = segment(&f.dir, 1);
    let all = lines(&seg);
    write_lines(&seg, &all[..all.len() - 40]);
    // The gateway restarts on the shortened log and writes new records and seals.
    append_for(
        &f.dir,
        &f.key,
        &f.dir.parent().unwrap().join("unused-witness"),
        Some(Duration::from_secs(3600)),
        5000..5060,
        Duration::from_millis(200),
    );
    let alone = verify_with(&f, &[]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    let w = f.witness.display().to_string();
    let r = verify_with(&f, &["--witness", &w]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("rolled back or rewritten") && r.stderr.contains("seq"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_witness_of_another_log_or_a_garbage_file_is_an_error_not_a_pass() {
    let f = write_log(
        Some(Duration::from_secs(3600)),
        30,
        Duration::from_millis(100),
    );
    let other = write_log(
        Some(Duration::from_secs(3600)),
        30,
        Duration::from_millis(100),
    );
    let w = other.witness.display().to_string();
    let r = verify_with(&f, &["--witness", &w]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("holds no seal of log"), "{}", r.stderr);
    let junk = f.dir.parent().unwrap().join("junk.jsonl");
    std::fs::write(&junk, "not json\n").unwrap();
    let j = junk.display().to_string();
    let r = verify_with(&f, &["--witness", &j]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("not a seal record"), "{}", r.stderr);
    let _ = WitnessDir::file(&f.witness, "x");
}
