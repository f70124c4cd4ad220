//! `deploy/kubernetes/` checked without a cluster: every manifest against the Kubernetes API's
//! own schemas (PyPI `kubernetes-validate`, which bundles them; strict, so a misspelt field is
//! an error), for the oldest and the newest release it knows that we support, and the policy
//! the ConfigMap carries through `portcullis policy check`. Nothing is applied anywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{gateway_bin, output_text, peer, repo_root};

/// The Kubernetes releases the manifests are written for (native sidecars are GA in 1.33;
/// the fleet's manifests are older API and pass both).
const VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn manifests() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no manifests in {}", dir.display());
    v
}

/// Runs the checker on `files`; (passed, its whole output).
fn validate(checker: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(checker)
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", checker.display()));
    (out.status.success(), output_text(&out))
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas_strictly() {
    let Some(checker) = peer("venv/bin/kubernetes-validate") else {
        return;
    };
    let files = manifests();
    for version in VERSIONS {
        let (ok, out) = validate(&checker, version, &files);
        assert!(
            ok,
            "deploy/kubernetes does not validate against {version}:\n{out}"
        );
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(
                out.lines()
                    .any(|l| l.contains(&*name) && l.contains("passed")),
                "{name} was not checked against {version}:\n{out}"
            );
        }
        assert!(!out.contains("ERROR"), "{out}");
    }

    // The checker is not a rubber stamp: a misspelt field and a wrong type in a copy of the
    // gateway's manifest are each refused, naming the field.
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo_root().join("deploy/kubernetes/gateway.yaml"))
        .expect("deploy/kubernetes/gateway.yaml");
    for (what, from, to, named) in [
        ("a misspelt field", "replicas: 3", "replica: 3", "replica"),
        ("a wrong type", "replicas: 3", "replicas: three", "replicas"),
    ] {
        assert!(original.contains(from), "gateway.yaml has no `{from}`");
        let bad = dir.path().join("gateway.yaml");
        std::fs::write(&bad, original.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(&checker, VERSIONS[1], &[bad]);
        assert!(!ok, "{what} passed the checker:\n{out}");
        assert!(
            out.contains(named),
            "{what}: the error does not name `{named}`:\n{out}"
        );
    }
}

/// The policy in `configmap.yaml`, with its placeholders filled as the README tells an operator
/// to (a token hash per client) and its secrets in the environment, passes `policy check`.
#[test]
fn the_configmaps_policy_passes_policy_check() {
    let path = repo_root().join("deploy/kubernetes/configmap.yaml");
    let text = std::fs::read_to_string(&path).expect("configmap.yaml");
    let doc: serde_json::Value = yaml_serde::from_str(&text).expect("configmap.yaml is YAML");
    let mut policy = doc["data"]["policy.toml"]
        .as_str()
        .expect("configmap.yaml has data.policy.toml")
        .to_owned();
    let placeholders: Vec<String> = policy
        .split('"')
        .filter(|s| s.starts_with("REPLACE_WITH_"))
        .map(str::to_owned)
        .collect();
    assert!(
        !placeholders.is_empty(),
        "the policy has no token placeholders any more: update this test"
    );
    for (i, p) in placeholders.iter().enumerate() {
        let hash = format!("{:x}", i + 1).repeat(64);
        policy = policy.replacen(p.as_str(), &hash[..64], 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &policy).unwrap();
    let out = Command::new(gateway_bin())
        .args(["policy", "check"])
        .arg(&file)
        .env("PORTCULLIS_FLEET_KEY", "a fleet key of the test")
        .env("REDIS_PASSWORD", "a redis password of the test")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}\n--- policy:\n{policy}");
    assert!(text.contains(": ok"), "{text}");
}
