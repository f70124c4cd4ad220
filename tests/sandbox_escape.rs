//! Hostile servers try to leave their sandbox, through the real gateway running as root.
//!
//! `tests/hostile/escape_server.py` is the server: its `escape` tool tries setns into every
//! namespace it can name under /proc (then `nft list tables`, an unlisted host and another DNS
//! server from there), `nsenter`, `unshare`, `mount`, raw sockets, ptrace of the gateway,
//! reading the gateway's environment, the audit signing key, the state directory and another
//! server's secret file, signalling the gateway, `nft list tables`, and connecting to an
//! unlisted host and to a DNS server other than its resolver. It runs once as a `process`
//! server with egress rules and once in a container (the `mcp-time` test image has Python),
//! and every attempt must fail. Privileged (root, `ip`, `nft`, dockerd).
//!
//! Lab: an "external" namespace joined to the host by a veth, holding the unlisted host
//! (198.19.K.30), the test's DNS server (198.19.K.53) and the allowed host (198.19.K.10). The
//! hostile server targets only these addresses, so even a sandbox that got out could reach
//! nothing but hosts this test made.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::docker::{require_image, runtime, Scope, TIME_IMAGE};
use common::netlab::{self, dns_server, sh, tcp_service, Ns, Zone};
use common::{audit_records, repo_root, Gateway};
use serde_json::{json, Value};

/// One `table inet portcullis` per host: the tests of this file take turns.
static HOST_TABLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The external namespace and its veth; removed on drop.
struct Lab {
    k: u8,
    veth: String,
    _ext: Ns,
    _zone: Arc<Zone>,
}

impl Lab {
    fn new() -> Lab {
        let k = u8::try_from(1 + std::process::id() % 200).unwrap();
        let veth = format!("pesc{k}");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &veth])
            .output();
        let ext = Ns::new(format!("pse-{}", netlab::tag()));
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.19.{k}.1/24"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        for h in [10, 30, 53] {
            ext.ip(&["addr", "add", &format!("198.19.{k}.{h}/24"), "dev", "eth0"]);
        }
        ext.ip(&["link", "set", "eth0", "up"]);
        let zone = Zone::new([198, 19, k], vec![Ipv4Addr::new(198, 19, k, 10)]);
        dns_server(&ext, SocketAddr::from(([198, 19, k, 53], 53)), zone.clone());
        for port in [443u16, 80] {
            tcp_service(&ext, SocketAddr::from(([0, 0, 0, 0], port)), "ok");
        }
        Lab {
            k,
            veth,
            _ext: ext,
            _zone: zone,
        }
    }

    fn sa(&self, host: u8, port: u16) -> String {
        format!("198.19.{}.{host}:{port}", self.k)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// What a gateway killed by a failing test leaves behind (a clean stop removes it itself).
struct Leftovers(portcullis::egress::Names, Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for server in &self.1 {
            let netns = self.0.netns(server);
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &netns])
                .output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
        }
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.0.table()])
            .output();
    }
}

/// A Python every user can run (the server runs as nobody): the system's, not one under a
/// home directory such as pyenv's.
fn system_python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a system python3 (apt-get install python3)")
}

fn hostile_dir() -> PathBuf {
    repo_root().join("tests/hostile")
}

/// The attempts the hostile server reports: (attempt, escaped, detail).
async fn escape(c: &mut Mcp, server: &str, args: Value) -> Vec<(String, bool, String)> {
    let r = c.call_tool(&format!("{server}__escape"), args).await;
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{server}__escape failed: {r}"));
    let list: Vec<Value> = serde_json::from_str(text).expect("the attempts as JSON");
    list.into_iter()
        .map(|a| {
            (
                a["attempt"].as_str().unwrap_or_default().to_owned(),
                a["escaped"].as_bool().unwrap_or(true),
                a["detail"].to_string(),
            )
        })
        .collect()
}

/// Prints every attempt as a table row and fails on any that worked.
fn judge(kind: &str, attempts: &[(String, bool, String)], failed: &mut Vec<String>) {
    for (attempt, escaped, detail) in attempts {
        let tag = if *escaped { "ESCAPED" } else { "blocked" };
        eprintln!("[{kind}] {tag}: {attempt}: {detail}");
        if *escaped {
            failed.push(format!("{kind}: {attempt}: {detail}"));
        }
    }
}

async fn await_tools(c: &mut Mcp, tools: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = c.request("tools/list", json!({})).await;
        let names: Vec<String> = listed["result"]["tools"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if tools.iter().all(|t| names.iter().any(|n| n == t)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tools {tools:?} never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_servers_cannot_leave_their_sandbox() {
    let _turn = HOST_TABLE.lock().await;
    if !netlab::privileged() {
        return;
    }
    let scope = Scope::new("escape");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    if require_image(&rt, TIME_IMAGE, "run tests/docker/time-image.sh")
        .await
        .is_none()
    {
        return;
    }
    let lab = Lab::new();
    let t = netlab::tag().replace('x', "");
    let (p, d, v) = (format!("xp{t}"), format!("xd{t}"), format!("xv{t}"));
    let instance = format!("escape-{t}");
    let names = portcullis::egress::Names::new(
        portcullis::instance::InstanceId::parse(&instance).expect("instance id"),
    );
    let _leftovers = Leftovers(names, vec![p.clone()]);
    // What must stay out of reach: the audit log with its signing key, the state directory,
    // and a secret file of another server. Their modes are left open on purpose (0755 folders,
    // a 0644 file): the gateway must say so at start-up, and the mount view must hide them
    // anyway.
    let private = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let audit = private.path().join("audit");
    let state = private.path().join("state");
    let secret = private.path().join("victim-token");
    std::fs::write(&secret, "victim-secret-value\n").unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("oauth-cache.json"), "{\"token\":\"x\"}").unwrap();
    let policy = format!(
        r#"
[gateway]
naming = "prefix"
state_dir = "{state}"
instance = "{instance}"

[egress]
upstream_resolvers = ["{dns}"]
network_pool = "10.215.{k}.0/24"

[audit]
dir = "{audit}"

[servers.{p}]
runtime = "process"
command = "{python}"
args = ["{script}"]
egress.allow = ["api.example.test:443"]

[servers.{d}]
runtime = "docker"
image = "{TIME_IMAGE}"
# The image's entrypoint is `python3 -m mcp_server_time`: a stand-in package runs the hostile
# server instead (tests/hostile/shadow).
env = {{ PYTHONPATH = "/hostile/shadow" }}
mounts = [{{ source = "{hostile}", target = "/hostile" }}]
egress.allow = ["api.example.test:443"]

[servers.{v}]
runtime = "process"
command = "{{fixture}}"
secrets = {{ VICTIM_TOKEN = "file:{secret}" }}
"#,
        state = state.display(),
        instance = instance,
        dns = lab.sa(53, 53),
        k = lab.k,
        audit = audit.display(),
        python = system_python(),
        script = hostile_dir().join("escape_server.py").display(),
        hostile = hostile_dir().display(),
        secret = secret.display(),
    );
    let gw = Gateway::start_with(&policy, &[("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str())]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let (pe, de) = (format!("{p}__escape"), format!("{d}__escape"));
    await_tools(&mut c, &[&pe, &de]).await;
    let args = json!({
        "gateway_pid": gw.child.id(),
        "unlisted": lab.sa(30, 443),
        "other_dns": lab.sa(53, 53),
        "files": {
            "the audit signing key": audit.join("signing.key"),
            "the state directory": state.join("oauth-cache.json"),
            "another server's secret file": secret,
        },
    });
    let mut failed = Vec::new();
    for what in [
        format!("secret VICTIM_TOKEN of server {v} is readable by the server's user"),
        "the state directory is readable by the server's user".to_owned(),
    ] {
        if !gw.stderr().contains(&what) {
            failed.push(format!("start-up did not warn: {what}"));
        }
    }
    let process = escape(&mut c, &p, args.clone()).await;
    judge("process", &process, &mut failed);
    let docker = escape(&mut c, &d, args).await;
    judge("docker", &docker, &mut failed);
    for (kind, attempts) in [("process", &process), ("docker", &docker)] {
        assert!(
            attempts.len() >= 20,
            "{kind}: too few attempts reported: {attempts:#?}"
        );
    }
    // The blocked connections the kernel reported are in the audit log.
    let deadline = Instant::now() + Duration::from_secs(15);
    for server in [&p, &d] {
        while !audit_records(&audit)
            .iter()
            .any(|r| r["kind"] == "egress_denied" && r["server"] == server.as_str())
        {
            if Instant::now() > deadline {
                failed.push(format!("{server}: no egress_denied record"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(failed.is_empty(), "attempts that worked: {failed:#?}");
}
