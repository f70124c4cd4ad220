//! `portcullis audit report`: a log written by the real gateway (calls, refusals of several
//! kinds, a policy reload), its JSON numbers checked against the records themselves, and the
//! HTML rendered by headless Chromium (Debian `chromium`): it renders offline, escapes the
//! strings clients chose, and a tampered log says so on its first screen.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::client::{Mcp, LATEST};
use common::{audit_records as records, token_hash, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "pcs_alice-report-token-for-tests-only-0000000000";
const BOB: &str = "pcs_bob-report-token-for-tests-only-11111111111111";
/// What a hostile client puts where the report shows it; if the page ran it, the title changes.
const HOSTILE: &str = "x://<script>document.title='pwned'</script><img src=x>";

fn policy(bob_allow: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[audit]
dir = "{{tmp}}/audit"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
tool_rates = {{ pid = {{ quota = "1/hour", burst = 1 }} }}

[clients.alice]
token_sha256 = "{}"
allow = ["fixture__echo", "fixture__pid"]

[clients.bob]
token_sha256 = "{}"
allow = [{bob_allow}]
"#,
        token_hash(ALICE),
        token_hash(BOB)
    )
}

async fn client(gw: &Gateway, token: &str) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(token.to_owned());
    c.initialize(LATEST).await;
    c
}

fn report(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::gateway_bin())
        .args(["audit", "report"])
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a log through the gateway and returns its folder (kept by the returned tempdir).
async fn write_log() -> (tempfile::TempDir, PathBuf) {
    let mut gw = Gateway::start_with(
        &policy(r#""fixture__echo""#),
        &[("PORTCULLIS_NO_WATCH", "true")],
    );
    let mut alice = client(&gw, ALICE).await;
    for i in 0..3 {
        alice
            .call_tool("echo", json!({"text": format!("hi {i}")}))
            .await;
    }
    alice.call_tool("pid", json!({})).await;
    let limited = alice.call_tool("pid", json!({})).await;
    assert_eq!(limited["error"]["code"], -32014, "{limited}");
    let mut bob = client(&gw, BOB).await;
    bob.call_tool("echo", json!({"text": "bob"})).await;
    let forbidden = bob.call_tool("pid", json!({})).await;
    assert!(forbidden.get("error").is_some(), "{forbidden}");
    let hostile = bob.request("resources/read", json!({"uri": HOSTILE})).await;
    assert!(hostile.get("error").is_some(), "{hostile}");
    // A request without a valid token.
    let mut nobody = Mcp::new(&gw.url);
    nobody.bearer = Some("pcs_wrong".into());
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    assert_eq!(nobody.post(&init).await.status, 401);
    // A reload that lets bob call pid.
    gw.write_policy(&policy(r#""fixture__echo", "fixture__pid""#));
    gw.sighup();
    gw.wait_for_log("policy reloaded", 1, Duration::from_secs(30));
    let mut bob = client(&gw, BOB).await;
    let ok = bob.call_tool("pid", json!({})).await;
    assert!(ok.get("result").is_some(), "{ok}");
    gw.terminate(Duration::from_secs(30));
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("audit");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(gw.dir().join("audit")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    (keep, dir)
}

fn count(recs: &[Value], f: impl Fn(&Value) -> bool) -> u64 {
    recs.iter().filter(|r| f(r)).count() as u64
}

/// Headless Chromium, kept off the network (a closed proxy port, no name resolution).
fn chromium(args: &[&str], page: &Path) -> Option<(bool, String, String)> {
    let found = Command::new("chromium").arg("--version").output().is_ok();
    if !found {
        let msg = "chromium is missing: run `bash tests/setup/install-deps.sh system`";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPING the browser checks: {msg} !!!!!!!!\n");
        return None;
    }
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_the_log_says_and_renders_offline_with_hostile_names_escaped() {
    let (keep, dir) = write_log().await;
    let recs = records(&dir);

    // JSON: every number against the records themselves.
    let (ok, json_text, err) = report(&dir, &["--format", "json"]);
    assert!(ok, "report failed: {err}");
    let r: Value = serde_json::from_str(&json_text).unwrap();
    let v = &r["verification"];
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["checkpoints"].as_u64().unwrap() >= 1);
    assert_eq!(v["records"].as_u64().unwrap(), recs.len() as u64);
    assert_eq!(v["signing_key_ids"].as_array().unwrap().len(), 1, "{v}");
    let calls = count(&recs, |r| r["kind"] == "call");
    assert_eq!(r["totals"]["calls"].as_u64().unwrap(), calls);
    assert_eq!(
        calls,
        3 + 1 + 1 + 1,
        "3 echo + pid by alice, echo + pid by bob"
    );
    assert_eq!(r["calls_by_client"]["alice"], 4);
    assert_eq!(r["calls_by_client"]["bob"], 2);
    assert_eq!(r["calls_by_tool"]["fixture/echo"], 4);
    let denied = count(&recs, |r| r["kind"] == "denied");
    assert_eq!(r["totals"]["refused"].as_u64().unwrap(), denied);
    let reasons = &r["refusals_by_reason"];
    assert_eq!(reasons["rate_limited"], 1, "{reasons}");
    assert_eq!(
        reasons["not_allowed"].as_u64().unwrap(),
        count(&recs, |r| r["kind"] == "denied"
            && r["error_code"] == -32013),
        "{reasons}"
    );
    assert!(
        reasons["not_allowed"].as_u64().unwrap() >= 2,
        "pid and the hostile read: {reasons}"
    );
    assert_eq!(reasons["unauthenticated"], 1, "{reasons}");
    assert_eq!(r["totals"]["policy_reloads"], 1);
    let reload = r["policy_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "policy_reload")
        .unwrap();
    let rec = recs.iter().find(|r| r["kind"] == "policy_reload").unwrap();
    let detail: Value = serde_json::from_str(rec["detail"].as_str().unwrap()).unwrap();
    assert_eq!(reload["sha256_to"], detail["sha256"]["to"]);
    assert_eq!(reload["sha256_from"], detail["sha256"]["from"]);
    assert_ne!(reload["sha256_from"], reload["sha256_to"]);
    let ok_results = count(&recs, |r| r["kind"] == "result" && r["outcome"] == "ok");
    assert_eq!(r["totals"]["results_ok"].as_u64().unwrap(), ok_results);
    assert!(
        r["tools"]["fixture/echo"]["latency_max_us"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(r["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["item"] == HOSTILE));

    // A window that ends before the first record counts nothing.
    let (_, empty, _) = report(
        &dir,
        &[
            "--format",
            "json",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2000-01-02T00:00:00Z",
        ],
    );
    let empty: Value = serde_json::from_str(&empty).unwrap();
    assert_eq!(empty["totals"]["calls"], 0);
    assert_eq!(empty["verification"]["intact"], true);

    // HTML: self-contained, escaped, rendered by a real browser.
    let page = keep.path().join("report.html");
    let (ok, _, err) = report(&dir, &["--out", page.to_str().unwrap()]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains(HOSTILE) && !html.contains("<script") && !html.contains("<img"));
    assert!(html.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"));
    // No tag attribute and no style rule names anything to fetch (the hostile text is
    // escaped, so its `src=` is text, not markup).
    let tags: Vec<&str> = html
        .split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap())
        .collect();
    let style = html
        .split("<style>")
        .nth(1)
        .unwrap()
        .split("</style>")
        .next()
        .unwrap();
    for fetch in [
        "src=", "href=", "url(", "@import", "http:", "https:", "action=",
    ] {
        assert!(
            tags.iter().all(|t| !t.contains(fetch)) && !style.contains(fetch),
            "the page could fetch something: {fetch}"
        );
    }
    assert!(
        html.contains("default-src 'none'"),
        "the page's CSP forbids every fetch"
    );
    let Some((ok, dom, err)) = chromium(&["--dump-dom"], &page) else {
        return;
    };
    assert!(ok, "chromium failed: {err}");
    assert!(dom.contains("Chain intact"), "{dom}");
    assert!(dom.contains(&format!(r#"id="calls">{calls}<"#)), "{dom}");
    assert!(dom.contains(&format!(r#"id="refused">{denied}<"#)), "{dom}");
    assert!(
        !dom.contains("pwned</title>") && !dom.contains("<title>pwned"),
        "the hostile script ran"
    );
    assert!(
        dom.contains("&lt;script&gt;"),
        "the hostile text is shown as text"
    );
    let shot = keep.path().join("report.png");
    let (ok, _, err) = chromium(
        &[
            "--window-size=1100,1400",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    )
    .unwrap();
    assert!(ok, "{err}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    if let Ok(to) = std::env::var("PORTCULLIS_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, to).unwrap();
    }

    // A tampered log: its report says so first, and the command fails.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .min()
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let forged = text.replacen("\"client\":\"bob\"", "\"client\":\"eve\"", 1);
    assert_ne!(forged, text);
    std::fs::write(&seg, forged).unwrap();
    let tampered = keep.path().join("tampered.html");
    let (ok, _, err) = report(&dir, &["--out", tampered.to_str().unwrap()]);
    assert!(!ok, "a tampered log must fail the command");
    assert!(err.contains("TAMPERED"), "{err}");
    let html = std::fs::read_to_string(&tampered).unwrap();
    let verdict = html.find(r#"id="verdict""#).unwrap();
    assert!(
        verdict < html.find("<h2>").unwrap(),
        "the verdict comes first"
    );
    let (_, dom, _) = chromium(&["--dump-dom"], &tampered).unwrap();
    assert!(dom.contains("TAMPERED OR DAMAGED LOG"), "{dom}");
}
