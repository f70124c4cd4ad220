//! What servers write on stderr, as a hostile server would use it: to fill the disk through the
//! gateway's log, to forge the gateway's own log lines, to exhaust its memory with a line that
//! never ends. And the good use of it: telling `/ready` why a server failed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::client::{median_call_ms, tool_text, Mcp, LATEST};
use common::Gateway;
use serde_json::{json, Value};

fn hostile() -> PathBuf {
    common::repo_root().join("tests/hostile/server.py")
}

fn policy(extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.flood]
runtime = "process"
command = "python3"
args = ["{}"]
log_rate = {{ quota = "10/s", burst = 20 }}

[servers.calm]
runtime = "process"
command = "{{fixture}}"
{extra}
"#,
        hostile().display()
    )
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_flooding_server_is_held_to_its_log_budget_and_its_neighbour_keeps_serving() {
    let gw = Gateway::start(&policy(""));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let quiet = median_call_ms(&mut c, "calm__echo", 40).await;
    let rss_before = common::rss_kib(gw.child.id());

    let started = Instant::now();
    let url = gw.url.clone();
    let flood = tokio::spawn(async move {
        let mut f = Mcp::new(&url);
        f.initialize(LATEST).await;
        f.call_tool(
            "flood__flood_stderr",
            json!({"lines": 200_000, "width": 300}),
        )
        .await
    });
    let during = median_call_ms(&mut c, "calm__echo", 40).await;
    let r = flood.await.unwrap();
    assert_eq!(tool_text(&r), "wrote 200000 lines");
    // The rest of the flood is read after the answer; wait until every line is counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (logged, suppressed) = loop {
        let (_, m) = common::http_get(&format!("{}/metrics", gw.base)).unwrap();
        let logged = metric(
            &m,
            "portcullis_server_stderr_lines_total{server=\"flood\",outcome=\"logged\"}",
        );
        let suppressed = metric(
            &m,
            "portcullis_server_stderr_lines_total{server=\"flood\",outcome=\"suppressed\"}",
        );
        if logged + suppressed >= 200_000 || Instant::now() > deadline {
            break (logged, suppressed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(logged + suppressed, 200_000);
    let elapsed = started.elapsed().as_secs_f64();
    let budget = 20.0 + 10.0 * elapsed;
    assert!(
        (logged as f64) <= budget,
        "{logged} lines logged in {elapsed:.1}s, budget {budget}"
    );
    // One summary line per 10 s reports what was held back.
    gw.wait_for_log("lines suppressed", 1, Duration::from_secs(15));
    let log = gw.stderr();
    let in_log = log
        .lines()
        .filter(|l| l.contains("server stderr") && l.contains("server=flood"))
        .count();
    assert_eq!(in_log as u64, logged, "metrics and log disagree");
    common::flood_was_harmless(gw.child.id(), rss_before, quiet, during);
}

async fn forged_log(format: &str) -> String {
    let gw = Gateway::start_with(&policy(""), &[("PORTCULLIS_LOG_FORMAT", format)]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    assert_eq!(
        tool_text(&c.call_tool("flood__forge_log", json!({})).await),
        "forged"
    );
    gw.wait_for_log("red alert", 1, Duration::from_secs(10));
    gw.stderr()
}

#[tokio::test]
async fn a_server_cannot_forge_gateway_log_lines_in_either_format() {
    for format in ["pretty", "json"] {
        let log = forged_log(format).await;
        // No line of the log starts with the forged timestamp or holds a raw escape.
        for line in log.lines() {
            assert!(
                !line.starts_with("2026-01-01"),
                "{format}: forged line: {line}"
            );
            assert!(
                !line.contains('\u{1b}') && !line.contains('\u{7}'),
                "{format}: raw control character: {line:?}"
            );
        }
        let forged: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("audit log deleted"))
            .collect();
        assert_eq!(forged.len(), 1, "{format}: {log}");
        assert!(
            forged[0].contains("flood"),
            "{format}: not attributed: {}",
            forged[0]
        );
        if format == "pretty" {
            // The server's text is one quoted value, so `server=other` inside it is no field.
            assert!(
                forged[0].contains("line=\"2026-01-01T00:00:00.000000Z ERROR portcullis::cli::serve: server=other audit log deleted\""),
                "{}",
                forged[0]
            );
        }
        if format == "json" {
            let v: Value = serde_json::from_str(forged[0]).unwrap();
            assert_eq!(v["fields"]["server"], "flood", "{v}");
            assert_eq!(v["level"], "INFO", "{v}");
            assert!(v["fields"]["line"]
                .as_str()
                .unwrap()
                .contains("ERROR portcullis::cli::serve: server=other"));
        }
        let ansi: Vec<&str> = log.lines().filter(|l| l.contains("red alert")).collect();
        assert!(ansi[0].contains("\\u{1b}[31m"), "{format}: {}", ansi[0]);
    }
}

#[tokio::test]
async fn a_line_that_never_ends_is_cut_and_memory_stays_flat() {
    let gw = Gateway::start(&policy(""));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let before = common::rss_kib(gw.child.id());
    let r = c
        .call_tool("flood__long_line", json!({"bytes": 200 * 1024 * 1024}))
        .await;
    assert_eq!(tool_text(&r), format!("wrote {} bytes", 200 * 1024 * 1024));
    gw.wait_for_log("after the long line", 1, Duration::from_secs(60));
    let log = gw.stderr();
    assert!(log.contains("more bytes]"), "no cut marker");
    let after = common::rss_kib(gw.child.id());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

#[tokio::test]
async fn ready_says_what_a_failed_server_wrote_on_stderr() {
    let gw = Gateway::spawn(
        &format!(
            r#"
[gateway]
listen = "127.0.0.1:0"

[servers.broken]
runtime = "process"
command = "python3"
args = ["{}", "--die-at-start", "3"]
startup_timeout = "600s"
"#,
            hostile().display()
        ),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = common::http_get(&format!("{}/ready", gw.base)).unwrap_or_default();
        if body.contains("last stderr") {
            assert_eq!(status, 503);
            let v: Value = serde_json::from_str(&body).unwrap();
            let why = v["servers"]["broken"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(why.contains("exited with status 3"), "{why}");
            assert!(
                why.contains("fatal: cannot read /etc/hostile/config.toml: permission denied"),
                "{why}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no stderr in /ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
