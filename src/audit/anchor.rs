//! Where a log that retention shortened begins: `DIR/anchor-NNNNNN.json` for its lowest segment.
//!
//! Contract:
//! - An anchor describes the state of the chain just before segment NNNNNN: `next_seq`, the hash
//!   of the record before it (`prev`), the Merkle frontier of every record before it, the seal
//!   that ends the removed part (every segment but the newest ends with a checkpoint or key
//!   rotation) with the frontier it was made over, and every key rotation of the removed part.
//! - Nothing in an anchor is taken on trust: the verifier checks the seal's root against the
//!   anchor's frontier, its signature against the key chain (certificates from the log's first
//!   key), and that pushing the seal gives the anchor's `prev` and frontier; segment NNNNNN's
//!   first record must then link to it. A forged anchor needs a key of an earlier epoch.
//! - The log's `retention` records name each removal and the SHA-256 of the anchor it wrote, so a
//!   segment removed beyond what retention recorded is found (see [`super::verify`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::{from_hex, leaf_hash, record_hash, to_hex, Hash};
use super::merkle::Frontier;

/// Anchor format version.
pub const ANCHOR_VERSION: u64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    pub v: u64,
    pub log_id: String,
    /// The segment this anchor starts.
    pub first_segment: u64,
    /// `seq` of that segment's first record.
    pub next_seq: u64,
    /// Hex hash of the record before it (the seal).
    pub prev: String,
    /// Frontier of records `0..next_seq`.
    pub frontier: Peaks,
    /// The seal ending the removed part: its canonical line.
    pub seal: String,
    /// Frontier of records `0..seal's seq`, which the seal's root covers.
    pub seal_frontier: Peaks,
    /// Every `key_rotation` line of the removed part, in order.
    pub certificates: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peaks {
    pub size: u64,
    /// `[height, hex root]`, largest first.
    pub peaks: Vec<(u32, String)>,
}

impl Peaks {
    pub fn of(f: &Frontier) -> Peaks {
        Peaks {
            size: f.size(),
            peaks: f.peaks().iter().map(|(h, r)| (*h, to_hex(r))).collect(),
        }
    }

    pub fn frontier(&self) -> Option<Frontier> {
        let peaks: Option<Vec<(u32, Hash)>> = self
            .peaks
            .iter()
            .map(|(h, r)| from_hex(r).map(|r| (*h, r)))
            .collect();
        Frontier::from_peaks(self.size, peaks?)
    }
}

pub fn path(dir: &Path, first_segment: u64) -> PathBuf {
    dir.join(format!("anchor-{first_segment:06}.json"))
}

/// The anchor of segment `first_segment`, if the log has one.
pub fn read(dir: &Path, first_segment: u64) -> Result<Option<(Anchor, Vec<u8>)>, String> {
    let p = path(dir, first_segment);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let a: Anchor = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not an anchor: {e}", p.display()))?;
    if a.v != ANCHOR_VERSION || a.first_segment != first_segment {
        return Err(format!(
            "{}: anchor version {} for segment {}, expected version {ANCHOR_VERSION} for segment {first_segment}",
            p.display(),
            a.v,
            a.first_segment
        ));
    }
    Ok(Some((a, bytes)))
}

/// Writes the anchor durably (temporary file, sync, rename, sync the directory); returns the
/// bytes written, whose SHA-256 the `retention` record names.
pub fn write(dir: &Path, a: &Anchor) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(a).map_err(std::io::Error::other)?;
    let p = path(dir, a.first_segment);
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(bytes)
}

/// The chain state an anchor stands for, once its internal consistency holds: the seal's root
/// over `seal_frontier`, and the seal pushed onto it giving `prev` and `frontier`. Signatures are
/// the verifier's business (it holds the keys).
pub struct Start {
    pub next_seq: u64,
    pub prev: Hash,
    pub frontier: Frontier,
    pub seal: serde_json::Value,
}

pub fn start(a: &Anchor) -> Result<Start, String> {
    let seal: serde_json::Value =
        serde_json::from_str(&a.seal).map_err(|e| format!("the anchor's seal is not JSON: {e}"))?;
    let canon = super::canonical::to_vec(&seal).map_err(|e| e.to_string())?;
    if canon != a.seal.as_bytes() {
        return Err("the anchor's seal is not in canonical form".into());
    }
    let seal_seq = seal.get("seq").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
    let mut f = a
        .seal_frontier
        .frontier()
        .ok_or("the anchor's seal_frontier is malformed")?;
    if f.size() != seal_seq {
        return Err(format!(
            "the anchor's seal is at seq {seal_seq} but its frontier covers {} records",
            f.size()
        ));
    }
    let root = seal.get("root").and_then(|v| v.as_str()).and_then(from_hex);
    if root != Some(f.root()) {
        return Err("the anchor's seal root does not match its frontier".into());
    }
    f.push(leaf_hash(a.seal.as_bytes()));
    let prev = record_hash(a.seal.as_bytes());
    if Some(prev) != from_hex(&a.prev) || f.size() != a.next_seq {
        return Err("the anchor's prev or next_seq does not follow from its seal".into());
    }
    let frontier = a
        .frontier
        .frontier()
        .ok_or("the anchor's frontier is malformed")?;
    if frontier.root() != f.root() || frontier.size() != f.size() {
        return Err("the anchor's frontier does not follow from its seal".into());
    }
    Ok(Start {
        next_seq: a.next_seq,
        prev,
        frontier,
        seal,
    })
}

/// The lowest segment index present in `dir` (the log's start), if any.
pub fn lowest_segment(dir: &Path) -> std::io::Result<Option<u64>> {
    Ok(super::segment::list(dir)?.first().map(|(i, _)| *i))
}
