//! Offline verification of a whole log directory.
//!
//! Checks, record by record in order: the line is complete, is a JSON object in canonical form,
//! `v` is known, `log_id` is the log's, `seq` is the previous plus one, `prev` is the SHA-256 of
//! the previous line, `ts` is well-formed, every segment starts with a `segment_start` naming
//! itself and its predecessor, and every checkpoint's `tree_size` equals its `seq`, its `root`
//! equals the root recomputed from all records before it, and its signature verifies with the
//! public key (whose id must match `key_id`).
//!
//! Key epochs: a `key_rotation` record is a checkpoint that also certifies the next key; from
//! the record after it on, checkpoints must be signed by that key. Verification starts from the
//! first key (the auditor's copy) and follows the certificates, so a checkpoint re-signed with a
//! later key (the one found on a compromised host) fails. See [`super::epochs`].
//!
//! Consistency between checkpoints: because every root is checked against the tree recomputed
//! from the records themselves, each later root provably extends each earlier one (both are
//! prefixes of the same leaf sequence), and tree sizes increase with `seq`. No RFC 9162
//! consistency proof is needed when the verifier has all records; [`super::prove`] provides
//! inclusion proofs for auditors that hold only a checkpoint.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::chain::{from_hex, leaf_hash, record_hash, to_hex, Hash, GENESIS};
use super::merkle::Frontier;
use super::record::{parse_ts_ms, Kind, FORMAT_VERSION};
use super::{canonical, checkpoint, epochs, keys, segment};

/// What an intact log contains.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub log_id: String,
    pub records: u64,
    pub segments: usize,
    pub checkpoints: u64,
    /// `(tree_size, root)` of the last checkpoint.
    pub last_checkpoint: Option<(u64, String)>,
    /// Records after the last checkpoint: chained but not yet signed.
    pub uncovered: u64,
    pub signatures_checked: bool,
    /// Key rotations followed (each a checkpoint too).
    pub rotations: u64,
    /// `ts` of the last checkpoint or rotation.
    pub last_seal_ts: Option<String>,
    /// Every checkpoint and rotation by `seq`: its line, for comparison with a witness.
    pub seals: std::collections::BTreeMap<u64, Vec<u8>>,
    /// `seq` of the first record present (retention removed those before it).
    pub first_seq: u64,
    /// SHA-256 of the retention anchor the log starts from, if it does.
    pub anchor_sha256: Option<String>,
    /// The last `retention` record: (first segment it retained, its anchor's SHA-256).
    pub last_retention: Option<(u64, String)>,
}

/// The first bad place in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub file: String,
    pub line: u64,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "{}:{} seq={s}: {}", self.file, self.line, self.what),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.what),
        }
    }
}

struct State {
    /// The key that signs now: the given first key, then each key a rotation certified.
    key: Option<VerifyingKey>,
    key_id: Option<String>,
    log_id: Option<String>,
    expect_seq: u64,
    prev: Hash,
    prev_at: String,
    frontier: Frontier,
    report: Report,
}

pub fn verify_dir(dir: &Path, key: Option<&VerifyingKey>) -> Result<Report, Failure> {
    let segs = segment::list(dir).map_err(|e| Failure {
        file: dir.display().to_string(),
        line: 0,
        seq: None,
        what: format!("cannot list: {e}"),
    })?;
    if segs.is_empty() {
        return Err(Failure {
            file: dir.display().to_string(),
            line: 0,
            seq: None,
            what: "no audit segments (audit-NNNNNN.jsonl) here".into(),
        });
    }
    let named: Vec<(u64, String)> = segs
        .iter()
        .map(|(index, path)| (*index, path.display().to_string()))
        .collect();
    // A log that retention shortened starts at its anchor.
    let anchor = match named.first() {
        Some((first, file)) if *first > 1 => match super::anchor::read(dir, *first) {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                return Err(Failure {
                    file: file.clone(),
                    line: 0,
                    seq: None,
                    what: format!(
                        "the log starts at segment {first}, but {} is missing: earlier segments were removed, and not by retention",
                        super::anchor::path(dir, *first).display()
                    ),
                })
            }
            Err(what) => {
                return Err(Failure {
                    file: file.clone(),
                    line: 0,
                    seq: None,
                    what,
                })
            }
        },
        _ => None,
    };
    verify_each(named, key, anchor, |i| segment::open_lines(&segs[i].1))
}

/// Verifies segments held in memory, `(index, content)` in index order, exactly as
/// [`verify_dir`] verifies the same files; failures name the segment file names.
pub fn verify_segments(
    segs: &[(u64, &[u8])],
    key: Option<&VerifyingKey>,
) -> Result<Report, Failure> {
    if segs.is_empty() {
        return Err(Failure {
            file: String::new(),
            line: 0,
            seq: None,
            what: "no audit segments".into(),
        });
    }
    let named = segs
        .iter()
        .map(|(index, _)| (*index, segment::name(*index)))
        .collect();
    verify_each(named, key, None, |i| {
        let bytes = segs[i].1;
        Ok(segment::Lines::new(bytes, 0, bytes.len() as u64))
    })
}

/// Walks non-empty `segs` (index and the file name failures report) in order; `open(i)` reads
/// the lines of the `i`-th.
fn verify_each<R: std::io::Read>(
    segs: Vec<(u64, String)>,
    key: Option<&VerifyingKey>,
    anchor: Option<(super::anchor::Anchor, Vec<u8>)>,
    mut open: impl FnMut(usize) -> std::io::Result<segment::Lines<R>>,
) -> Result<Report, Failure> {
    let mut st = State {
        key: key.copied(),
        key_id: key.map(keys::key_id),
        log_id: None,
        expect_seq: 0,
        prev: GENESIS,
        prev_at: String::new(),
        frontier: Frontier::new(),
        report: Report {
            signatures_checked: key.is_some(),
            ..Report::default()
        },
    };
    let last_index = segs.last().map_or(0, |s| s.0);
    let mut prev_name: Option<String> = None;
    if let Some((a, bytes)) = &anchor {
        let file = segs.first().map(|s| s.1.clone()).unwrap_or_default();
        start_at_anchor(&mut st, a, bytes).map_err(|what| Failure {
            file,
            line: 0,
            seq: None,
            what: format!("anchor-{:06}.json: {what}", a.first_segment),
        })?;
        prev_name = Some(segment::name(a.first_segment - 1));
    }
    let mut prev_index: Option<u64> = None;
    for (i, (index, file)) in segs.iter().enumerate() {
        let index = *index;
        let name = segment::name(index);
        let file = file.clone();
        if let Some(p) = prev_index {
            if index != p + 1 {
                return Err(Failure {
                    file,
                    line: 0,
                    seq: None,
                    what: format!("segment(s) missing between {} and {name}", segment::name(p)),
                });
            }
        }
        let mut lines = open(i).map_err(|e| Failure {
            file: file.clone(),
            line: 0,
            seq: None,
            what: format!("cannot read: {e}"),
        })?;
        let mut first = true;
        loop {
            let line = match lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure {
                        file,
                        line: 0,
                        seq: None,
                        what: format!("read error: {e}"),
                    })
                }
            };
            let at = |seq: Option<u64>, what: String| Failure {
                file: file.clone(),
                line: line.number,
                seq,
                what,
            };
            let v = check_line(&mut st, &line).map_err(|(seq, what)| at(seq, what))?;
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
            let seq = v.get("seq").and_then(Value::as_u64);
            if first != (kind == Kind::SegmentStart.as_str()) {
                return Err(at(
                    seq,
                    if first {
                        format!("the first record of {name} is `{kind}`, not `segment_start` (records removed from the start of the segment?)")
                    } else {
                        "a `segment_start` record in the middle of a segment".into()
                    },
                ));
            }
            if first {
                if v.get("segment").and_then(Value::as_str) != Some(name.as_str()) {
                    return Err(at(seq, format!("segment_start names segment {:?}, but the file is {name} (segments renamed?)", v.get("segment").and_then(Value::as_str).unwrap_or(""))));
                }
                let pv = v.get("prev_segment").and_then(Value::as_str);
                if pv != prev_name.as_deref() {
                    return Err(at(
                        seq,
                        format!(
                            "segment_start says the previous segment is {:?}, but it is {:?}",
                            pv, prev_name
                        ),
                    ));
                }
            }
            first = false;
            st.prev_at = format!("{file}:{} seq={}", line.number, seq.unwrap_or_default());
        }
        // Records end at the first zero byte; the space allocated after them is all zeros.
        let end = lines.end_of_records();
        let after_end = match lines.data_after_end() {
            Ok(None) => None,
            Ok(Some(at)) => Some(format!("data at byte {at}, after the records end at byte {end} (zero bytes between): records were zeroed out, or a crash tore a write and the gateway has not been restarted since")),
            Err(e) => Some(format!("read error: {e}")),
        };
        if let Some(what) = after_end {
            return Err(Failure {
                file,
                line: 0,
                seq: None,
                what,
            });
        }
        if first {
            // An empty segment is only what a crash right after rotation leaves.
            if index != last_index {
                return Err(Failure {
                    file,
                    line: 0,
                    seq: None,
                    what: "empty segment in the middle of the log (records removed?)".into(),
                });
            }
        }
        prev_name = Some(name);
        prev_index = Some(index);
        st.report.segments += 1;
    }
    if st.report.records == 0 {
        let last = segs.last().map(|s| s.1.clone()).unwrap_or_default();
        return Err(Failure {
            file: last,
            line: 0,
            seq: None,
            what: "the log holds no records (emptied?)".into(),
        });
    }
    st.report.log_id = st.log_id.unwrap_or_default();
    let end = st.report.first_seq + st.report.records;
    st.report.uncovered = match &st.report.last_checkpoint {
        Some((size, _)) => end.saturating_sub(size + 1),
        None => st.report.records,
    };
    let lowest = segs.first().map_or(1, |s| s.0);
    check_retention(&st.report, lowest).map_err(|what| Failure {
        file: segs.first().map(|s| s.1.clone()).unwrap_or_default(),
        line: 0,
        seq: None,
        what,
    })?;
    Ok(st.report)
}

/// The log may start later than segment 1 only as its last `retention` record says: at the
/// segment it retained (with the anchor it names), or one before when the removal was cut short.
fn check_retention(r: &Report, lowest: u64) -> Result<(), String> {
    match (&r.last_retention, lowest) {
        (None, 1) => Ok(()),
        (None, l) => Err(format!(
            "the log starts at segment {l}, but no retention record says earlier segments were removed"
        )),
        (Some((first, sha)), l) if *first == l => match &r.anchor_sha256 {
            Some(a) if a == sha => Ok(()),
            _ => Err(format!(
                "the anchor of segment {l} is not the one the last retention record names (sha256 {sha})"
            )),
        },
        // The record was written, the segment not yet removed (a crash in between).
        (Some((first, _)), l) if *first == l + 1 => Ok(()),
        (Some((first, _)), l) => Err(format!(
            "the log starts at segment {l}, but its last retention record kept segments from {first} on: segments were removed beyond what retention recorded"
        )),
    }
}

/// Takes the chain state from a retention anchor: its seal's signature under the key chain its
/// certificates continue from the first key, its root over its frontier.
fn start_at_anchor(st: &mut State, a: &super::anchor::Anchor, bytes: &[u8]) -> Result<(), String> {
    let s = super::anchor::start(a)?;
    st.log_id = Some(a.log_id.clone());
    for cert in &a.certificates {
        let v: Value = serde_json::from_str(cert).map_err(|e| format!("certificate: {e}"))?;
        let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let root = v
            .get("root")
            .and_then(Value::as_str)
            .and_then(from_hex)
            .ok_or("certificate without root")?;
        check_seal_signature(st, &v, seq, &root)
            .map_err(|e| format!("certificate at seq {seq}: {e}"))?;
    }
    let seal_seq = s.seal.get("seq").and_then(Value::as_u64).unwrap_or(0);
    if s.seal.get("kind").and_then(Value::as_str) == Some(Kind::Checkpoint.as_str()) {
        let root = s
            .seal
            .get("root")
            .and_then(Value::as_str)
            .and_then(from_hex)
            .ok_or("seal without root")?;
        check_seal_signature(st, &s.seal, seal_seq, &root).map_err(|e| format!("the seal: {e}"))?;
    }
    st.expect_seq = s.next_seq;
    st.prev = s.prev;
    st.frontier = s.frontier;
    st.prev_at = format!("the anchor's seal (seq {seal_seq})");
    st.report.first_seq = s.next_seq;
    st.report.anchor_sha256 = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)));
    Ok(())
}

fn check_line(st: &mut State, line: &segment::Line) -> Result<Value, (Option<u64>, String)> {
    if line.too_long {
        return Err((
            None,
            format!(
                "line longer than {} bytes: not a record",
                segment::MAX_LINE_BYTES
            ),
        ));
    }
    if !line.complete {
        return Err((
            None,
            "truncated record (the file ends without a newline)".into(),
        ));
    }
    let v: Value = serde_json::from_slice(&line.bytes).map_err(|e| {
        (
            None,
            format!("not valid JSON ({e}): the record was altered or damaged"),
        )
    })?;
    let seq = v.get("seq").and_then(Value::as_u64);
    let bad = |what: String| (seq, what);
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    match canonical::to_vec(&v) {
        Ok(c) if c == line.bytes => {}
        Ok(_) => {
            return Err(bad(
                "not in canonical JSON form (the record was edited)".into()
            ))
        }
        Err(e) => return Err(bad(format!("not canonical: {e}"))),
    }
    if v.get("v").and_then(Value::as_u64) != Some(FORMAT_VERSION) {
        return Err(bad(format!(
            "unknown format version `v` (expected {FORMAT_VERSION})"
        )));
    }
    let log_id = v
        .get("log_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no `log_id`".into()))?;
    match &st.log_id {
        None => st.log_id = Some(log_id.to_string()),
        Some(id) if id != log_id => {
            return Err(bad(format!(
            "log_id {log_id} differs from the log's {id} (records from another log spliced in?)"
        )))
        }
        Some(_) => {}
    }
    let Some(seq_n) = seq else {
        return Err(bad("no `seq`".into()));
    };
    if seq_n != st.expect_seq {
        return Err(bad(format!(
            "seq is {seq_n}, expected {}: a record is missing, duplicated or out of order",
            st.expect_seq
        )));
    }
    let prev = v.get("prev").and_then(Value::as_str).and_then(from_hex);
    if prev != Some(st.prev) {
        let what = if st.expect_seq == 0 {
            "the first record's `prev` is not 64 zeros".to_string()
        } else {
            format!(
                "`prev` does not match the hash of the preceding record ({}): that record or this one was altered",
                st.prev_at
            )
        };
        return Err(bad(what));
    }
    if v.get("ts")
        .and_then(Value::as_str)
        .and_then(parse_ts_ms)
        .is_none()
    {
        return Err(bad(
            "`ts` is not an RFC 3339 UTC timestamp with milliseconds".into(),
        ));
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if Kind::parse(kind).is_none() {
        return Err(bad(format!("unknown kind `{kind}`")));
    }
    if kind == Kind::Retention.as_str() {
        let first = v.get("first_retained").and_then(Value::as_u64).unwrap_or(0);
        let sha = v
            .get("anchor_sha256")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        st.report.last_retention = Some((first, sha));
    }
    if kind == Kind::Checkpoint.as_str() || kind == Kind::KeyRotation.as_str() {
        check_checkpoint(st, &v, seq_n).map_err(bad)?;
        st.report.seals.insert(seq_n, line.bytes.clone());
        st.report.last_seal_ts = v.get("ts").and_then(Value::as_str).map(str::to_owned);
    }
    st.frontier.push(leaf_hash(&line.bytes));
    st.prev = record_hash(&line.bytes);
    st.expect_seq += 1;
    st.report.records += 1;
    Ok(v)
}

fn check_checkpoint(st: &mut State, v: &Value, seq: u64) -> Result<(), String> {
    let size = v.get("tree_size").and_then(Value::as_u64);
    if size != Some(seq) {
        return Err(format!(
            "checkpoint tree_size {size:?} is not its own seq {seq}"
        ));
    }
    let root_hex = v.get("root").and_then(Value::as_str).unwrap_or_default();
    let expect = st.frontier.root();
    if from_hex(root_hex) != Some(expect) {
        return Err(format!(
            "checkpoint root {root_hex} differs from the root {} recomputed from records 0..{seq}: an earlier record was altered",
            to_hex(&expect)
        ));
    }
    check_seal_signature(st, v, seq, &expect)?;
    st.report.checkpoints += 1;
    st.report.last_checkpoint = Some((seq, root_hex.to_string()));
    Ok(())
}

/// The seal `v` (checkpoint or key rotation over `root` at `seq`) is signed by the key in force;
/// a rotation then puts the key it certifies in force.
fn check_seal_signature(st: &mut State, v: &Value, seq: u64, root: &Hash) -> Result<(), String> {
    let rotation = v.get("kind").and_then(Value::as_str) == Some(Kind::KeyRotation.as_str());
    let key_id = v.get("key_id").and_then(Value::as_str).unwrap_or_default();
    let sig = v.get("sig").and_then(Value::as_str).unwrap_or_default();
    if let Some(want) = &st.key_id {
        if key_id != want {
            let whose = if st.report.rotations == 0 {
                "the given public key".to_owned()
            } else {
                "the key the last key_rotation certified".to_owned()
            };
            return Err(format!(
                "checkpoint is signed by key id {key_id}, not by {whose} ({want}): re-signed with another key (a key found on the host signs only its own epoch)"
            ));
        }
    }
    let log_id = st.log_id.clone().unwrap_or_default();
    if rotation {
        let next_hex = v
            .get("next_public_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let next_id = v
            .get("next_key_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(next) = epochs::parse_public(next_hex) else {
            return Err("key_rotation has no valid `next_public_key`".into());
        };
        if keys::key_id(&next) != next_id {
            return Err(format!(
                "key_rotation's next_key_id {next_id} is not the id of its next_public_key ({})",
                keys::key_id(&next)
            ));
        }
        if let Some(key) = &st.key {
            if epochs::verify(key, &log_id, seq, root, next_hex, sig).is_none() {
                return Err(
                    "key_rotation signature does not verify with the current key (forged rotation)"
                        .into(),
                );
            }
            st.key = Some(next);
        }
        st.key_id = Some(next_id.to_owned());
        st.report.rotations += 1;
    } else if let Some(key) = &st.key {
        if !checkpoint::verify(key, &log_id, seq, root, sig) {
            return Err(
                "checkpoint signature does not verify with the public key (forged checkpoint)"
                    .into(),
            );
        }
    }
    Ok(())
}
