//! Sidecar mode with real containers: each docker server's egress is enforced by a
//! `portcullis egress-agent` container whose table lives in the server's own network
//! namespace (the server joins it), not by a table of the gateway's. Privileged (root,
//! dockerd, `ip`, `nft`); the fake outside world is `common::hostlab` (nothing real is reached:
//! the sandbox pool is routed into the test's namespace only).
//!
//! The agent image is the gateway image built from the binary under test
//! (`tests/docker/build-gateway-image.sh`), as a deployment would use the gateway's own image.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::query_parameters::{InspectContainerOptions, KillContainerOptions};
use common::client::{Mcp, LATEST};
use common::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
use common::hostlab::HostLab;
use common::{audit_records, gateway_bin, Cases, Gateway};
use portcullis::egress::Names;
use portcullis::instance::InstanceId;
use serde_json::{json, Value};

const AGENT_IMAGE: &str = "portcullis/gateway:sidecar-test";

fn build_agent_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("tests/docker/build-gateway-image.sh"))
            .arg(AGENT_IMAGE)
            .env("PORTCULLIS_GATEWAY_BIN", gateway_bin())
            .output()
            .expect("build-gateway-image.sh");
        assert!(
            out.status.success(),
            "building the agent image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn policy(lab: &HostLab, audit: &Path, a: &str, b: &str) -> String {
    format!(
        r#"
[gateway]
naming = "prefix"

[egress]
mode = "sidecar"
agent_image = "{AGENT_IMAGE}"
upstream_resolvers = ["{dns}"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"
network_pool = "{pool}"

[audit]
dir = "{audit}"

[servers.{a}]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
egress.allow = ["api.example.test:443"]

[servers.{b}]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
egress.allow = ["api.example.test:443"]
"#,
        dns = lab.sa(53, 53),
        pool = lab.pool,
        audit = audit.display(),
    )
}

async fn probe(c: &mut Mcp, server: &str, args: Value) -> String {
    let r = c.call_tool(&format!("{server}__net_probe"), args).await;
    match r["result"]["content"][0]["text"].as_str() {
        Some(t) => t.to_owned(),
        None => format!("call failed: {r}"),
    }
}

async fn await_tools(c: &mut Mcp, servers: &[&str]) {
    for s in servers {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = c
                .call_tool(&format!("{s}__echo"), json!({"text": "up"}))
                .await;
            if r["result"]["content"][0]["text"] == "up" {
                break;
            }
            assert!(Instant::now() < deadline, "{s} never served a call: {r}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

async fn await_record(dir: &Path, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if audit_records(dir).iter().any(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record for {what} within {limit:?}: {:#?}",
            audit_records(dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The container of `server` with `purpose` (`egress-agent`, or empty for the server).
async fn container_of(
    rt: &portcullis::sandbox::docker::DockerRuntime,
    scope: &str,
    server: &str,
    agent: bool,
) -> String {
    containers_in(rt, scope)
        .await
        .into_iter()
        .find(|(_, l)| {
            l.get("io.portcullis.server").map(String::as_str) == Some(server)
                && (l.get("io.portcullis.purpose").map(String::as_str) == Some("egress-agent"))
                    == agent
        })
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no container of {server} (agent: {agent})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_agents_hold_docker_servers_to_their_rules() {
    if !common::netlab::privileged() {
        return;
    }
    let scope = Scope::new("sidecar");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    build_agent_image();
    let lab = HostLab::new();
    let _zone = lab.serve();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path();
    let tag = common::netlab::tag().replace('x', "");
    let (a, b) = (format!("sa{tag}"), format!("sb{tag}"));
    let mut gw = Gateway::start_with(
        &policy(&lab, audit, &a, &b),
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_INSTANCE", scope.name.as_str()),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b]).await;
    let mut r = Cases(Vec::new());

    // The allowed name resolves through the agent (Docker's 127.0.0.11 is sent to it) and
    // its pinned address connects.
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": "api.example.test", "port": 443, "timeout_ms": 2000}),
    )
    .await;
    r.check(
        "an allowed host works",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = probe(
        &mut c,
        &a,
        json!({"op": "tcp", "target": lab.sa(30, 443), "timeout_ms": 1000}),
    )
    .await;
    r.check(
        "an unlisted address is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": "unlisted.test", "port": 443, "timeout_ms": 1500}),
    )
    .await;
    r.check(
        "an unlisted name is refused by the agent's resolver",
        !out.starts_with("connected"),
        &out,
    );
    for tcp in [false, true] {
        let out = probe(
            &mut c,
            &a,
            json!({"op": "dns", "server": lab.sa(53, 53), "name": "unlisted.test", "qtype": "A", "tcp": tcp, "timeout_ms": 1000}),
        )
        .await;
        r.check(
            &format!("the upstream resolver is out of reach directly (tcp: {tcp})"),
            out.starts_with("failed"),
            &out,
        );
    }

    // Another server's agent (its address on its own network) is out of reach.
    let b_agent = container_of(&rt, &scope.name, &b, true).await;
    let info = rt
        .api()
        .inspect_container(&b_agent, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let b_ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.into_values().next())
        .and_then(|e| e.ip_address)
        .expect("agent address");
    for args in [
        json!({"op": "dns", "server": format!("{b_ip}:53"), "name": "api.example.test", "qtype": "A", "timeout_ms": 1000}),
        json!({"op": "tcp", "target": format!("{b_ip}:53"), "timeout_ms": 1000}),
    ] {
        let out = probe(&mut c, &a, args).await;
        r.check(
            "another server's agent is out of reach",
            out.starts_with("failed"),
            &out,
        );
    }

    // The server has no capabilities, and its table is owned: not even root on the host,
    // entering the namespace, can change it.
    let a_srv = container_of(&rt, &scope.name, &a, false).await;
    let info = rt
        .api()
        .inspect_container(&a_srv, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let hc = info.host_config.clone().unwrap_or_default();
    let a_agent = container_of(&rt, &scope.name, &a, true).await;
    r.check(
        "the server joins its agent's namespace with no capabilities",
        hc.cap_drop == Some(vec!["ALL".to_owned()])
            && hc.cap_add.as_ref().is_none_or(|c| c.is_empty())
            && hc.network_mode.as_deref() == Some(&format!("container:{a_agent}")),
        &format!(
            "cap_drop {:?} cap_add {:?} network_mode {:?}",
            hc.cap_drop, hc.cap_add, hc.network_mode
        ),
    );
    let pid = info.state.and_then(|s| s.pid).expect("pid").to_string();
    let table = Names::new(InstanceId::parse(&scope.name).unwrap()).table();
    let del = Command::new("nsenter")
        .args(["-t", &pid, "-n", "nft", "delete", "table", "inet", &table])
        .output()
        .expect("nsenter");
    let list = Command::new("nsenter")
        .args(["-t", &pid, "-n", "nft", "list", "table", "inet", &table])
        .output()
        .expect("nsenter");
    r.check(
        "the table in the server's namespace cannot be changed",
        !del.status.success() && list.status.success(),
        String::from_utf8_lossy(&del.stderr).trim(),
    );

    // Denials are audited as egress_denied records of the server.
    let name = a.clone();
    await_record(audit, Duration::from_secs(30), "a denial", |rec| {
        rec["kind"] == "egress_denied" && rec["server"] == name.as_str()
    })
    .await;
    r.check("denials are audited", true, "egress_denied record written");

    // An agent that dies takes its server down (its table is no longer watched).
    rt.api()
        .kill_container(&a_agent, None::<KillContainerOptions>)
        .await
        .expect("kill agent");
    let name = a.clone();
    await_record(audit, Duration::from_secs(30), "the agent's crash", |rec| {
        rec["kind"] == "tamper"
            && rec["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&name) && d.contains("exited"))
    })
    .await;
    r.check("an agent crash is audited", true, "tamper record written");

    gw.terminate(Duration::from_secs(60));
    let left = containers_in(&rt, &scope.name).await;
    r.check(
        "stopping the gateway removes agents and servers",
        left.is_empty(),
        &format!("{left:?}"),
    );
    r.finish();
}
