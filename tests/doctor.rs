//! `portcullis doctor`: each problem is named with a fix, and the exit status says whether
//! anything the policy needs is missing. (Docker engine and image checks: docker_runtime.rs.)

mod common;

use std::path::Path;
use std::process::Command;

use common::gateway_bin;

struct Report {
    ok: bool,
    text: String,
}

fn doctor(policy: &Path, audit_dir: &Path) -> Report {
    doctor_with(&[], policy, audit_dir)
}

/// `wrapper`: a command the doctor runs under (e.g. `setpriv` dropping a capability).
fn doctor_with(wrapper: &[&str], policy: &Path, audit_dir: &Path) -> Report {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("--").arg(gateway_bin());
            c
        }
        None => Command::new(gateway_bin()),
    };
    let out = cmd
        .args(["doctor", "--policy"])
        .arg(policy)
        .arg("--audit-dir")
        .arg(audit_dir)
        .env_remove("PORTCULLIS_AUDIT_DIR")
        .output()
        .expect("run portcullis doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Report {
        ok: out.status.success(),
        text,
    }
}

/// The finding line starting with `tag` whose text contains `what`, and the line after it.
fn finding<'a>(r: &'a Report, tag: &str, what: &str) -> Option<(&'a str, &'a str)> {
    let lines: Vec<&str> = r.text.lines().collect();
    lines.iter().enumerate().find_map(|(i, l)| {
        (l.starts_with(tag) && l.contains(what))
            .then(|| (*l, lines.get(i + 1).copied().unwrap_or("")))
    })
}

fn net_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|m| m & (1 << 12) != 0)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn an_invalid_policy_fails_listing_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.toml",
        "[gateway]\nlisten = \"nope\"\n\n[servers.a]\nruntime = \"process\"\n",
    );
    let r = doctor(&p, &dir.path().join("audit"));
    assert!(!r.ok, "{}", r.text);
    assert!(
        finding(&r, "[FAIL]", "policy is invalid (2 errors)").is_some(),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("bad.toml:2:10: error: invalid listen address"),
        "{}",
        r.text
    );
    assert!(r.text.contains("bad.toml:5:11: error:"), "{}", r.text);
    assert!(r.text.contains("fix: edit the policy"), "{}", r.text);
}

#[test]
fn an_audit_dir_that_cannot_be_created_fails_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.toml",
        "[servers.t]\nruntime = \"process\"\ncommand = \"true\"\n",
    );
    // Below a regular file: no user, root included, can create it.
    let file = write(dir.path(), "a-file", "");
    let r = doctor(&p, &file.join("audit"));
    assert!(!r.ok, "{}", r.text);
    let (line, fix) = finding(&r, "[FAIL]", "audit dir").expect(&r.text);
    assert!(line.contains("is not a directory"), "{line}");
    assert!(fix.trim_start().starts_with("fix: create it"), "{fix}");
}

#[test]
fn a_configured_signing_key_that_is_missing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.toml",
        "[servers.t]\nruntime = \"process\"\ncommand = \"true\"\n\n[audit]\nsigning_key = \"keys/audit.key\"\n",
    );
    let r = doctor(&p, &dir.path().join("audit"));
    assert!(!r.ok, "{}", r.text);
    let (_, fix) = finding(&r, "[FAIL]", "audit signing key").expect(&r.text);
    assert!(fix.contains("portcullis audit keygen --out"), "{fix}");
}

#[test]
fn a_complete_setup_passes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    let st = Command::new(gateway_bin())
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let p = write(
        dir.path(),
        "p.toml",
        &format!(
            "[servers.t]\nruntime = \"process\"\ncommand = \"true\"\n\n[audit]\nsigning_key = \"{}\"\n",
            key.display()
        ),
    );
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    let r = doctor(&p, &audit);
    assert!(r.ok, "{}", r.text);
    assert!(finding(&r, "[ok]", "policy").is_some(), "{}", r.text);
    assert!(finding(&r, "[ok]", "writable").is_some(), "{}", r.text);
    assert!(
        finding(&r, "[ok]", "audit signing key").is_some(),
        "{}",
        r.text
    );
    // No server declares egress: nftables is reported either way but cannot fail the run.
    if net_admin() {
        assert!(
            finding(&r, "[ok]", "nftables: netlink answers").is_some(),
            "{}",
            r.text
        );
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI runs as root: the nftables check needs CAP_NET_ADMIN");
    } else {
        eprintln!(
            "\n!!!!!!!! SKIPPING the nftables part: no CAP_NET_ADMIN (run as root) !!!!!!!!\n"
        );
        assert!(finding(&r, "[warn]", "nftables").is_some(), "{}", r.text);
    }
}

/// A policy file for a test that runs the doctor with CAP_NET_ADMIN dropped, which takes root;
/// `None` (after a loud message) when it cannot run here, and a failure under `CI=true`.
fn policy_for_dropping_net_admin(policy: &str) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !net_admin() {
        common::skip_or_fail("needs root to drop CAP_NET_ADMIN for the doctor only");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", policy);
    Some((dir, p))
}

/// A server with egress rules needs nftables: without CAP_NET_ADMIN the doctor fails and says
/// which servers will not start.
#[test]
fn egress_without_net_admin_fails_naming_the_servers() {
    let Some((dir, p)) = policy_for_dropping_net_admin(
        "[servers.fetcher]\nruntime = \"process\"\ncommand = \"true\"\negress.allow = [\"api.example.test:443\"]\n",
    ) else {
        return;
    };
    let audit = dir.path().join("audit");
    let with = doctor(&p, &audit);
    assert!(
        finding(&with, "[ok]", "nftables").is_some(),
        "{}",
        with.text
    );
    let without = doctor_with(&["setpriv", "--bounding-set=-net_admin"], &p, &audit);
    assert!(!without.ok, "{}", without.text);
    let (line, fix) = finding(&without, "[FAIL]", "nftables").expect(&without.text);
    assert!(
        line.contains("lacks CAP_NET_ADMIN") && line.contains("fetcher"),
        "{line}"
    );
    assert!(fix.contains("CAP_NET_ADMIN"), "{fix}");
}

/// In sidecar mode a docker server's rules are in its egress agent's table, not the gateway's:
/// a gateway without CAP_NET_ADMIN (compose.yaml's) serves it, and the doctor says so instead
/// of failing as it does for the process server above.
#[test]
fn sidecar_docker_servers_need_no_net_admin_in_the_gateway() {
    let Some((dir, p)) = policy_for_dropping_net_admin(
        "[egress]\nmode = \"sidecar\"\n[servers.fetch]\nruntime = \"docker\"\nimage = \"portcullis/mcp-fetch:local\"\negress.allow = [\"api.example.test:443\"]\n",
    ) else {
        return;
    };
    let audit = dir.path().join("audit");
    let without = doctor_with(&["setpriv", "--bounding-set=-net_admin"], &p, &audit);
    assert!(
        finding(&without, "[FAIL]", "nftables").is_none(),
        "{}",
        without.text
    );
    let (line, _) = finding(&without, "[warn]", "nftables").expect(&without.text);
    assert!(
        line.contains("lacks CAP_NET_ADMIN") && line.contains("egress agent holds its rules"),
        "{line}"
    );
}

#[test]
fn a_secret_file_or_key_a_process_servers_user_could_read_fails() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the check applies when the gateway runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = write(dir.path(), "token", "s3cr3t\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = write(
        dir.path(),
        "p.toml",
        &format!(
            "[servers.t]\nruntime = \"process\"\ncommand = \"true\"\nsecrets = {{ TOKEN = \"file:{}\" }}\n",
            secret.display()
        ),
    );
    let audit = dir.path().join("audit");
    let r = doctor(&p, &audit);
    assert!(!r.ok, "{}", r.text);
    let (what, fix) = finding(
        &r,
        "[FAIL]",
        "process server t (uid 65534) could read secret TOKEN",
    )
    .expect(&r.text);
    assert!(what.contains("mode 644"), "{what}");
    assert!(
        fix.contains(&format!("chmod go-rwx {}", secret.display())),
        "{fix}"
    );
    // Closed by its mode: the finding turns into an ok.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = doctor(&p, &audit);
    assert!(
        finding(&r, "[ok]", "process servers: their users cannot read").is_some(),
        "{}",
        r.text
    );
}

/// What goes wrong in a quickstart: the server's program is not installed, a server dies at
/// start, a loopback remote server the egress check will refuse. `doctor` names each with a fix
/// and exits non-zero; `--start` shows what a dying server wrote on stderr.
#[test]
fn servers_that_cannot_start_fail_with_a_fix_each() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = common::repo_root().join("tests/hostile/server.py");
    let policy = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[servers.missing]
runtime = "process"
command = "portcullis-no-such-mcp-server"

[servers.dies]
runtime = "process"
command = "python3"
args = ["{}", "--die-at-start", "3"]

[servers.local]
runtime = "remote"
url = "http://localhost:9/mcp"

[servers.fine]
runtime = "process"
command = "{}"
"#,
            hostile.display(),
            common::fixture_bin().display()
        ),
    );
    let r = doctor(&policy, &dir.path().join("audit"));
    assert!(!r.ok, "{}", r.text);
    let (line, fix) = finding(&r, "[FAIL]", "server missing").expect(&r.text);
    assert!(line.contains("not on the gateway's PATH"), "{line}");
    assert!(fix.contains("absolute path"), "{fix}");
    let (line, fix) = finding(&r, "[FAIL]", "server local").expect(&r.text);
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(fix.contains("egress.allow"), "{fix}");
    assert!(finding(&r, "[ok]", "server fine").is_some(), "{}", r.text);

    let out = Command::new(gateway_bin())
        .args(["doctor", "--start", "--policy"])
        .arg(&policy)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .env_remove("PORTCULLIS_AUDIT_DIR")
        .output()
        .unwrap();
    let r = Report {
        ok: out.status.success(),
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    assert!(!r.ok, "{}", r.text);
    let (line, _) = finding(&r, "[FAIL]", "server dies: did not start").expect(&r.text);
    assert!(line.contains("exited with status 3"), "{line}");
    assert!(
        line.contains("fatal: cannot read /etc/hostile/config.toml"),
        "{line}"
    );
    let (line, _) = finding(&r, "[ok]", "server fine: started").expect(&r.text);
    assert!(line.contains("initialize answered"), "{line}");
}
