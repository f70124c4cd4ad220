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
