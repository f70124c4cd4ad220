//! A witness over HTTP (`[[audit.witness]] type = "http"`): the running gateway POSTs its seals
//! (checkpoints and key rotations, nothing else) to a receiver off the host, here one on
//! loopback. What the receiver kept, saved as it arrived or passed through `audit
//! witness-import`, is a witness file for `audit verify --witness`, and it finds a cut tail.

mod audit_support;
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_support::receiver::Receiver;
use audit_support::{lines, portcullis, write_lines, Out};
use common::client::{tool_text, Mcp, LATEST};
use common::Gateway;
use serde_json::{json, Value};

const HMAC: &str = "witness-hmac-secret-value-42";

/// Every body the receiver got, its HMAC checked, as the JSON lines it carried.
fn received_lines(rx: &Receiver) -> Vec<String> {
    use hmac::Mac;
    let got = rx.got.lock().expect("lock");
    let mut out = Vec::new();
    for (headers, body) in &got.bodies {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC.as_bytes()).expect("mac");
        mac.update(body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["x-portcullis-signature"], want.as_str());
        let text = String::from_utf8(body.clone()).expect("utf-8 body");
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    out
}

/// The log's segment files, oldest first.
fn segments(audit: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(audit)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segs.sort();
    segs
}

fn verify(audit: &Path, first: &Path, witness: &Path) -> Out {
    let (pk, w) = (first.display().to_string(), witness.display().to_string());
    portcullis(
        &["audit", "verify", "--pubkey", &pk, "--witness", &w],
        audit,
    )
}

#[tokio::test]
async fn an_http_witness_receives_the_seals_and_what_it_kept_finds_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let mut rx = Receiver {
        port: 0,
        got: Arc::default(),
        task: None,
    };
    rx.start().await;
    let extra = format!(
        "key_epoch = \"1s\"\ncheckpoint_interval = \"1s\"\n[[audit.witness]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{}/witness\"\nhmac_secret = \"env:WITNESS_HMAC\"",
        rx.port
    );
    let p = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\ndir = \"{}\"\n{extra}\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n",
        audit.display()
    );
    let mut gw = Gateway::start_with(&p, &[("WITNESS_HMAC", HMAC)]);
    let first = dir.path().join("auditor-copy.pub");
    std::fs::copy(audit.join("signing.key.pub"), &first).unwrap();
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    // Calls over a few epochs, until the receiver holds a key rotation and checkpoints after it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        let text = format!("witnessed call {i}");
        assert_eq!(
            tool_text(&c.call_tool("echo", json!({"text": text})).await),
            text
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kinds: Vec<String> = received_lines(&rx)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        let rotated = kinds.iter().position(|k| k == "key_rotation");
        if rotated.is_some_and(|at| kinds.len() > at + 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the witness got only {kinds:?}");
    }
    let status = gw.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    rx.stop();

    // A witness gets seals only, each byte for byte as the log holds it.
    let got = received_lines(&rx);
    let segs = segments(&audit);
    let log: Vec<String> = segs.iter().flat_map(|s| lines(s)).collect();
    for l in &got {
        let v: Value = serde_json::from_str(l).expect("a JSON record per line");
        assert!(
            v["kind"] == "checkpoint" || v["kind"] == "key_rotation",
            "the witness got a record that is not a seal: {l}"
        );
        assert!(log.contains(l), "not in the log: {l}");
    }
    let newest = got
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .expect("a seal");

    // Saved as received, and imported from that file: both are witnesses the log passes.
    let saved = dir.path().join("received.jsonl");
    std::fs::write(&saved, got.join("\n") + "\n").unwrap();
    let imported = dir.path().join("imported.jsonl");
    let imp = std::process::Command::new(common::gateway_bin())
        .args(["audit", "witness-import", "--out"])
        .arg(&imported)
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        imp.status.success(),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );
    for w in [&saved, &imported] {
        let ok = verify(&audit, &first, w);
        assert_eq!(ok.code, 0, "{}: {}{}", w.display(), ok.stdout, ok.stderr);
        assert!(
            ok.stdout.contains("checkpoint(s) match") && ok.stdout.contains("key rotation"),
            "{}",
            ok.stdout
        );
    }

    // Root on the host cuts the log at a record boundary just before the newest seal the
    // witness holds: the log alone still verifies; against either witness it does not.
    let seq_of = |l: &String| {
        serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["seq"].as_u64())
    };
    for (n, seg) in segs.iter().enumerate() {
        let all = lines(seg);
        let kept: Vec<String> = all
            .iter()
            .take_while(|l| seq_of(l).is_some_and(|s| s < newest))
            .cloned()
            .collect();
        if kept.is_empty() && n > 0 {
            std::fs::remove_file(seg).unwrap();
        } else if kept.len() < all.len() {
            write_lines(seg, &kept);
        }
    }
    let pk = first.display().to_string();
    let alone = portcullis(&["audit", "verify", "--pubkey", &pk], &audit);
    assert_eq!(alone.code, 0, "{}{}", alone.stdout, alone.stderr);
    for w in [&saved, &imported] {
        let cut = verify(&audit, &first, w);
        assert_eq!(
            cut.code,
            1,
            "{}: cut tail not found: {}",
            w.display(),
            cut.stdout
        );
        assert!(
            cut.stderr
                .contains(&format!("lacks the seal at seq {newest}")),
            "{}",
            cut.stderr
        );
    }
}
