//! `portcullis audit report`: what an auditor reads. One pass of [`super::verify`] (the same
//! checks as `audit verify`, witnesses included) and one pass of counting
//! ([`collect`]) over the records in a time window, rendered as JSON or as one self-contained
//! HTML page ([`html`], charts from [`svg`]). The log holds strings that clients and servers
//! chose (tool names, URIs, reasons): the HTML escapes every one of them, and the page forbids
//! scripts and every network fetch by its own Content-Security-Policy.

pub mod collect;
pub mod html;
pub mod svg;

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use super::{export, keys, verify, witness, writer::GENERATED_KEY_FILE};
pub use collect::Activity;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Key(String),
    #[error("reading the log: {0}")]
    Read(String),
    #[error("--from {from} is not before --to {to}")]
    Window { from: String, to: String },
}

/// Where the key that checks checkpoint signatures came from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "source", content = "path")]
pub enum KeySource {
    /// The auditor's own copy (`--pubkey`).
    Given(PathBuf),
    /// The public key beside the log: whoever rewrote the log could replace it too.
    LogDir(PathBuf),
    /// No key: signatures are not checked.
    Missing(PathBuf),
}

/// The key `audit verify` and `audit report` check signatures with: `--pubkey`, else the
/// log directory's own public key (weaker; the caller warns), else none.
pub fn verifying_key(
    pubkey: Option<&Path>,
    dir: &Path,
) -> Result<(Option<VerifyingKey>, KeySource), ReportError> {
    if let Some(p) = pubkey {
        return keys::read_verifying(p)
            .map(|k| (Some(k), KeySource::Given(p.to_owned())))
            .map_err(|e| ReportError::Key(e.to_string()));
    }
    let p = keys::pub_path(&dir.join(GENERATED_KEY_FILE));
    Ok(match keys::read_verifying(&p) {
        Ok(k) => (Some(k), KeySource::LogDir(p)),
        Err(_) => (None, KeySource::Missing(p)),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct WitnessCheck {
    pub path: String,
    pub ok: bool,
    pub detail: String,
}

/// What `audit verify` would say about the whole log (not only the window).
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub intact: bool,
    /// The first bad place, as `audit verify` names it.
    pub failure: Option<String>,
    pub log_id: String,
    pub records: u64,
    pub segments: usize,
    pub checkpoints: u64,
    pub rotations: u64,
    pub signatures_checked: bool,
    pub key: KeySource,
    /// Id of the first key (the auditor's), and every key id that signed a checkpoint.
    pub first_key_id: Option<String>,
    pub signing_key_ids: Vec<String>,
    pub last_checkpoint_tree_size: Option<u64>,
    pub last_checkpoint_root: Option<String>,
    pub last_seal_ts: Option<String>,
    /// Records after the last checkpoint: chained, not yet signed.
    pub uncovered: u64,
    /// `seq` of the first record present; above 0 when retention removed older segments.
    pub first_seq: u64,
    pub anchor_sha256: Option<String>,
    pub witnesses: Vec<WitnessCheck>,
}

impl Verification {
    /// Intact chain, and every witness agrees.
    pub fn passed(&self) -> bool {
        self.intact && self.witnesses.iter().all(|w| w.ok)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub generated_at: String,
    pub log_dir: String,
    pub from: String,
    pub to: String,
    pub verification: Verification,
    #[serde(flatten)]
    pub activity: Activity,
}

pub struct Options<'a> {
    pub dir: &'a Path,
    pub pubkey: Option<&'a Path>,
    pub witnesses: &'a [PathBuf],
    /// Window in ms since the epoch; `None`: from the first / to after the last record.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

fn check(
    dir: &Path,
    pubkey: Option<&Path>,
    witnesses: &[PathBuf],
) -> Result<Verification, ReportError> {
    let (key, source) = verifying_key(pubkey, dir)?;
    let first_key_id = key.as_ref().map(keys::key_id);
    let mut v = Verification {
        intact: false,
        failure: None,
        log_id: String::new(),
        records: 0,
        segments: 0,
        checkpoints: 0,
        rotations: 0,
        signatures_checked: false,
        key: source,
        first_key_id,
        signing_key_ids: Vec::new(),
        last_checkpoint_tree_size: None,
        last_checkpoint_root: None,
        last_seal_ts: None,
        uncovered: 0,
        first_seq: 0,
        anchor_sha256: None,
        witnesses: Vec::new(),
    };
    let r = match verify::verify_dir(dir, key.as_ref()) {
        Ok(r) => r,
        Err(f) => {
            v.failure = Some(f.to_string());
            return Ok(v);
        }
    };
    v.intact = true;
    v.log_id.clone_from(&r.log_id);
    v.records = r.records;
    v.segments = r.segments;
    v.checkpoints = r.checkpoints;
    v.rotations = r.rotations;
    v.signatures_checked = r.signatures_checked;
    v.last_checkpoint_tree_size = r.last_checkpoint.as_ref().map(|c| c.0);
    v.last_checkpoint_root = r.last_checkpoint.as_ref().map(|c| c.1.clone());
    v.last_seal_ts.clone_from(&r.last_seal_ts);
    v.uncovered = r.uncovered;
    v.first_seq = r.first_seq;
    v.anchor_sha256.clone_from(&r.anchor_sha256);
    for line in r.seals.values() {
        let id = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|s| s.get("key_id").and_then(Value::as_str).map(str::to_owned));
        if let Some(id) = id {
            if !v.signing_key_ids.contains(&id) {
                v.signing_key_ids.push(id);
            }
        }
    }
    for w in witnesses {
        let checked = witness::read(w)
            .map_err(|e| e.to_string())
            .and_then(|seals| witness::check(&r, w, &seals).map_err(|e| e.to_string()));
        v.witnesses.push(match checked {
            Ok(c) => WitnessCheck {
                path: w.display().to_string(),
                ok: true,
                detail: format!("{} checkpoint(s) match", c.seals),
            },
            Err(e) => WitnessCheck {
                path: w.display().to_string(),
                ok: false,
                detail: e,
            },
        });
    }
    Ok(v)
}

/// Verifies the log and counts the records of the window. A log that fails verification
/// still gets a report (of what it says), with the failure first.
pub fn build(opts: &Options<'_>) -> Result<Report, ReportError> {
    let verification = check(opts.dir, opts.pubkey, opts.witnesses)?;
    // Without an explicit window, the window is the log's own span.
    let (mut first, mut last) = (u64::MAX, 0u64);
    if opts.from_ms.is_none() || opts.to_ms.is_none() {
        export::each_record(opts.dir, 0, u64::MAX, |_, v| {
            if let Some(ms) = v
                .get("ts")
                .and_then(Value::as_str)
                .and_then(super::record::parse_ts_ms)
            {
                first = first.min(ms);
                last = last.max(ms);
            }
            Ok(())
        })
        .map_err(ReportError::Read)?;
    }
    let from = opts
        .from_ms
        .unwrap_or(if first == u64::MAX { 0 } else { first });
    let to = opts
        .to_ms
        .unwrap_or(last.saturating_add(1))
        .max(from.saturating_add(1));
    if let (Some(f), Some(t)) = (opts.from_ms, opts.to_ms) {
        if f >= t {
            return Err(ReportError::Window {
                from: collect::ms_to_ts(f),
                to: collect::ms_to_ts(t),
            });
        }
    }
    let mut c = collect::Collector::new(from, to);
    export::each_record(opts.dir, 0, u64::MAX, |_, v| {
        c.add(v);
        Ok(())
    })
    .map_err(ReportError::Read)?;
    Ok(Report {
        format: "portcullis-audit-report-v1",
        generated_at: crate::audit::record::format_ts(std::time::SystemTime::now()),
        log_dir: opts.dir.display().to_string(),
        from: collect::ms_to_ts(from),
        to: collect::ms_to_ts(to),
        verification,
        activity: c.finish(),
    })
}
