//! compose.yaml for real: the gateway image is built offline from the binary under test
//! (tests/docker/build-gateway-image.sh) and the test's policy baked into an image of its own (as
//! a deployment bakes policy/compose.toml), Debian's docker-compose brings the stack up under a
//! unique project name on a free port of 127.0.0.1, the image's own healthcheck reports healthy,
//! a real MCP client (rmcp) drives initialize, tools/list and tools/call through the published
//! loopback port to a sandboxed server the gateway starts through the mounted Docker socket, and
//! `docker-compose down -v` leaves no container, network or volume behind.
//!
//! Who can change the policy (issue 34): the shipped stack's policy, edited from the host by the
//! non-root user who owns the project (the workspace), changes nothing; with compose.signed.yaml
//! the policy lives in a directory that user writes, and only a signed higher serial reloads.
//!
//! Under `CI=true` a missing engine or docker-compose fails the test; locally it is skipped
//! loudly.

mod common;
mod policy_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::compose::*;
use common::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
use common::gateway_bin;
use common::skip_or_fail;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;

const SECRET: &str = "pc-compose-secret-51d2e8";

fn policy_text(serial: u64, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:8811"
serial = {serial}

[servers.fixture]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
secrets = {{ API_TOKEN = "env:FIXTURE_API_TOKEN" }}
limits = {{ memory = "64m", cpus = 0.5, pids = 32 }}
{extra}
[audit]
dir = "/var/lib/portcullis/audit"
"#
    )
}

/// The project as a developer has it: the policy in the project directory (the workspace),
/// owned by the developer's non-root user (here nobody), and `.env` with compose settings, a
/// secret for the policy and `extra` lines. Returns the policy's path.
fn write_project(dir: &Path, port: u16, scope: &str, image: &str, extra: &str) -> PathBuf {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text(1, "")).expect("write policy");
    give_to_nobody(dir);
    std::fs::write(
        dir.join(".env"),
        format!(
            "PORTCULLIS_PORT={port}\nPORTCULLIS_IMAGE={image}\nPORTCULLIS_DOCKER_SCOPE={scope}\nPORTCULLIS_LOG=info\nFIXTURE_API_TOKEN={SECRET}\n{extra}"
        ),
    )
    .expect("write .env");
    policy
}

/// Makes `dir` and the files in it the workspace user's (nobody's).
fn give_to_nobody(dir: &Path) {
    let nobody = Some(nix::unistd::Uid::from_raw(policy_support::NOBODY));
    let nogroup = Some(nix::unistd::Gid::from_raw(policy_support::NOBODY));
    nix::unistd::chown(dir, nobody, nogroup).expect("chown");
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        nix::unistd::chown(&e.path(), nobody, nogroup).expect("chown");
    }
    policy_support::chmod(dir, 0o755);
}

fn text_of(r: &rmcp::model::CallToolResult) -> String {
    let v = serde_json::to_value(r).expect("result as JSON");
    v["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_serves_mcp_on_host_loopback_and_leaves_nothing_behind() {
    let scope = Scope::new("compose");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    if !docker_compose_present() {
        return skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
    }
    let began = Instant::now();
    build_gateway_image();
    let built = began.elapsed();

    let port = free_loopback_port();
    let mut project = Project::new(false);
    let baked = format!("portcullis/gateway:{}", project.name);
    let policy = write_project(project.dir.path(), port, &scope.name, &baked, "");
    bake_policy_image(&policy, &baked);
    project.images.push(baked);
    run(project.compose().args(["up", "--detach", "--no-build"]));
    let container = project.container();
    wait_healthy(&project, &container);
    let healthy = began.elapsed();

    // Published on the host's loopback and nowhere else.
    let ports = stdout(&run(Command::new("docker").args(["port", &container])));
    assert_eq!(ports, format!("8811/tcp -> 127.0.0.1:{port}"), "{ports}");

    // The gateway's own log is rotated, as compose.yaml says and the engine applied.
    let config = stdout(&run(project.compose().arg("config")));
    assert!(
        config.contains("max-size: 10m") && config.contains("max-file: '5'"),
        "{config}"
    );
    let log_config = stdout(&run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{json .HostConfig.LogConfig}}",
        &container,
    ])));
    assert_eq!(
        log_config,
        r#"{"Type":"json-file","Config":{"max-file":"5","max-size":"10m"}}"#
    );

    // The engine runs the gateway as compose.yaml promises: no capability at all (sidecar mode
    // leaves the tables to the agents), nothing writable but its volumes and /tmp, no new
    // privileges.
    let hardening = stdout(&run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}} {{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.Privileged}}",
        &container,
    ])));
    assert_eq!(
        hardening, r#"["ALL"] null true ["no-new-privileges:true"] false"#,
        "{hardening}"
    );

    // A real MCP client through the published port, to a server in its own sandbox.
    let url = format!("http://127.0.0.1:{port}/mcp");
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(url.as_str()))
            .await
            .expect("rmcp initializes through the published port");
    let info = serde_json::to_value(&*client.peer_info().expect("server info")).unwrap();
    assert_eq!(info["serverInfo"]["name"], "portcullis", "{info}");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let call = |name: &str, args: serde_json::Value| {
        CallToolRequestParams::new(name.to_owned())
            .with_arguments(args.as_object().cloned().expect("object"))
    };
    let r = client
        .call_tool(call("echo", serde_json::json!({"text": "through compose"})))
        .await
        .expect("tools/call echo");
    assert_eq!(text_of(&r), "through compose");
    // The secret went .env -> gateway container -> the one sandbox whose policy names it.
    let r = client
        .call_tool(call("env_get", serde_json::json!({"name": "API_TOKEN"})))
        .await
        .expect("tools/call env_get");
    // Echoed back, it is redacted by name: the sandbox holds exactly that value.
    assert_eq!(text_of(&r), "[REDACTED:API_TOKEN]");
    let sandboxes = containers_in(&rt, &scope.name).await;
    assert_eq!(
        sandboxes.len(),
        1,
        "the gateway started its server: {sandboxes:?}"
    );

    // The workspace's copy of the policy, edited from the host by its non-root owner, then a
    // reload (SIGHUP through the container's init): the policy in force is the image's, so
    // nothing changes. The listener opt-in carries over to the reload.
    let (ok, out) = policy_support::as_nobody(&format!(
        "printf '\\n[servers.fixture.tools]\\ndeny = [\"echo\"]\\n' >> {}",
        policy.display()
    ));
    assert!(ok, "the workspace user could not edit the policy: {out}");
    run(project.compose().args(["kill", "-s", "HUP", "portcullis"]));
    logged(&project, "policy reloaded", 1);
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    assert!(
        project.logs().contains(r#""unchanged":true"#),
        "{}",
        project.logs()
    );
    client.cancel().await.ok();

    // Another container on the project's network reaches the gateway's address but is cut off
    // before a byte is read; the host's loopback (above) and the container's own healthcheck
    // are the only ways in.
    let gateway_ip = stdout(&run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ])));
    let neighbour = Command::new("docker")
        .args(["run", "--rm", "--network"])
        .arg(format!("{}_default", project.name))
        .args(["--entrypoint", "/usr/local/bin/portcullis", GATEWAY_IMAGE])
        .args(["health", "--addr", &format!("{gateway_ip}:8811")])
        .output()
        .expect("run a neighbour container");
    let said = String::from_utf8_lossy(&neighbour.stderr);
    assert!(!neighbour.status.success(), "a neighbour got in: {said}");
    assert!(
        project
            .logs()
            .contains("connection refused: only the host's loopback may reach this listener"),
        "the refusal is the gateway's peer check, not a network failure: {said}\n{}",
        project.logs()
    );

    // The audit log lives on the named volume despite the read-only root filesystem.
    let verify = run(project.compose().args([
        "exec",
        "-T",
        "portcullis",
        "portcullis",
        "audit",
        "verify",
        "/var/lib/portcullis/audit",
    ]));
    assert!(stdout(&verify).contains(": ok:"), "{}", stdout(&verify));
    // And the doctor, in the deployment itself (the image points it at its own policy): who
    // can change the policy, engine, image, nftables, audit volume.
    let (ok, report) = project.doctor();
    assert!(ok, "{report}");
    for line in [
        "[ok]   policy file /etc/portcullis/policy.toml: it and the directories above it are writable only by trusted owners",
        "[ok]   docker: engine",
        &format!("[ok]   image {FIXTURE_IMAGE}"),
        // The gateway holds no capability and, with no server whose rules it programs,
        // needs none: a warning that says so, not a failure.
        "[warn] nftables: cannot list tables over netlink",
        "this process lacks CAP_NET_ADMIN; no server in this policy declares egress",
        "[ok]   audit dir /var/lib/portcullis/audit: writable",
    ] {
        assert!(report.contains(line), "missing `{line}` in:\n{report}");
    }
    assert!(!report.contains("[FAIL]"), "{report}");
    // Nor does its log blame anything else for the table it does not need.
    let logs = project.logs();
    assert!(!logs.contains("NFLOG"), "{logs}");

    project.down();
    let leftovers = project.leftovers();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let sandboxes = containers_in(&rt, &scope.name).await;
    assert!(
        sandboxes.is_empty(),
        "the gateway did not remove its server containers on stop: {sandboxes:?}"
    );
    eprintln!(
        "compose test: image build {:.1}s, up to healthy {:.1}s, whole run {:.1}s",
        built.as_secs_f64(),
        (healthy - built).as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

/// The opt-in is checked, not trusted: published on an address other than loopback (here the
/// default bridge's own address, which is reachable without leaving the machine), the gateway
/// refuses to start and says how to publish it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_published_off_loopback_makes_the_gateway_refuse_to_start() {
    let scope = Scope::new("compose-refuse");
    if runtime(&scope.name).await.is_none() {
        return;
    }
    build_gateway_image();
    let bridge = default_bridge_address();
    assert!(
        !bridge.is_empty(),
        "the default bridge has no gateway address (neither in docker network inspect nor on docker0)"
    );
    let port = free_loopback_port();
    let out = Command::new("docker")
        .args(["run", "--rm", "--user", "0:0", "--cap-drop", "ALL"])
        .args(["--volume", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["--env", &format!("PORTCULLIS_DOCKER_SCOPE={}", scope.name)])
        .args(["--publish", &format!("{bridge}:{port}:8811"), GATEWAY_IMAGE])
        .args(["serve", "--policy", "/etc/portcullis/policy.toml"])
        .args(["--listen", "0.0.0.0:8811", "--published-on-host-loopback"])
        .output()
        .expect("docker run the gateway image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(
        err.contains(&format!("port 8811/tcp is published on {bridge}"))
            && err.contains("127.0.0.1:8811:8811"),
        "{err}"
    );
    // Without the opt-in the ordinary listener rule refuses 0.0.0.0 as well.
    let out = Command::new("docker")
        .args(["run", "--rm", GATEWAY_IMAGE])
        .args(["serve", "--listen", "0.0.0.0:8811"])
        .output()
        .expect("docker run the gateway image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(err.contains("--published-on-host-loopback"), "{err}");
}

/// `portcullis policy ARGS` on the host, as the security team runs it.
fn policy_cli(args: &[&str]) -> String {
    stdout(&run(Command::new(gateway_bin()).arg("policy").args(args)))
}

/// compose.signed.yaml: the policy lives in a directory of the workspace that its non-root user
/// writes. Their edit is rejected (the policy in force keeps serving); the security team's
/// signed higher serial, synced into the same directory, reloads live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compose_signed_only_the_security_teams_signed_policy_changes_the_gateway() {
    let scope = Scope::new("compose-signed");
    if runtime(&scope.name).await.is_none() {
        return;
    }
    if !docker_compose_present() {
        return skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
    }
    build_gateway_image();
    let port = free_loopback_port();
    let mut project = Project::new(true);
    // The security team's key, off the workspace.
    let team = tempfile::tempdir().expect("tempdir");
    let key = team.path().join("policy.key");
    policy_cli(&["keygen", "--out", key.to_str().unwrap()]);
    let public = std::fs::read_to_string(team.path().join("policy.key.pub")).unwrap();
    let sign = |serial: u64, extra: &str| -> (String, String) {
        let staged = team.path().join("policy.toml");
        std::fs::write(&staged, policy_text(serial, extra)).unwrap();
        policy_cli(&[
            "sign",
            "--key",
            key.to_str().unwrap(),
            staged.to_str().unwrap(),
        ]);
        (
            std::fs::read_to_string(&staged).unwrap(),
            std::fs::read_to_string(team.path().join("policy.toml.sig")).unwrap(),
        )
    };
    let workspace = project.dir.path().join("team-policy");
    std::fs::create_dir(&workspace).unwrap();
    let (text, sig) = sign(1, "");
    std::fs::write(workspace.join("policy.toml"), text).unwrap();
    std::fs::write(workspace.join("policy.toml.sig"), sig).unwrap();
    give_to_nobody(&workspace);
    let extra = format!(
        "PORTCULLIS_POLICY_PUBKEY={}\nPORTCULLIS_POLICY_DIR={}\n",
        public.trim(),
        workspace.display()
    );
    write_project(project.dir.path(), port, &scope.name, GATEWAY_IMAGE, &extra);
    run(project.compose().args(["up", "--detach", "--no-build"]));
    let container = project.container();
    wait_healthy(&project, &container);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(url.as_str()))
            .await
            .expect("rmcp initializes through the published port");
    let echo = || {
        CallToolRequestParams::new("echo".to_owned()).with_arguments(
            serde_json::json!({"text": "in force"})
                .as_object()
                .cloned()
                .expect("object"),
        )
    };
    let r = client.call_tool(echo()).await.expect("tools/call echo");
    assert_eq!(text_of(&r), "in force");

    // The workspace user edits the policy (unsigned): rejected, and echo still served.
    let policy = workspace.join("policy.toml");
    let (ok, out) = policy_support::as_nobody(&format!(
        "printf '\\n[servers.fixture.tools]\\ndeny = [\"echo\"]\\n' >> {}",
        policy.display()
    ));
    assert!(ok, "the workspace user could not edit the policy: {out}");
    logged(&project, "policy reload rejected", 1);
    assert!(
        project.logs().contains("does not match"),
        "{}",
        project.logs()
    );
    let r = client.call_tool(echo()).await.expect("tools/call echo");
    assert_eq!(text_of(&r), "in force");

    // The security team's change, signed with a higher serial, arrives (a sync as the
    // workspace user): echo goes, live.
    let (text, sig) = sign(2, "\n[servers.fixture.tools]\ndeny = [\"echo\"]\n");
    let staged = project.dir.path().join("incoming");
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("policy.toml"), text).unwrap();
    std::fs::write(staged.join("policy.toml.sig"), sig).unwrap();
    give_to_nobody(&staged);
    let (ok, out) = policy_support::as_nobody(&format!(
        "cp {s}/policy.toml.sig {w}/.sig.new && cp {s}/policy.toml {w}/.policy.new && mv -f {w}/.sig.new {w}/policy.toml.sig && mv -f {w}/.policy.new {w}/policy.toml",
        s = staged.display(),
        w = workspace.display()
    ));
    assert!(ok, "sync failed: {out}");
    let start = Instant::now();
    while client
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .any(|t| t.name == "echo")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the signed policy was not put in force:\n{}",
            project.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.cancel().await.ok();
    let tail = stdout(&run(project.compose().args([
        "exec",
        "-T",
        "portcullis",
        "portcullis",
        "audit",
        "tail",
        "-n",
        "0",
        "--kind",
        "policy_reload",
        "/var/lib/portcullis/audit",
    ])));
    assert!(
        tail.contains("outcome=rejected") && tail.contains("does not match"),
        "{tail}"
    );
    assert!(tail.contains(r#""serial":{"from":1,"to":2}"#), "{tail}");
    let (_, report) = project.doctor();
    assert!(
        report.contains("[ok]   policy signature /etc/portcullis/signed/policy.toml.sig: verified"),
        "{report}"
    );
    project.down();
    assert!(project.leftovers().is_empty(), "{:?}", project.leftovers());
}

/// The default bridge's own address. An engine started moments ago (or restarted under another
/// process) can report an empty IPAM gateway while docker0 already carries the address, so the
/// interface is asked when the engine does not say.
fn default_bridge_address() -> String {
    let said = stdout(&run(Command::new("docker").args([
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        "bridge",
    ])));
    if !said.is_empty() {
        return said;
    }
    let ip = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .expect("run ip addr");
    let text = String::from_utf8_lossy(&ip.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_default()
        .to_owned()
}
