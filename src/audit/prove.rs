//! RFC 9162 inclusion proofs of one record against the latest checkpoint.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{from_hex, leaf_hash, to_hex, Hash};
use super::merkle::{inclusion_proof, inclusion_proof_after, root_from_inclusion, Frontier};
use super::{checkpoint, keys, segment};

/// Everything an auditor needs to check that one record is in a signed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proof {
    pub log_id: String,
    pub seq: u64,
    /// The record's canonical line; its leaf hash is SHA-256(0x00 || record).
    pub record: String,
    pub leaf_hash: String,
    pub tree_size: u64,
    pub root: String,
    pub checkpoint_seq: u64,
    pub key_id: String,
    pub sig: String,
    /// Sibling hashes, leaf upwards (RFC 9162 section 2.1.3).
    pub path: Vec<String>,
    /// The `key_rotation` records before the checkpoint, in order: each certifies the key
    /// that signs after it, from the log's first key to the checkpoint's.
    #[serde(default)]
    pub certificates: Vec<String>,
}

pub fn prove(dir: &Path, seq: u64) -> Result<Proof, String> {
    let segs = segment::list(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A log shortened by retention: the removed records are known by the anchor's frontier, and
    // their key rotations by its certificates.
    let (prefix, mut rotations) = match segs.first().filter(|(i, _)| *i > 1) {
        Some((first, _)) => {
            let (a, _) = super::anchor::read(dir, *first)?.ok_or_else(|| {
                format!("{} is missing", super::anchor::path(dir, *first).display())
            })?;
            let start = super::anchor::start(&a)?;
            let certs = a
                .certificates
                .iter()
                .map(|c| (0u64, c.clone()))
                .collect::<Vec<_>>();
            (start.frontier, certs)
        }
        None => (Frontier::new(), Vec::new()),
    };
    let base = prefix.size();
    if seq < base {
        return Err(format!(
            "record {seq} was removed by retention (the log starts at seq {base}); restore its archived segment to prove it"
        ));
    }
    let mut leaves: Vec<Hash> = Vec::new();
    let mut record: Option<String> = None;
    let mut latest: Option<Value> = None;
    for (_, path) in &segs {
        let mut lines =
            segment::open_lines(path).map_err(|e| format!("{}: {e}", path.display()))?;
        while let Some(line) = lines
            .next_line()
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            if !line.complete {
                break;
            }
            if base + leaves.len() as u64 == seq {
                record = Some(String::from_utf8_lossy(&line.bytes).into_owned());
            }
            // Cheap pre-filter: only checkpoint and rotation lines are parsed.
            const NEEDLE: &[u8] = b"\"kind\":\"checkpoint\"";
            const ROTATION: &[u8] = b"\"kind\":\"key_rotation\"";
            if line.bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                if let Ok(v) = serde_json::from_slice::<Value>(&line.bytes) {
                    latest = Some(v);
                }
            } else if line.bytes.windows(ROTATION.len()).any(|w| w == ROTATION) {
                rotations.push((
                    base + leaves.len() as u64,
                    String::from_utf8_lossy(&line.bytes).into_owned(),
                ));
            }
            leaves.push(leaf_hash(&line.bytes));
        }
    }
    let record = record.ok_or_else(|| {
        format!(
            "no record with seq {seq} (the log has seq {base}..{})",
            base + leaves.len() as u64
        )
    })?;
    let cp = latest.ok_or("the log has no checkpoint yet")?;
    let get = |k: &str| {
        cp.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let size = cp.get("tree_size").and_then(Value::as_u64).unwrap_or(0);
    if seq >= size {
        return Err(format!(
            "record {seq} is not covered by the latest checkpoint yet (it covers seq 0..{}); retry after the next checkpoint",
            size.saturating_sub(1)
        ));
    }
    let size_us = usize::try_from(size - base).map_err(|_| "tree too large")?;
    let covered = leaves
        .get(..size_us)
        .ok_or("checkpoint tree_size is beyond the log")?;
    let checkpoint_seq = cp.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let certificates = rotations
        .into_iter()
        .filter(|(s, _)| *s < checkpoint_seq)
        .map(|(_, line)| line)
        .collect();
    let idx = usize::try_from(seq - base).map_err(|_| "seq too large")?;
    let path = if base == 0 {
        inclusion_proof(idx, covered)
    } else {
        inclusion_proof_after(seq, &prefix, covered)
    }
    .ok_or("cannot build the proof")?;
    Ok(Proof {
        log_id: get("log_id"),
        seq,
        leaf_hash: to_hex(&covered[idx]),
        record,
        tree_size: size,
        root: get("root"),
        checkpoint_seq,
        key_id: get("key_id"),
        sig: get("sig"),
        path: path.iter().map(to_hex).collect(),
        certificates,
    })
}

/// The key that signs at the proof's checkpoint: `first`, then each key a certificate names,
/// each certificate checked with the key before it.
fn follow_certificates(p: &Proof, first: &VerifyingKey) -> Result<VerifyingKey, String> {
    let mut key = *first;
    for c in &p.certificates {
        let v: Value = serde_json::from_str(c).map_err(|e| format!("certificate: {e}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        let size = v.get("tree_size").and_then(Value::as_u64).unwrap_or(0);
        let root = from_hex(s("root")).ok_or("certificate: malformed root")?;
        if s("log_id") != p.log_id || s("key_id") != keys::key_id(&key) {
            return Err(format!(
                "certificate at tree size {size} is not signed by the key that precedes it"
            ));
        }
        key = super::epochs::verify(&key, &p.log_id, size, &root, s("next_public_key"), s("sig"))
            .ok_or_else(|| format!("certificate at tree size {size} does not verify"))?;
    }
    Ok(key)
}

/// Checks a proof: the record hashes to the leaf, the path leads to the root, the root is signed.
pub fn verify_proof(p: &Proof, key: Option<&VerifyingKey>) -> Result<(), String> {
    let rec: Value =
        serde_json::from_str(&p.record).map_err(|e| format!("record is not JSON: {e}"))?;
    if rec.get("seq").and_then(Value::as_u64) != Some(p.seq) {
        return Err("the record's seq differs from the proof's".into());
    }
    let leaf = leaf_hash(p.record.as_bytes());
    if to_hex(&leaf) != p.leaf_hash {
        return Err("leaf_hash is not the hash of the record".into());
    }
    let path: Option<Vec<Hash>> = p.path.iter().map(|h| from_hex(h)).collect();
    let path = path.ok_or("malformed hash in path")?;
    let root = from_hex(&p.root).ok_or("malformed root")?;
    match root_from_inclusion(p.seq, p.tree_size, &leaf, &path) {
        Some(r) if r == root => {}
        _ => return Err("the inclusion path does not lead to the checkpoint root".into()),
    }
    if let Some(first) = key {
        let k = &follow_certificates(p, first)?;
        if keys::key_id(k) != p.key_id {
            return Err(format!(
                "checkpoint key id {} is not the given key's {}",
                p.key_id,
                keys::key_id(k)
            ));
        }
        if !checkpoint::verify(k, &p.log_id, p.tree_size, &root, &p.sig) {
            return Err("checkpoint signature does not verify".into());
        }
    }
    Ok(())
}
