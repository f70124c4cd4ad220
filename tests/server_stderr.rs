//! A server's stderr cannot fill the disk or forge the gateway's log (issue 30), with process
//! servers: a flood is held to the server's `log_rate` and summarized, /metrics counts it, the
//! gateway's memory stays flat and a neighbour keeps answering; lines shaped like the gateway's
//! own, with line breaks and ANSI escapes, stay escaped and attributed in both log formats.
//! The Docker variant of the flood is tests/docker_stderr.rs.

mod common;
mod stderr_support;

use std::time::Duration;

use common::client::{tool_text, Mcp, LATEST};
use common::{fixture_bin, peer, Gateway};
use serde_json::json;
use stderr_support::{assert_bounded, flood, noisy_script, LOG_RATE};

fn policy(python: &std::path::Path) -> String {
    format!(
        r#"
[gateway]
server_log_rate = {LOG_RATE}

[servers.noisy]
runtime = "process"
command = "{python}"
args = ["{script}"]

[servers.quiet]
runtime = "process"
command = "{fixture}"
"#,
        python = python.display(),
        script = noisy_script().display(),
        fixture = fixture_bin().display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_server_flooding_stderr_is_held_to_its_budget() {
    let Some(python) = peer("venv/bin/python") else {
        return;
    };
    let gw = Gateway::start(&policy(&python));
    let f = flood(&gw, 300_000).await;
    assert_bounded(&f);
}

/// Starts the gateway in `format`, has server `noisy` write its forged lines, returns the log.
async fn forged_log(format: &str) -> Option<String> {
    let python = peer("venv/bin/python")?;
    let gw = Gateway::start_with(&policy(&python), &[("PORTCULLIS_LOG_FORMAT", format)]);
    let mut client = Mcp::new(&gw.url);
    client.initialize(LATEST).await;
    let r = client.call_tool("noisy__forge", json!({})).await;
    assert_eq!(tool_text(&r), "forged", "{r}");
    gw.wait_for_log("forge done", 1, Duration::from_secs(30));
    Some(gw.stderr())
}

/// Whether a log holds a character that would break a line, recolour a terminal or reverse text.
fn has_raw_controls(s: &str) -> bool {
    s.chars()
        .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lines_and_ansi_escapes_stay_escaped_and_attributed_in_text_logs() {
    let Some(log) = forged_log("pretty").await else {
        return;
    };
    assert!(
        !has_raw_controls(&log),
        "raw control characters in the log:\n{log:?}"
    );
    let prefix = "  INFO portcullis::upstream::stderr: server=noisy ";
    let from_noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("server=other") || l.contains("FATAL") || l.contains("forge done"))
        .collect();
    assert_eq!(from_noisy.len(), 4, "{log}");
    for l in &from_noisy {
        // The gateway's own timestamp and level come first, then the server's name, then what
        // it wrote: a fake timestamp and ERROR level never start a line.
        let (stamp, _) = l
            .split_once(prefix)
            .unwrap_or_else(|| panic!("not attributed to noisy: {l}"));
        assert!(
            !stamp.contains(' ') && !stamp.starts_with("2026-12-05T10:00:00"),
            "{l}"
        );
    }
    assert!(
        log.contains(r"server=noisy ok\r2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other forged"),
        "{log}"
    );
    assert!(
        log.contains(r"server=noisy \x1b[2J\x1b[1;31mFATAL\x1b[0m \u{9b}31m \u{202e} reversed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lines_and_ansi_escapes_stay_escaped_and_attributed_in_json_logs() {
    let Some(log) = forged_log("json").await else {
        return;
    };
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let mut from_noisy = 0;
    for r in &records {
        let message = r["fields"]["message"].as_str().unwrap_or_default();
        // Decoded, no message holds a control character: `jq -r .fields.message` prints one
        // line per record, and no terminal sequence.
        assert!(!has_raw_controls(message) && !message.contains('\n'), "{r}");
        assert_ne!(r["fields"]["server"], "other", "a forged attribution: {r}");
        if r["target"] == "portcullis::upstream::stderr" {
            assert_eq!(r["level"], "INFO", "{r}");
            from_noisy += usize::from(r["fields"]["server"] == "noisy");
        }
    }
    assert_eq!(from_noisy, 5, "{log}");
    let messages: Vec<&str> = records
        .iter()
        .filter_map(|r| r["fields"]["message"].as_str())
        .collect();
    for expected in [
        r"ok\r2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other forged",
        "2026-12-05T10:00:00.000000Z ERROR portcullis::audit: level=ERROR server=other audit log lost",
        r"\x1b[2J\x1b[1;31mFATAL\x1b[0m \u{9b}31m \u{202e} reversed",
    ] {
        assert!(messages.contains(&expected), "{expected} not in {messages:#?}");
    }
}
