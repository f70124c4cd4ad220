//! `portcullis firewall plan` against the golden files in `firewall/`.
//! Set PORTCULLIS_REGENERATE_GOLDEN=1 to rewrite them after an intended change.

mod common;

use std::process::Command;

#[test]
fn plans_match_the_golden_files() {
    let root = common::repo_root();
    let regenerate = std::env::var("PORTCULLIS_REGENERATE_GOLDEN").is_ok_and(|v| v == "1");
    for name in ["default", "devcontainer", "seed"] {
        let out = Command::new(common::gateway_bin())
            .current_dir(&root)
            .args(["firewall", "plan", &format!("policy/{name}.toml")])
            // A fixed instance: the default one is derived from where the checkout lives.
            .args(["--instance", "example"])
            .output()
            .expect("run portcullis");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).expect("utf-8");
        let golden = root.join("firewall").join(format!("{name}.nft"));
        if regenerate {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with PORTCULLIS_REGENERATE_GOLDEN=1)",
                golden.display()
            )
        });
        assert_eq!(got, want, "{name}: plan differs from {}; if intended, regenerate with PORTCULLIS_REGENERATE_GOLDEN=1", golden.display());
    }
}

#[test]
fn plan_reports_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[egress]\nupstream_resolvers = [\"dns.example\"]\n").unwrap();
    let out = Command::new(common::gateway_bin())
        .args(["firewall", "plan"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid upstream resolver"));
}

#[test]
fn plan_shows_the_agent_tables_of_sidecar_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sidecar.toml");
    std::fs::write(
        &p,
        "[egress]\nupstream_resolvers = [\"192.0.2.53:53\"]\n[servers.web]\nruntime = \"docker\"\nimage = \"i\"\negress.allow = [\"api.example.test:443\"]\n",
    )
    .unwrap();
    let run = |mode: Option<&str>| {
        let mut cmd = Command::new(common::gateway_bin());
        cmd.args(["firewall", "plan"])
            .arg(&p)
            .args(["--instance", "example"]);
        if let Some(m) = mode {
            cmd.args(["--mode", m]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let sidecar = run(Some("sidecar"));
    for line in [
        "table inet portcullis_example {",
        "# server web: in the namespace of its egress agent, allow [api.example.test:443]",
        "ip daddr 127.0.0.11 udp dport 53 dnat ip to 127.0.0.1:53",
        "meta skuid 65533 ip daddr 192.0.2.53 udp dport 53 accept",
        "ip daddr . tcp dport @pin_web accept",
    ] {
        assert!(sidecar.contains(line), "missing `{line}` in\n{sidecar}");
    }
    // Without --mode, `auto` plans the host table.
    let host = run(None);
    assert!(host.contains("type filter hook forward"), "{host}");
    assert!(!host.contains("meta skuid"), "{host}");
}
