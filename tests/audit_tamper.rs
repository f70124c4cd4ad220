//! `audit verify` (the real binary) on intact and tampered logs.

mod audit_support;

use audit_support::*;
use portcullis::audit::{canonical, chain, checkpoint, keys};
use serde_json::Value;

fn fixture() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pubkey) = keygen(tmp.path(), "cp.key");
    let dir = tmp.path().join("log");
    let cfg = config(&dir);
    write(&cfg, &key, 300, 4);
    let ok = verify(&dir, &pubkey);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    (tmp, dir, pubkey)
}

fn assert_detected(dir: &std::path::Path, pubkey: &std::path::Path, place: &str, what: &str) {
    let r = verify(dir, pubkey);
    assert_ne!(r.code, 0, "tampering not detected: {}", r.stdout);
    assert!(
        r.stderr.contains(place) && r.stderr.contains(what),
        "expected {place:?} and {what:?} in: {}",
        r.stderr
    );
}

#[test]
fn one_changed_byte_is_found() {
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    // Line 101 (seq 100): change one letter of the client name; the JSON stays canonical.
    l[100] = l[100].replacen("client-", "client_", 1);
    write_lines(&seg, &l);
    assert_detected(&dir, &pk, "audit-000001.jsonl:102 seq=101", "prev");
    assert!(verify(&dir, &pk).stderr.contains("audit-000001.jsonl:101"));
}

#[test]
fn a_deleted_record_is_found() {
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    l.remove(40);
    write_lines(&seg, &l);
    assert_detected(&dir, &pk, "audit-000001.jsonl:41 seq=41", "expected 40");
}

#[test]
fn swapped_records_are_found() {
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    l.swap(10, 11);
    write_lines(&seg, &l);
    assert_detected(&dir, &pk, "audit-000001.jsonl:11 seq=11", "expected 10");
}

#[test]
fn truncation_mid_file_is_found() {
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let bytes = std::fs::read(&seg).expect("read");
    std::fs::write(&seg, &bytes[..bytes.len() / 2]).expect("truncate");
    let r = verify(&dir, &pk);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("audit-000001.jsonl:") && r.stderr.contains("truncated"),
        "{}",
        r.stderr
    );
}

/// Re-signs the final checkpoint with another key (as an attacker who rewrote records would).
#[test]
fn a_checkpoint_signed_by_another_key_is_found() {
    let (t, dir, pk) = fixture();
    let (other, _) = keygen(t.path(), "attacker.key");
    let other = keys::read_signing(&other).expect("key");
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    let last = l.len() - 1;
    let mut v: Value = serde_json::from_str(&l[last]).expect("json");
    assert_eq!(v["kind"], "checkpoint");
    let size = v["tree_size"].as_u64().expect("size");
    let root = chain::from_hex(v["root"].as_str().expect("root")).expect("hex");
    let log_id = v["log_id"].as_str().expect("id").to_string();
    v["key_id"] = keys::key_id(&other.verifying_key()).into();
    v["sig"] = checkpoint::sign(&other, &log_id, size, &root).into();
    l[last] = String::from_utf8(canonical::to_vec(&v).expect("canon")).expect("utf8");
    write_lines(&seg, &l);
    assert_detected(
        &dir,
        &pk,
        &format!("audit-000001.jsonl:{} seq={last}", last + 1),
        "key id",
    );
    // The same with the genuine key id: the signature itself fails.
    let real = keys::key_id(&keys::read_verifying(&pk).expect("pk"));
    v["key_id"] = real.into();
    l[last] = String::from_utf8(canonical::to_vec(&v).expect("canon")).expect("utf8");
    write_lines(&seg, &l);
    assert_detected(&dir, &pk, &format!("seq={last}"), "signature");
}

#[test]
fn an_edited_but_relinked_record_fails_the_checkpoint_root() {
    // An attacker who edits a record and re-links every later `prev` still cannot fix the
    // signed Merkle root.
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let mut l = lines(&seg);
    l[5] = l[5].replacen("client-", "client_", 1);
    let mut prev = chain::record_hash(l[5].as_bytes());
    for line in l.iter_mut().skip(6) {
        let mut v: Value = serde_json::from_str(line).expect("json");
        v["prev"] = chain::to_hex(&prev).into();
        *line = String::from_utf8(canonical::to_vec(&v).expect("canon")).expect("utf8");
        prev = chain::record_hash(line.as_bytes());
    }
    write_lines(&seg, &l);
    assert_detected(&dir, &pk, "seq=", "checkpoint root");
}

#[test]
fn garbage_files_give_errors_not_panics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    std::fs::create_dir(&dir).expect("mkdir");
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\n\n\n".to_vec(),
        b"{}\n".to_vec(),
        b"[1,2]\n".to_vec(),
        b"{\"seq\":1e400}\n".to_vec(),
        (0..=255u8).cycle().take(100_000).collect(),
        b"{\"v\":1,\"seq\":0,\"log_id\":\"x\",\"prev\":\"zz\"}\n".to_vec(),
    ];
    for c in cases {
        std::fs::write(segment(&dir, 1), &c).expect("write");
        let r = verify(&dir, &pk);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("audit-000001.jsonl") || r.stderr.contains("no audit"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn an_untouched_log_of_100000_records_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (key, pk) = keygen(tmp.path(), "k");
    let dir = tmp.path().join("log");
    let mut cfg = config(&dir);
    cfg.checkpoint_every = 10_000;
    cfg.max_segment_bytes = 8 << 20;
    write(&cfg, &key, 100_000, 8);
    let r = verify(&dir, &pk);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("records in"), "{}", r.stdout);
    let segs = std::fs::read_dir(&dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        })
        .count();
    assert!(
        segs > 1,
        "expected rotation into several segments, got {segs}"
    );
}

/// Random single-byte changes anywhere: verify never panics, and finds every change except in
/// the fields of the very last record that nothing after it covers yet.
#[test]
fn random_byte_flips_never_panic_and_are_found() {
    use portcullis::audit::verify::verify_dir;
    let (_t, dir, pk) = fixture();
    let key = keys::read_verifying(&pk).expect("pk");
    let seg = segment(&dir, 1);
    let orig = std::fs::read(&seg).expect("read");
    let last_line_start = orig[..orig.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut missed = 0;
    for _ in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed % orig.len() as u64) as usize;
        let mut m = orig.clone();
        m[at] ^= 1 << (seed >> 60 & 7);
        std::fs::write(&seg, &m).expect("write");
        if verify_dir(&dir, Some(&key)).is_ok() && at < last_line_start {
            missed += 1;
        }
    }
    assert_eq!(
        missed, 0,
        "changes before the last record must all be found"
    );
    std::fs::write(&seg, &orig).expect("restore");
    assert!(verify_dir(&dir, Some(&key)).is_ok());
}

#[test]
fn records_zeroed_out_to_look_like_unused_space_are_found() {
    // A live segment ends in zeros (space allocated ahead), so readers stop at the first zero
    // byte; zeros with records after them must not pass for that.
    let (_t, dir, pk) = fixture();
    let seg = segment(&dir, 1);
    let mut bytes = std::fs::read(&seg).expect("read");
    let l = lines(&seg);
    let start: usize = l[..100].iter().map(|s| s.len() + 1).sum();
    let len: usize = l[100..102].iter().map(|s| s.len() + 1).sum();
    bytes[start..start + len].fill(0);
    std::fs::write(&seg, &bytes).expect("write");
    assert_detected(
        &dir,
        &pk,
        &format!("data at byte {}", start + len),
        "records were zeroed out",
    );
}
