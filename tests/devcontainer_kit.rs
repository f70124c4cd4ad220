//! `portcullis init devcontainer` writes exactly the files of `deploy/devcontainer/` (every
//! file, nothing more), refuses to overwrite one without `--force` (naming it), and Debian's
//! docker-compose accepts the kit's compose file with the workspace confined as documented:
//! in the egress agent's network namespace, every capability dropped, no new privileges,
//! non-root. No engine is needed: `docker-compose config` only reads the file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn files_below(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn init(dir: &Path, force: bool) -> std::process::Output {
    let mut c = Command::new(common::gateway_bin());
    c.args(["init", "devcontainer"]).arg(dir);
    if force {
        c.arg("--force");
    }
    c.output().unwrap()
}

#[test]
fn init_writes_the_deploy_kit_byte_for_byte_and_never_overwrites_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(".devcontainer");
    let out = init(&dir, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = files_below(&common::repo_root().join("deploy/devcontainer"));
    assert_eq!(files_below(&dir), shipped);

    std::fs::write(dir.join("compose.yaml"), "edited").unwrap();
    let out = init(&dir, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("devcontainer.json") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("compose.yaml")).unwrap(), b"edited");

    let out = init(&dir, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_below(&dir), shipped);
}

#[test]
fn docker_compose_accepts_the_kit_and_confines_the_workspace() {
    if !common::compose::docker_compose_present() {
        common::skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
        return;
    }
    let kit = common::repo_root().join("deploy/devcontainer");
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(kit.join("compose.yaml"))
        .args(["--project-name", "pc-kit-config", "config"])
        .env("PORTCULLIS_POLICY_PUBKEY", "00".repeat(32))
        .env("PORTCULLIS_TOKEN", "pcs_not-a-real-token")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    let ws = &doc["services"]["workspace"];
    assert_eq!(ws["network_mode"], "service:egress-agent", "{ws}");
    assert_eq!(ws["cap_drop"], serde_json::json!(["ALL"]), "{ws}");
    assert!(ws.get("cap_add").is_none(), "{ws}");
    assert!(ws.get("privileged").is_none(), "{ws}");
    assert_eq!(ws["user"], "node", "{ws}");
    assert_eq!(
        ws["security_opt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    // The gateway programs no table (the agents do), so it adds no capability either.
    let gw = &doc["services"]["portcullis"];
    assert!(gw.get("cap_add").is_none(), "{gw}");
    // Only the gateway mounts the Docker socket.
    assert!(!ws["volumes"].to_string().contains("docker.sock"), "{ws}");
    for svc in ["portcullis", "egress-agent"] {
        assert_eq!(
            doc["services"][svc]["logging"]["options"]["max-size"], "10m",
            "{svc}"
        );
        assert_eq!(
            doc["services"][svc]["cap_drop"],
            serde_json::json!(["ALL"]),
            "{svc}"
        );
    }
    // Without the policy key the stack refuses to come up at all.
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(kit.join("compose.yaml"))
        .args(["--project-name", "pc-kit-config", "config"])
        .env_remove("PORTCULLIS_POLICY_PUBKEY")
        .env("PORTCULLIS_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
