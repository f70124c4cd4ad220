//! `portcullis audit report`: verification and counts of a log, as HTML or JSON
//! (see [`crate::audit::report`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::audit::{fail, out, ReportFormat};
use crate::audit::report;

pub(super) fn run(
    dir: &Path,
    from: Option<&str>,
    to: Option<&str>,
    out_path: Option<&Path>,
    format: ReportFormat,
    pubkey: Option<&Path>,
    witnesses: &[PathBuf],
) -> ExitCode {
    let mut window = [None, None];
    for (slot, (flag, text)) in window.iter_mut().zip([("--from", from), ("--to", to)]) {
        if let Some(t) = text {
            match crate::audit::record::parse_rfc3339_ms(t) {
                Some(ms) => *slot = Some(ms),
                None => {
                    eprintln!(
                        "error: {flag} `{t}` is not an RFC 3339 UTC time like 2026-12-05T18:00:00Z"
                    );
                    return ExitCode::from(2);
                }
            }
        }
    }
    let built = report::build(&report::Options {
        dir,
        pubkey,
        witnesses,
        from_ms: window[0],
        to_ms: window[1],
    });
    let r = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match format {
        ReportFormat::Html => report::html::render(&r),
        ReportFormat::Json => match serde_json::to_string_pretty(&r) {
            Ok(s) => s + "\n",
            Err(e) => return fail(&e.to_string()),
        },
    };
    match out_path {
        Some(p) => {
            if let Err(e) = std::fs::write(p, text) {
                return fail(&format!("{}: {e}", p.display()));
            }
        }
        None => out(&text),
    }
    let v = &r.verification;
    if !v.passed() {
        eprintln!(
            "TAMPERED or damaged audit log: {}",
            v.failure
                .clone()
                .or_else(|| v
                    .witnesses
                    .iter()
                    .find(|w| !w.ok)
                    .map(|w| format!("witness {}: {}", w.path, w.detail)))
                .unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
