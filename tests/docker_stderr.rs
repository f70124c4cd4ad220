//! A Docker server flooding its stderr (issue 30): the same scenario as tests/server_stderr.rs,
//! with the hostile server in a hardened container, so the lines come through the attach
//! stream's demultiplexer. The image is the reference `mcp-time` image (Python) with the hostile
//! script as its entry point, built here offline.
//! Privileged (Docker): `flock /tmp/portcullis-priv.lock cargo test --test docker_stderr`.

mod common;
mod stderr_support;

use std::process::Command;

use common::docker::{require_image, runtime, Scope, TIME_IMAGE};
use common::{fixture_bin, Gateway};
use stderr_support::{assert_bounded, flood, noisy_script, LOG_RATE};

const NOISY_IMAGE: &str = "portcullis/noisy-stderr:test";

/// Builds NOISY_IMAGE from TIME_IMAGE and the script, unless the script is unchanged.
fn build_noisy_image() {
    use sha2::{Digest, Sha256};
    let script = std::fs::read(noisy_script()).expect("read the noisy server");
    let sum = hex::encode(Sha256::digest(&script));
    let label = "io.portcullis.noisy-sha256";
    let current = Command::new("docker")
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{ index .Config.Labels \"{label}\" }}}}"))
        .arg(NOISY_IMAGE)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if current == sum {
        return;
    }
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(ctx.path().join("noisy_stderr.py"), &script).expect("copy script");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {TIME_IMAGE}\nCOPY noisy_stderr.py /srv/noisy_stderr.py\nENTRYPOINT [\"/opt/py/bin/python3\", \"/srv/noisy_stderr.py\"]\n"
        ),
    )
    .expect("write Dockerfile");
    let out = Command::new("docker")
        .args(["build", "--quiet", "--label"])
        .arg(format!("{label}={sum}"))
        .args(["-t", NOISY_IMAGE])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build {NOISY_IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("docker")
        .args(["image", "prune", "--force", "--filter"])
        .arg(format!("label={label}"))
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_server_flooding_stderr_is_held_to_its_budget() {
    let scope = Scope::new("stderr-flood");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    if require_image(&rt, TIME_IMAGE, "run `make peers`, then the tests build it")
        .await
        .is_none()
    {
        return;
    }
    build_noisy_image();
    let policy = format!(
        r#"
[gateway]
server_log_rate = {LOG_RATE}

[servers.noisy]
runtime = "docker"
image = "{NOISY_IMAGE}"
limits = {{ memory = "128m", cpus = 1.0, pids = 32 }}

[servers.quiet]
runtime = "process"
command = "{fixture}"
"#,
        fixture = fixture_bin().display(),
    );
    let gw = Gateway::start_with(&policy, &[("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str())]);
    let f = flood(&gw, 300_000).await;
    assert_bounded(&f);
}
