//! `portcullis audit keygen|verify|tail|prove|verify-proof|export|report`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use crate::audit::{export, keys, prove, report, segment, verify};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write an Ed25519 checkpoint key pair: PATH (private, 0600) and PATH.pub (hex).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a log offline: seq continuity, hash links, checkpoint roots and signatures.
    /// Exits 0 when intact, 1 naming the first bad record as FILE:LINE seq=N otherwise.
    Verify {
        /// Public key file (from `audit keygen`, or signing.key.pub): the log's FIRST key. Later
        /// epochs' keys are followed through the log's key_rotation certificates. Without it
        /// the key in DIR is used, with a warning, and without either signatures are not checked.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// A witness (file, or directory of witness-LOG_ID.jsonl files): fails when the log lacks
        /// a checkpoint the witness holds, or holds a different one (cut tail, rollback, fork).
        /// May be given several times.
        #[arg(long)]
        witness: Vec<PathBuf>,
        /// Fails when the log's last signed checkpoint is older than TIME (RFC 3339, e.g.
        /// 2026-12-05T18:00:00Z): the gateway is known to have run until then.
        #[arg(long, value_name = "TIME", conflicts_with = "now")]
        expect_until: Option<String>,
        /// `--expect-until` now, less `--grace` (default 120s: a running log seals at least
        /// every checkpoint_interval while it gets records).
        #[arg(long)]
        now: bool,
        #[arg(long, default_value = "120s", value_parser = crate::policy::units::parse_duration)]
        grace: Duration,
        /// One log directory, or several (a fleet's replicas, each with its own chain and
        /// keys): each is verified on its own and reported on its own line; the command fails
        /// if any fails. --pubkey and --witness apply to a single directory only.
        #[arg(required = true)]
        dir: Vec<PathBuf>,
    },
    /// Turn what a SIEM stored (an rsyslog file, a Splunk HEC export as JSON lines, CEF lines)
    /// into a witness file for `audit verify --witness`.
    WitnessImport {
        /// Where to write the witness (JSON lines of seal records).
        #[arg(long)]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
    /// Print records readably, optionally following new ones.
    Tail {
        #[arg(long, short)]
        follow: bool,
        /// Show only this kind (call, result, denied, checkpoint, ...).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        client: Option<String>,
        /// Number of past records to show first (0 = all).
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        dir: PathBuf,
    },
    /// Print an RFC 9162 inclusion proof of record N against the latest checkpoint (JSON).
    Prove {
        #[arg(long)]
        seq: u64,
        dir: PathBuf,
    },
    /// Check a proof printed by `audit prove` (FILE, or - for stdin).
    VerifyProof {
        #[arg(long)]
        pubkey: Option<PathBuf>,
        proof: PathBuf,
    },
    /// Print records with from <= seq <= to as JSON Lines or CEF.
    Export {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        dir: PathBuf,
    },
    /// A compliance report: verification (as `audit verify`), calls per client, server and tool
    /// over time, refusals by reason, egress denials, policy reloads, slowest and failing tools.
    /// HTML is one self-contained page (no script, no external assets). Exits 1 when the log
    /// fails verification (the report is still written, and says so first).
    Report {
        /// Start of the window (RFC 3339, e.g. 2026-12-01T00:00:00Z); default: the first record.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End of the window (exclusive); default: after the last record.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Where to write the report; default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
        format: ReportFormat,
        /// As for `audit verify`: the auditor's copy of the log's first public key.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// As for `audit verify`; may be given several times.
        #[arg(long)]
        witness: Vec<PathBuf>,
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Cef,
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Keygen { out } => keygen(&out),
        AuditCommand::Verify {
            pubkey,
            witness,
            expect_until,
            now,
            grace,
            dir,
        } => {
            let until = match (expect_until, now) {
                (Some(t), _) => match crate::audit::record::parse_rfc3339_ms(&t) {
                    Some(ms) => Some((ms, t)),
                    None => {
                        eprintln!("error: --expect-until `{t}` is not an RFC 3339 UTC time like 2026-12-05T18:00:00Z");
                        return ExitCode::from(2);
                    }
                },
                (None, true) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .saturating_sub(grace);
                    let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
                    Some((
                        ms,
                        format!(
                            "{} (now less {grace:?})",
                            crate::audit::record::format_ts(std::time::UNIX_EPOCH + now)
                        ),
                    ))
                }
                (None, false) => None,
            };
            verify_dirs(pubkey.as_deref(), &dir, &witness, until)
        }
        AuditCommand::WitnessImport { out, files } => witness_import(&out, &files),
        AuditCommand::Tail {
            follow,
            kind,
            server,
            client,
            lines,
            dir,
        } => tail(
            &dir,
            follow,
            &Filter {
                kind,
                server,
                client,
            },
            lines,
        ),
        AuditCommand::Prove { seq, dir } => match prove::prove(&dir, seq) {
            Ok(p) => match serde_json::to_string_pretty(&p) {
                Ok(s) => {
                    out(&format!("{s}\n"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            },
            Err(e) => fail(&e),
        },
        AuditCommand::Report {
            from,
            to,
            out,
            format,
            pubkey,
            witness,
            dir,
        } => super::audit_report::run(
            &dir,
            from.as_deref(),
            to.as_deref(),
            out.as_deref(),
            format,
            pubkey.as_deref(),
            &witness,
        ),
        AuditCommand::VerifyProof { pubkey, proof } => verify_proof(pubkey.as_deref(), &proof),
        AuditCommand::Export {
            from,
            to,
            format,
            dir,
        } => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let r = export::each_record(&dir, from, to, |bytes, v| match format {
                ExportFormat::Jsonl => {
                    w.write_all(bytes)?;
                    w.write_all(b"\n")
                }
                ExportFormat::Cef => writeln!(w, "{}", export::to_cef(v)),
            });
            let _ = w.flush();
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

fn keygen(path: &Path) -> ExitCode {
    let key = match keys::generate() {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    match keys::write_pair(path, &key) {
        Ok(()) => {
            out(&format!(
                "wrote {} (private, mode 0600) and {} (public); key id {}\n",
                path.display(),
                keys::pub_path(path).display(),
                keys::key_id(&key.verifying_key())
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `audit verify DIR...`: every replica's log on its own (they are separate chains), then
/// one summary line when there are several.
fn verify_dirs(
    pubkey: Option<&Path>,
    dirs: &[PathBuf],
    witnesses: &[PathBuf],
    until: Option<(u64, String)>,
) -> ExitCode {
    if let [dir] = dirs {
        return verify_cmd(pubkey, dir, witnesses, until);
    }
    if pubkey.is_some() || !witnesses.is_empty() {
        eprintln!("error: each replica's log has its own key and witnesses: give --pubkey and --witness with one directory at a time");
        return ExitCode::from(2);
    }
    let failed: Vec<String> = dirs
        .iter()
        .filter(|d| verify_cmd(None, d, &[], until.clone()) != ExitCode::SUCCESS)
        .map(|d| d.display().to_string())
        .collect();
    if failed.is_empty() {
        out(&format!("all {} logs verified\n", dirs.len()));
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "FAILED: {} of {} logs: {}",
            failed.len(),
            dirs.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}

fn verify_cmd(
    pubkey: Option<&Path>,
    dir: &Path,
    witnesses: &[PathBuf],
    until: Option<(u64, String)>,
) -> ExitCode {
    let key = match report::verifying_key(pubkey, dir) {
        Ok((k, source)) => {
            match &source {
                report::KeySource::Given(_) => {}
                report::KeySource::LogDir(p) => eprintln!("warning: using {} from the log directory itself; whoever can rewrite the log can replace it too, so pass --pubkey with a copy kept elsewhere", p.display()),
                report::KeySource::Missing(p) => eprintln!("warning: no --pubkey and no {}: checkpoint signatures are NOT checked (chain and Merkle roots are)", p.display()),
            }
            k
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match verify::verify_dir(dir, key.as_ref()) {
        Ok(r) => {
            let mut s = format!(
                "{}: ok: {} records in {} segment(s), log {}, {} checkpoint(s)",
                dir.display(),
                r.records,
                r.segments,
                r.log_id,
                r.checkpoints
            );
            if let Some((size, root)) = &r.last_checkpoint {
                s.push_str(&format!(", last covers {size} records with root {root}"));
            }
            if r.signatures_checked {
                if let Some(k) = &key {
                    s.push_str(&format!(
                        ", signatures verified (first key id {}{})",
                        keys::key_id(k),
                        if r.rotations > 0 {
                            format!(", {} key rotation(s) followed", r.rotations)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            out(&format!("{s}\n"));
            let mut failed = false;
            for w in witnesses {
                let checked = crate::audit::witness::read(w)
                    .map_err(|e| e.to_string())
                    .and_then(|seals| {
                        crate::audit::witness::check(&r, w, &seals).map_err(|e| e.to_string())
                    });
                match checked {
                    Ok(c) => out(&format!(
                        "witness {}: ok: {} checkpoint(s) match{}\n",
                        w.display(),
                        c.seals,
                        c.newest
                            .map(|(seq, ts)| format!(", the newest at seq {seq} ({ts})"))
                            .unwrap_or_default()
                    )),
                    Err(e) => {
                        eprintln!("TAMPERED audit log: witness {}: {e}", w.display());
                        failed = true;
                    }
                }
            }
            if let Some((ms, text)) = &until {
                if let Err(e) = crate::audit::witness::expect_until(&r, *ms, text) {
                    eprintln!("INCOMPLETE audit log: {e}");
                    failed = true;
                }
            }
            if r.uncovered > 0 {
                eprintln!("warning: the last {} record(s) come after the last checkpoint: they are hash-chained but not yet signed (a crash, or the log is still being written)", r.uncovered);
            }
            if witnesses.is_empty() && until.is_none() {
                eprintln!("note: records cut off the end at a record boundary are found only with --witness or --expect-until");
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(f) => {
            eprintln!("TAMPERED or damaged audit log: {f}");
            ExitCode::FAILURE
        }
    }
}

fn witness_import(out_path: &Path, files: &[PathBuf]) -> ExitCode {
    let mut text = String::new();
    for f in files {
        match std::fs::read(f) {
            Ok(b) => {
                text.push_str(&String::from_utf8_lossy(&b));
                text.push('\n');
            }
            Err(e) => return fail(&format!("{}: {e}", f.display())),
        }
    }
    let (seals, other) = crate::audit::witness::import(&text);
    if seals.is_empty() {
        return fail(&format!(
            "no checkpoint or key_rotation records in {} line(s): the receiver must store the records (syslog format json or cef, or the HTTP sink's events)",
            other
        ));
    }
    let mut buf = Vec::new();
    for s in &seals {
        buf.extend_from_slice(&s.line);
        buf.push(b'\n');
    }
    if let Err(e) = std::fs::write(out_path, buf) {
        return fail(&format!("{}: {e}", out_path.display()));
    }
    let logs: std::collections::BTreeSet<&str> = seals.iter().map(|s| s.log_id.as_str()).collect();
    out(&format!(
        "wrote {} seal(s) of {} log(s) to {} ({} other line(s) skipped)\n",
        seals.len(),
        logs.len(),
        out_path.display(),
        other
    ));
    ExitCode::SUCCESS
}

fn verify_proof(pubkey: Option<&Path>, proof: &Path) -> ExitCode {
    let text = if proof == Path::new("-") {
        let mut s = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            return fail(&e.to_string());
        }
        s
    } else {
        match std::fs::read_to_string(proof) {
            Ok(s) => s,
            Err(e) => return fail(&format!("{}: {e}", proof.display())),
        }
    };
    let p: prove::Proof = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => return fail(&format!("not a proof: {e}")),
    };
    let key = match pubkey.map(keys::read_verifying).transpose() {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    if key.is_none() {
        eprintln!("warning: no --pubkey: the checkpoint signature is not checked");
    }
    match prove::verify_proof(&p, key.as_ref()) {
        Ok(()) => {
            out(&format!(
                "ok: record seq={} is included in the checkpoint of tree size {} (root {})\n",
                p.seq, p.tree_size, p.root
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("proof does not verify: {e}")),
    }
}

struct Filter {
    kind: Option<String>,
    server: Option<String>,
    client: Option<String>,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        let eq = |want: &Option<String>, k: &str| {
            want.as_deref()
                .is_none_or(|w| v.get(k).and_then(Value::as_str) == Some(w))
        };
        eq(&self.kind, "kind") && eq(&self.server, "server") && eq(&self.client, "client")
    }
}

fn pretty(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut line = format!(
        "{} #{:<7} {:<15}",
        s("ts"),
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("kind")
    );
    for k in ["client", "server", "tool", "item", "method", "outcome"] {
        if !s(k).is_empty() {
            line.push_str(&format!(" {k}={}", s(k)));
        }
    }
    if let Some(c) = v.get("error_code").and_then(Value::as_i64) {
        line.push_str(&format!(" code={c}"));
    }
    if let Some(l) = v.get("latency_us").and_then(Value::as_u64) {
        line.push_str(&format!(" {:.1}ms", l as f64 / 1000.0));
    }
    if let Some(n) = v.get("tree_size").and_then(Value::as_u64) {
        line.push_str(&format!(" tree_size={n} key={}", s("key_id")));
    }
    if !s("detail").is_empty() {
        line.push_str(&format!(" \"{}\"", s("detail").replace(['\n', '\r'], " ")));
    }
    line
}

fn tail(dir: &Path, follow: bool, filter: &Filter, n: usize) -> ExitCode {
    // Where reading stopped: (segment index, byte offset).
    let mut pos: Option<(u64, u64)> = None;
    let mut first = true;
    loop {
        let segs = match segment::list(dir) {
            Ok(s) => s,
            Err(e) => return fail(&format!("{}: {e}", dir.display())),
        };
        let mut shown: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        for (index, path) in &segs {
            let start = match pos {
                Some((i, _)) if *index < i => continue,
                Some((i, off)) if *index == i => off,
                _ => 0,
            };
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start)).is_err() {
                continue;
            }
            let mut lines = segment::Lines::new(f, start, len.saturating_sub(start));
            let mut end = start;
            while let Ok(Some(line)) = lines.next_line() {
                if !line.complete {
                    break;
                }
                end = line.offset + line.bytes.len() as u64 + 1;
                let Ok(v) = serde_json::from_slice::<Value>(&line.bytes) else {
                    continue;
                };
                if filter.matches(&v) {
                    shown.push_back(pretty(&v));
                    if first && n > 0 && shown.len() > n {
                        shown.pop_front();
                    }
                }
            }
            pos = Some((*index, end));
        }
        let text: String = shown.into_iter().map(|l| l + "\n").collect();
        out(&text);
        if !follow {
            return ExitCode::SUCCESS;
        }
        first = false;
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(super) fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

pub(super) fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
