//! Signed policies (issue 34): with `--policy-pubkey` the gateway puts in force only a policy
//! whose `FILE.sig` is the trusted key's signature of its exact bytes and whose `[gateway]
//! serial` is not lower than the one in force. An edit without re-signing (by the unprivileged
//! user who can write the policy's directory), a signature by another key and a validly signed
//! older serial are each rejected and audited while the policy in force keeps serving calls; a
//! higher serial reloads, and so does a policy whose signature is written a moment after it.
//! After a restart the highest serial put in force still holds. `policy keygen|sign|check
//! --pubkey` through the real binary.

mod common;
mod policy_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::client::{tool_text, Mcp, LATEST};
use common::{audit_verify, gateway_bin, Gateway};
use policy_support::*;
use serde_json::{json, Value};

fn portcullis(args: &[&str]) -> (bool, String) {
    let out = Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `policy keygen` into `dir/NAME.key`; returns the key file and the public key in hex.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let (ok, out) = portcullis(&["policy", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{out}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.key.pub"))).unwrap();
    assert!(out.contains(public.trim()), "{out}");
    (key, public.trim().to_owned())
}

/// Writes `text` beside `policy` as `staged.toml` and signs it with `key` (`staged.toml.sig`).
fn stage_signed(policy: &Path, key: &Path, text: &str) -> PathBuf {
    let staged = policy.with_file_name("staged.toml");
    std::fs::write(&staged, text).unwrap();
    let (ok, out) = portcullis(&[
        "policy",
        "sign",
        "--key",
        key.to_str().unwrap(),
        staged.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    staged
}

/// Writes `text` signed with `key` in place of `policy` (signed beside it first, then the
/// signature and the policy renamed into place, one after the other as a deploy would).
fn deploy(policy: &Path, key: &Path, text: &str) {
    let staged = stage_signed(policy, key, text);
    std::fs::rename(sig(&staged), sig(policy)).unwrap();
    std::fs::rename(&staged, policy).unwrap();
}

fn sig(policy: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", policy.display()))
}

/// Waits for a policy_reload record after the first `seen` that `done` accepts; every record
/// on the way must be a rejection (nothing else was put in force meanwhile).
fn reload_until(
    gw: &Gateway,
    audit: &Path,
    seen: &mut usize,
    done: impl Fn(&str, &Value) -> bool,
) -> Value {
    loop {
        let (outcome, detail) = nth_reload(gw, audit, *seen + 1);
        *seen += 1;
        if done(&outcome, &detail) {
            return detail;
        }
        assert_eq!(outcome, "rejected", "accepted on the way: {detail}");
    }
}

fn error_of(d: &Value) -> &str {
    d["error"].as_str().unwrap_or_default()
}

async fn tools(mcp: &mut Mcp) -> String {
    mcp.request("tools/list", json!({})).await.to_string()
}

async fn serving(mcp: &mut Mcp) {
    let r = mcp
        .call_tool("fixture__echo", json!({"text": "in force"}))
        .await;
    assert_eq!(tool_text(&r), "in force", "{r}");
}

fn second_server(name: &str) -> String {
    format!(
        "\n[servers.{name}]\nruntime = \"process\"\ncommand = \"{}\"\n",
        common::fixture_bin().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_policy_signed_by_the_key_with_a_serial_not_lower_is_put_in_force() {
    let layout = Layout::new();
    let keys = layout.root.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (key, public) = keygen(&keys, "policy");
    let (other, _) = keygen(&keys, "other");
    let (file, audit, marker) = (layout.policy(), layout.audit(), layout.marker());
    deploy(&file, &key, &policy(Some(1), ""));
    // Signed, the policy may live where others can write: the signature vouches for it.
    chmod(&layout.conf(), 0o777);
    let restart = Layout::new();
    let gw = layout.start(&["--policy-pubkey", &public]);
    let mut mcp = Mcp::new(&gw.url);
    mcp.initialize(LATEST).await;
    serving(&mut mcp).await;
    let mut seen = 0;

    // nobody edits it without a key.
    let (ok, out) = as_nobody(&format!(
        "cat {p} - > {p}.new <<'EOF' && mv -f {p}.new {p}\n{}\nEOF",
        pwn(&marker),
        p = file.display()
    ));
    assert!(ok, "nobody could not edit the policy: {out}");
    let d = reload_until(&gw, &audit, &mut seen, |_, d| {
        error_of(d).contains("does not match")
    });
    assert!(error_of(&d).contains("changed after it was signed"), "{d}");
    assert_eq!(d["serial_in_force"], 1, "{d}");
    serving(&mut mcp).await;

    // A policy signed by another key.
    deploy(&file, &other, &policy(Some(2), &second_server("b")));
    let d = reload_until(&gw, &audit, &mut seen, |_, d| {
        error_of(d).contains("was made with key")
    });
    assert!(error_of(&d).contains("this gateway trusts only key"), "{d}");
    serving(&mut mcp).await;

    // A higher serial signed by the key.
    deploy(&file, &key, &policy(Some(3), &second_server("b")));
    let d = reload_until(&gw, &audit, &mut seen, |o, _| o == "ok");
    assert_eq!(d["serial"], json!({"from": 1, "to": 3}), "{d}");
    assert_eq!(d["servers"]["added"], json!(["b"]), "{d}");
    assert!(d["key_id"].is_string(), "{d}");

    // A validly signed older serial: no rollback.
    deploy(&file, &key, &policy(Some(2), ""));
    let d = reload_until(&gw, &audit, &mut seen, |_, d| {
        error_of(d).contains("serial 2 is lower than 3, the serial in force")
    });
    assert_eq!(d["serial_in_force"], 3, "{d}");
    serving(&mut mcp).await;
    assert!(
        tools(&mut mcp).await.contains("b__echo"),
        "serial 3 still in force"
    );

    // An editor that writes the policy, then its signature a moment later: the first read is
    // rejected, the signature's arrival is tried again and accepted.
    let next = policy(Some(4), "");
    let staged = stage_signed(&file, &key, &next);
    std::fs::write(&file, &next).unwrap();
    let d = reload_until(&gw, &audit, &mut seen, |_, d| {
        error_of(d).contains("does not match")
    });
    assert!(error_of(&d).contains("tried again when"), "{d}");
    std::fs::rename(sig(&staged), sig(&file)).unwrap();
    let d = reload_until(&gw, &audit, &mut seen, |o, _| o == "ok");
    assert_eq!(d["serial"], json!({"from": 3, "to": 4}), "{d}");
    // The reload is audited before it is applied (nothing changes unaudited): the catalog
    // follows a moment after the record.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut listed = tools(&mut mcp).await;
    while listed.contains("b__echo") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        listed = tools(&mut mcp).await;
    }
    assert!(!listed.contains("b__echo"), "serial 4 in force: {listed}");
    serving(&mut mcp).await;
    assert!(!marker.exists(), "the unsigned server ran");

    let state = gw.dir().join("state");
    let mut gw = gw;
    gw.terminate(PATIENCE);
    let (ok, out) = audit_verify(&audit);
    assert!(ok, "audit verify: {out}");
    let load = common::audit_records(&audit)
        .into_iter()
        .find(|r| r["kind"] == "policy_load")
        .expect("policy_load");
    let detail = load["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(" signed serial 1 key "), "{load}");
    // Every call names the signed serial it ran under, in the order they were put in force.
    let serials: Vec<Value> = common::audit_records(&audit)
        .into_iter()
        .filter(|r| r["kind"] == "call")
        .map(|r| r["policy_serial"].clone())
        .collect();
    let mut distinct = serials.clone();
    distinct.dedup();
    assert_eq!(distinct, vec![json!(1), json!(3), json!(4)], "{serials:?}");

    // A restart does not forget the highest serial: the older signed policy is refused, the
    // newest starts; an unsigned one is refused.
    let again = restart.policy();
    std::fs::rename(&state, restart.root.path().join("state")).unwrap();
    deploy(&again, &key, &policy(Some(3), ""));
    let said = restart.refused(&["--policy-pubkey", &public]);
    assert!(
        said.contains("serial 3 is lower than 4, the highest serial this gateway put in force"),
        "{said}"
    );
    std::fs::remove_file(sig(&again)).unwrap();
    let said = restart.refused(&["--policy-pubkey", &public]);
    assert!(said.contains(".sig is missing"), "{said}");
    deploy(&again, &key, &policy(Some(4), ""));
    let mut gw = restart.start(&["--policy-pubkey", &public]);
    gw.terminate(PATIENCE);
}

#[test]
fn policy_sign_and_check_with_pubkey() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let (other, other_public) = keygen(dir.path(), "o");
    let file = dir.path().join("p.toml");
    let text = policy(Some(7), "");
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();
    let (ok, out) = portcullis(&["policy", "sign", "--key", key.to_str().unwrap(), f]);
    assert!(ok, "{out}");
    assert!(out.contains("serial 7"), "{out}");
    let (ok, out) = portcullis(&["policy", "check", "--pubkey", &public, f]);
    assert!(ok, "{out}");
    assert!(
        out.contains(": ok (1 server: fixture), signed: serial 7 key "),
        "{out}"
    );
    // The .pub file works as well as the hex.
    let pub_file = format!("{}.pub", key.display());
    assert!(portcullis(&["policy", "check", "--pubkey", &pub_file, f]).0);
    let (ok, out) = portcullis(&["policy", "check", "--pubkey", &other_public, f]);
    assert!(!ok && out.contains("was made with key"), "{out}");
    std::fs::write(&file, format!("{text}# one more line\n")).unwrap();
    let (ok, out) = portcullis(&["policy", "check", "--pubkey", &public, f]);
    assert!(!ok && out.contains("does not match"), "{out}");
    // Without a serial nothing is signed.
    std::fs::write(&file, policy(None, "")).unwrap();
    let (ok, out) = portcullis(&["policy", "sign", "--key", other.to_str().unwrap(), f]);
    assert!(!ok && out.contains("no `serial` in [gateway]"), "{out}");
}
