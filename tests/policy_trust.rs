//! Whoever can write the policy controls the gateway (issue 34): the attack, played for real.
//! The gateway runs as root (as it does to program nftables); the unprivileged user `nobody`
//! (via `setpriv`) appends a process server to a policy that others can write (world-writable,
//! group-writable for nobody's group, or in a world-writable directory). The gateway refuses to
//! start on it, rejects it at reload with the policy in force still serving and an audit record
//! that names the path, owner and mode, and the appended server never runs. Also: what the
//! doctor says, the development-only switch, `--trusted-policy-owner`, and the secret files a
//! policy names.

mod common;
mod policy_support;

use std::path::Path;

use common::audit_verify;
use common::client::{tool_text, Mcp, LATEST};
use policy_support::*;
use serde_json::json;

fn append_as_nobody(policy: &Path, text: &str) -> (bool, String) {
    let tmp = policy.with_file_name("pwn.toml");
    std::fs::write(&tmp, text).expect("write the attacker's text");
    chmod(&tmp, 0o644);
    let r = as_nobody(&format!("cat {} >> {}", tmp.display(), policy.display()));
    std::fs::remove_file(&tmp).ok();
    r
}

/// The refusal names the path, the owner, the mode and the fix, and nothing ran.
fn assert_refusal(said: &str, culprit: &Path, mode: &str, layout: &Layout) {
    let culprit = culprit.display().to_string();
    assert!(said.contains(&format!("{culprit} (")), "{said}");
    assert!(said.contains("uid 0 (root)"), "{said}");
    assert!(said.contains(&format!("mode {mode}")), "{said}");
    assert!(said.contains(&format!("`chmod go-w {culprit}`")), "{said}");
    assert!(!layout.marker().exists(), "the appended server ran");
    assert!(
        !kinds(&layout.audit())
            .iter()
            .any(|(k, _)| k == "policy_load"),
        "a refused policy was loaded"
    );
}

#[test]
fn a_policy_others_can_write_is_refused_at_start_and_the_appended_server_never_runs() {
    // World-writable file.
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    chmod(&layout.policy(), 0o666);
    let (ok, out) = append_as_nobody(&layout.policy(), &pwn(&layout.marker()));
    assert!(ok, "nobody could not append: {out}");
    let said = layout.refused(&[]);
    assert_refusal(&said, &layout.policy(), "0666", &layout);
    assert!(said.contains("every other user can write it"), "{said}");

    // Group-writable, and nobody is in the group.
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    nix::unistd::chown(
        &layout.policy(),
        None,
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .expect("chgrp");
    chmod(&layout.policy(), 0o664);
    let (ok, out) = append_as_nobody(&layout.policy(), &pwn(&layout.marker()));
    assert!(ok, "nobody could not append: {out}");
    let said = layout.refused(&[]);
    assert_refusal(&said, &layout.policy(), "0664", &layout);
    assert!(said.contains("its group can write it"), "{said}");

    // A root-owned 0644 file in a world-writable directory: nobody cannot write the file, but
    // can put another in its place.
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    chmod(&layout.conf(), 0o777);
    let (ok, out) = as_nobody(&format!(
        "cat {p} - > {p}.new <<'EOF' && mv -f {p}.new {p}\n{}\nEOF",
        pwn(&layout.marker()),
        p = layout.policy().display()
    ));
    assert!(ok, "nobody could not replace the policy: {out}");
    let said = layout.refused(&[]);
    assert_refusal(&said, &layout.conf(), "0777", &layout);
    assert!(said.contains("(directory)"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_a_policy_others_can_write_is_rejected_and_audited_while_the_old_one_serves() {
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    let (conf, file, marker, audit) = (
        layout.conf(),
        layout.policy(),
        layout.marker(),
        layout.audit(),
    );
    let mut gw = layout.start(&[]);
    let mut mcp = Mcp::new(&gw.url);
    mcp.initialize(LATEST).await;
    let serving = |r: serde_json::Value| assert_eq!(tool_text(&r), "still here", "{r}");
    serving(
        mcp.call_tool("fixture__echo", json!({"text": "still here"}))
            .await,
    );

    // The file made world-writable (its change of mode alone is reported), then appended to.
    chmod(&file, 0o666);
    let (outcome, detail) = nth_reload(&gw, &audit, 1);
    assert_eq!(outcome, "rejected", "{detail}");
    let (ok, out) = append_as_nobody(&file, &pwn(&marker));
    assert!(ok, "nobody could not append: {out}");
    let (outcome, detail) = nth_reload(&gw, &audit, 2);
    assert_eq!(outcome, "rejected", "{detail}");
    let error = detail["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("policy file {} is not trusted", file.display()))
            && error.contains("uid 0 (root)")
            && error.contains("mode 0666")
            && error.contains("chmod go-w"),
        "{detail}"
    );
    assert_ne!(detail["sha256"]["from"], detail["sha256"]["to"], "{detail}");
    // SIGHUP reads it again: rejected again, and the policy in force still serves.
    gw.sighup();
    nth_reload(&gw, &audit, 3);
    serving(
        mcp.call_tool("fixture__echo", json!({"text": "still here"}))
            .await,
    );
    let tools = mcp.request("tools/list", json!({})).await.to_string();
    assert!(!tools.contains("pwn__"), "{tools}");
    assert!(!marker.exists(), "the appended server ran");

    // Making the file private again does not make the watch apply what was written while it
    // was open (the next record is the clean text's, not the appended server's) ...
    chmod(&file, 0o644);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let good = policy(None, "");
    replace(&file, good.as_bytes());
    let (outcome, detail) = nth_reload(&gw, &audit, 4);
    assert_eq!(outcome, "ok", "{detail}");
    assert!(detail.get("servers").is_none(), "{detail}");
    assert!(!marker.exists(), "the appended server ran");
    // ... and the same attack through a world-writable directory: nobody swaps the file.
    chmod(&conf, 0o777);
    let (ok, out) = as_nobody(&format!(
        "cat {p} - > {p}.new <<'EOF' && mv -f {p}.new {p}\n{}\nEOF",
        pwn(&marker),
        p = file.display()
    ));
    assert!(ok, "nobody could not replace the policy: {out}");
    let (outcome, detail) = nth_reload(&gw, &audit, 5);
    assert_eq!(outcome, "rejected", "{detail}");
    let error = detail["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{} (directory)", conf.display())) && error.contains("mode 0777"),
        "{detail}"
    );
    serving(
        mcp.call_tool("fixture__echo", json!({"text": "still here"}))
            .await,
    );
    assert!(!marker.exists(), "the appended server ran");
    assert!(
        gw.stderr()
            .contains("policy reload rejected; the policy in force stays"),
        "{}",
        gw.stderr()
    );
    gw.terminate(PATIENCE);
    let (ok, out) = audit_verify(&audit);
    assert!(ok, "audit verify: {out}");
}

#[test]
fn secret_and_dotenv_files_others_can_write_are_refused_too() {
    for source in ["file:{dir}/token", "dotenv:{dir}/.env#TOKEN"] {
        let layout = Layout::new();
        let dir = layout.root.path().join("secrets");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        std::fs::write(dir.join(".env"), "TOKEN=s3cret\n").unwrap();
        let source = source.replace("{dir}", &dir.display().to_string());
        layout.write(&policy(
            None,
            &format!("secrets = {{ TOKEN = \"{source}\" }}\n"),
        ));
        chmod(&dir.join("token"), 0o666);
        chmod(&dir.join(".env"), 0o666);
        let said = layout.refused(&[]);
        assert!(said.contains("secret TOKEN of server fixture"), "{said}");
        assert!(said.contains("mode 0666"), "{said}");
        // Once private, it starts.
        chmod(&dir.join("token"), 0o600);
        chmod(&dir.join(".env"), 0o600);
        let mut gw = layout.start(&[]);
        gw.terminate(PATIENCE);
    }
}

#[test]
fn a_trusted_owner_and_the_development_switch_are_explicit() {
    // A policy owned by nobody (a developer's own file) is refused unless that uid is named.
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    nix::unistd::chown(
        &layout.policy(),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        None,
    )
    .expect("chown");
    let said = layout.refused(&[]);
    assert!(
        said.contains("is owned by uid 65534 (nobody) (mode 0644), which is neither root"),
        "{said}"
    );
    assert!(said.contains("--trusted-policy-owner 65534"), "{said}");
    let mut gw = layout.start(&["--trusted-policy-owner", "65534"]);
    gw.terminate(PATIENCE);

    // --insecure-policy-permissions starts on a world-writable policy, loudly, and says so in
    // the audit log at start and at every reload.
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    chmod(&layout.policy(), 0o666);
    let audit = layout.audit();
    let file = layout.policy();
    let mut gw = layout.start(&["--insecure-policy-permissions"]);
    let warning = "INSECURE: --insecure-policy-permissions is set";
    gw.wait_for_log(warning, 1, PATIENCE);
    std::fs::write(&file, policy(None, "# touched\n")).unwrap();
    let (outcome, detail) = nth_reload(&gw, &audit, 1);
    assert_eq!(outcome, "ok", "{detail}");
    assert_eq!(detail["insecure_policy_permissions"], true, "{detail}");
    gw.wait_for_log(warning, 2, PATIENCE);
    gw.terminate(PATIENCE);
    let load = common::audit_records(&audit)
        .into_iter()
        .find(|r| r["kind"] == "policy_load")
        .expect("policy_load record");
    assert!(
        load["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with(" insecure-policy-permissions")),
        "{load}"
    );
}

#[test]
fn doctor_reports_who_can_change_the_policy() {
    let layout = Layout::new();
    layout.write(&policy(None, ""));
    let doctor_with = |extra: &[&str]| {
        let out = std::process::Command::new(common::gateway_bin())
            .args(["doctor", "--policy"])
            .arg(layout.policy())
            .arg("--audit-dir")
            .arg(layout.audit())
            .args(extra)
            .output()
            .expect("run doctor");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let doctor = || doctor_with(&[]);
    let (_, report) = doctor();
    let ok_line = format!(
        "[ok]   policy file {}: it and the directories above it are writable only by trusted owners",
        layout.policy().display()
    );
    assert!(report.contains(&ok_line), "{report}");
    chmod(&layout.conf(), 0o777);
    let (ok, report) = doctor();
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "[FAIL] policy file {} is not trusted: {} (directory)",
            layout.policy().display(),
            layout.conf().display()
        )),
        "{report}"
    );
    // `doctor --start` starts every server "as the gateway would": not from a policy others
    // can change.
    layout.write(&policy(None, &pwn(&layout.marker())));
    let (ok, report) = doctor_with(&["--start"]);
    assert!(!ok, "{report}");
    assert!(
        report.contains("[FAIL] --start: no server started, because the policy fails the rule"),
        "{report}"
    );
    assert!(
        !layout.marker().exists(),
        "doctor --start ran the appended server"
    );
}
