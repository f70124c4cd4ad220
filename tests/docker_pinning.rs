//! Image pinning (privileged: a real Docker engine; run under /tmp/portcullis-priv.lock).
//!
//! A local image is built, pinned, then rebuilt under the same tag with a changed digest (a
//! label changes its config, so its id): a server pinned by `image = "name@sha256:..."` runs the
//! pinned image while it exists and refuses the tag's new one once it is gone, and a server locked by `portcullis tools lock` does not start in
//! `enforce` mode once its image changed (`warn` starts it, and says so). No registry: images
//! are built from the fixture image on this machine.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{runtime, Scope, FIXTURE_IMAGE};
use common::{audit_records, gateway_bin, http_get, Gateway};
use portcullis::sandbox::{ImagePin, Runtime, SandboxError, SpawnContext};

/// Builds `tag` from the fixture image with label `generation`; returns its image id.
fn build(tag: &str, generation: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {FIXTURE_IMAGE}\nLABEL io.portcullis.test.generation=\"{generation}\"\n"),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn server(image: &str) -> portcullis::policy::Server {
    let text = format!("[servers.pin]\nruntime = \"docker\"\nimage = \"{image}\"\n");
    portcullis::policy::parse(&text, "<test>")
        .expect("policy")
        .servers
        .remove("pin")
        .expect("server")
}

fn pin_error(r: Result<portcullis::sandbox::Spawned, SandboxError>) -> String {
    match r {
        Err(e @ SandboxError::ImagePin(_)) => e.to_string(),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("started on an image that is not the pinned one"),
    }
}

#[tokio::test]
async fn a_pinned_reference_starts_only_on_its_digest() {
    let scope = Scope::new("pinref");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let tag = format!("portcullis/pin-test:{}", scope.name);
    let first = build(&tag, "1");
    let pinned = server(&format!("{tag}@{first}"));
    let ctx = SpawnContext::default();
    let mut sp = rt
        .spawn(&pinned, &ctx)
        .await
        .expect("the pinned image starts");
    assert_eq!(sp.info.image_id.as_deref(), Some(first.as_str()));
    sp.instance.kill().await;

    // The tag now names another image: the pinned server still runs the pinned one.
    let second = build(&tag, "2");
    assert_ne!(first, second);
    let mut sp = rt
        .spawn(&pinned, &ctx)
        .await
        .expect("the pinned image starts");
    assert_eq!(sp.info.image_id.as_deref(), Some(first.as_str()));
    sp.instance.kill().await;
    // Once the pinned image is gone, the name alone is not enough: refused, saying which is
    // which.
    // The killed container may still be on its way out: the engine refuses to delete an image
    // a container uses, so ask again for a bounded while.
    let mut rmi = Command::new("docker")
        .args(["rmi", &first])
        .output()
        .unwrap();
    for _ in 0..50 {
        if rmi.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        rmi = Command::new("docker")
            .args(["rmi", &first])
            .output()
            .unwrap();
    }
    assert!(
        rmi.status.success(),
        "{}",
        String::from_utf8_lossy(&rmi.stderr)
    );
    let err = pin_error(rt.spawn(&pinned, &ctx).await);
    assert!(err.contains(&first) && err.contains(&second), "{err}");
    assert!(err.contains("policy's image reference"), "{err}");

    // A pin from the lock file: the tag alone starts only on the locked id.
    let tagged = server(&tag);
    let locked = SpawnContext {
        image_pin: Some(ImagePin {
            digest: first.clone(),
            source: "lock file p.lock".into(),
        }),
        ..SpawnContext::default()
    };
    let err = pin_error(rt.spawn(&tagged, &locked).await);
    assert!(
        err.contains("lock file p.lock") && err.contains("tools lock --update"),
        "{err}"
    );
    let relocked = SpawnContext {
        image_pin: Some(ImagePin {
            digest: second.clone(),
            source: "lock file p.lock".into(),
        }),
        ..SpawnContext::default()
    };
    let mut sp = rt
        .spawn(&tagged, &relocked)
        .await
        .expect("the locked image starts");
    sp.instance.kill().await;
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}

fn wait_down(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(&format!("{}/ready", gw.base)).unwrap_or_default();
        if body.contains(needle) {
            return body;
        }
        assert!(Instant::now() < deadline, "no `{needle}` in /ready: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_locked_image_that_changed_does_not_start_in_enforce_mode() {
    let scope = Scope::new("pinlock");
    let Some(_rt) = runtime(&scope.name).await else {
        return;
    };
    let tag = format!("portcullis/pin-test:{}", scope.name);
    let first = build(&tag, "1");
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("policy.toml.lock");
    let policy = |mode: &str| {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nlock = \"{}\"\nlock_mode = \"{mode}\"\n\n[servers.pin]\nruntime = \"docker\"\nimage = \"{tag}\"\n",
            lock.display()
        )
    };
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy("enforce")).unwrap();
    let out = Command::new(gateway_bin())
        .args(["tools", "lock", "--policy"])
        .arg(&policy_path)
        .args(["--docker-scope", &scope.name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.contains(&first), "the lock names the image id: {text}");

    // Unchanged: it starts under the lock.
    let env = [("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str())];
    drop(Gateway::start_with(&policy("enforce"), &env));

    let second = build(&tag, "2");
    let gw = Gateway::spawn(&policy("enforce"), &env);
    let body = wait_down(&gw, "was not started");
    assert!(body.contains(&first) && body.contains(&second), "{body}");
    // The record is written after `/ready` says so (the audit log appends asynchronously):
    // wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = audit_records(&gw.dir().join("portcullis-audit"));
        if records.iter().any(|r| {
            r["kind"] == "container_stop"
                && r["detail"].as_str().is_some_and(|d| d.contains(&second))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused start is audited with both digests: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);

    // warn: it starts on the new image, and the difference is audited.
    let gw = Gateway::start_with(&policy("warn"), &env);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = audit_records(&gw.dir().join("portcullis-audit"));
        let found = records.iter().find(|r| r["kind"] == "lock_mismatch");
        if let Some(r) = found {
            let d = r["detail"].as_str().unwrap();
            assert!(
                d.contains(&first) && d.contains(&second) && d.contains("allowed"),
                "{d}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lock_mismatch record: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);

    // `tools diff` names the image change; `--update` approves it and enforce starts it again.
    let out = Command::new(gateway_bin())
        .args(["tools", "diff", "--policy"])
        .arg(&policy_path)
        .args(["--docker-scope", &scope.name])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("image: {first} -> {second}")),
        "{shown}"
    );
    let out = Command::new(gateway_bin())
        .args(["tools", "lock", "--update", "--policy"])
        .arg(&policy_path)
        .args(["--docker-scope", &scope.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    drop(Gateway::start_with(&policy("enforce"), &env));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}
