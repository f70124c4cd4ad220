//! The devcontainer kit's workspace behind the real egress agent, with real containers: the
//! agent (`portcullis egress-agent --connect`, from the gateway image built from the binary
//! under test) owns a network namespace, the workspace (the kit's offline workspace image:
//! Node, the Claude Code CLI, no capabilities, uid 1000) joins it, and the gateway on the host
//! hands the agent the policy's `[workspace]` rules over its Unix socket.
//!
//! From inside the workspace: an allowed fake external host works, an unlisted one, a direct
//! DNS question to another server, the metadata address and a host port are blocked, the
//! gateway's MCP endpoint works (TLS, client token), root cannot change the rules, and the
//! denials are in the audit log with `server = "workspace"`. Then the changing-address case:
//! an allowed name that moves keeps working (re-pinned on the next question) and its old
//! address closes when its pin expires.
//!
//! Privileged (root, dockerd, `ip`, `nft`), run under the privileged-test lock. The outside
//! world is `common::hostlab`: the kit network is carved from the lab's pool, whose traffic is
//! routed only into the test's namespace with the test's DNS server; nothing real is reached.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::hostlab::HostLab;
use common::kit::{
    build_images, docker, make_cert, must, only_the_gateway_connected, text, AGENT_IMAGE,
    CLAUDE_QUIET_ENV, PROBE, WORKSPACE_IMAGE,
};
use common::sidecar::AGENT_PRIVILEGES;
use common::{audit_records, gateway_bin, Cases};
use serde_json::Value;

const TOKEN: &str = "pcs_workspace-egress-test-token";

/// The kit's containers and network; removed on drop.
struct Kit {
    net: String,
    agent: String,
    workspace: String,
}

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.workspace, &self.agent]);
        let _ = docker(&["network", "rm", &self.net]);
    }
}

impl Kit {
    fn probe(&self, args: &[&str]) -> String {
        let mut a = vec!["exec", &self.workspace, "node", "-e", PROBE];
        a.extend_from_slice(args);
        text(&docker(&a)).trim().to_owned()
    }
}

/// The gateway under test on the kit network's host address (the common harness always
/// listens on loopback); killed on drop. Its log goes to a file the test reads.
struct Served {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Served {
    fn start(dir: &Path, policy: &str, instance: &str, socket: &Path) -> Served {
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let log = dir.join("gateway.log");
        let child = Command::new(gateway_bin())
            .args(["serve", "--policy"])
            .arg(&path)
            .env("PORTCULLIS_INSTANCE", instance)
            .env("PORTCULLIS_WORKSPACE_AGENT_SOCKET", socket)
            .env("PORTCULLIS_STATE_DIR", dir.join("state"))
            .env("RUST_LOG", "info,portcullis=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("gateway.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the gateway");
        Served { child, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- gateway log ---\n{}", self.stderr());
    }
}

async fn await_record(dir: &Path, limit: Duration, pred: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if audit_records(dir).iter().any(&pred) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workspace_reaches_only_its_rules_and_the_gateway() {
    if !common::netlab::privileged() {
        return;
    }
    // The engine only: this test needs none of the shared test images (their build is slow).
    if common::docker::engine().is_none() {
        return;
    }
    let scope = format!("wsegress{}", common::netlab::tag().replace('x', ""));
    if common::peer("node/node_modules/@anthropic-ai/claude-code/bin/claude.exe").is_none() {
        return;
    }
    build_images();
    let lab = HostLab::new();
    let zone = lab.serve();
    let tag = common::netlab::tag().replace('x', "");
    let k = lab.k;
    // The kit network inside the lab's pool: its traffic can only reach the lab.
    let gw_ip = Ipv4Addr::new(10, 214, k, 241);
    let port = 20000 + u16::from(k);
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let sock = dir.path().join("agent");
    let audit = dir.path().join("audit");
    for d in [&tls, &sock, &audit] {
        std::fs::create_dir_all(d).unwrap();
    }
    make_cert(&tls, &format!("IP:{gw_ip}"));
    let mut kit = Kit {
        net: format!("pcw-{tag}"),
        agent: format!("pcw-agent-{tag}"),
        workspace: format!("pcw-ws-{tag}"),
    };
    drop(Kit {
        net: kit.net.clone(),
        agent: kit.agent.clone(),
        workspace: kit.workspace.clone(),
    });
    must(&[
        "network",
        "create",
        "--subnet",
        &format!("10.214.{k}.240/29"),
        "--gateway",
        &gw_ip.to_string(),
        &kit.net,
    ]);
    let policy = format!(
        r#"
[gateway]
listen = "{gw_ip}:{port}"
allowed_hosts = ["{gw_ip}:{port}"]

[gateway.tls]
cert = "{tls}/gateway.crt"
key = "{tls}/gateway.key"

[clients.workspace]
token_sha256 = "{hash}"

[egress]
upstream_resolvers = ["{dns}"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"

[audit]
dir = "{audit}"

[workspace]
allow = ["api.example.test:443", "moved.example.test:443", "{gw_ip}:{port}"]
"#,
        tls = tls.display(),
        hash = common::token_hash(TOKEN),
        dns = lab.sa(53, 53),
        audit = audit.display(),
    );
    let socket = sock.join("workspace.sock");
    let gw = Served::start(dir.path(), &policy, &scope, &socket);
    let mount = format!("{}:/run/portcullis-agent", sock.display());
    let mut args = vec!["run", "-d", "--name", &kit.agent, "--network", &kit.net];
    args.extend_from_slice(&AGENT_PRIVILEGES);
    args.extend_from_slice(&[
        "--security-opt",
        "no-new-privileges:true",
        "--read-only",
        "--dns",
        "127.0.0.1",
        "-v",
        &mount,
        AGENT_IMAGE,
        "egress-agent",
        "--connect",
        "/run/portcullis-agent/workspace.sock",
    ]);
    kit.agent = must(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.stderr().contains("workspace egress agent ready") {
        assert!(
            Instant::now() < deadline,
            "the agent never got ready; agent: {}\ngateway: {}",
            text(&docker(&["logs", &kit.agent])),
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ca = format!(
        "{}:/etc/portcullis/tls/ca.crt:ro",
        tls.join("ca.crt").display()
    );
    // Claude Code's managed files for this gateway's URL, as the kit bakes them in.
    let managed = dir.path().join("managed");
    let out = Command::new(gateway_bin())
        .args(["client-config", "claude", "--managed", "--policy"])
        .arg(dir.path().join("policy.toml"))
        .args([
            "--base-url",
            &format!("https://{gw_ip}:{port}"),
            "--out-dir",
        ])
        .arg(&managed)
        .output()
        .unwrap();
    assert!(out.status.success(), "client-config: {}", text(&out));
    let mounts: Vec<String> = ["managed-mcp.json", "managed-settings.json"]
        .iter()
        .map(|f| format!("{}:/etc/claude-code/{f}:ro", managed.join(f).display()))
        .collect();
    kit.workspace = must(&[
        "run",
        "-d",
        "-v",
        &mounts[0],
        "-v",
        &mounts[1],
        "--name",
        &kit.workspace,
        "--network",
        &format!("container:{}", kit.agent),
        "--user",
        "1000:1000",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "-v",
        &ca,
        WORKSPACE_IMAGE,
        "sleep",
        "infinity",
    ]);
    // A port of the host (the kit network's side of it) that is not the gateway's.
    let host_port = TcpListener::bind((gw_ip, 0)).unwrap();
    let host_port = host_port.local_addr().unwrap().port().to_string();
    let mut r = Cases(Vec::new());

    let out = kit.probe(&["resolve_connect", "api.example.test", "443"]);
    r.check(
        "an allowed name resolves through the agent and connects",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = kit.probe(&["resolve_connect", "unlisted.test", "443"]);
    r.check(
        "an unlisted name is refused by the agent's resolver",
        out.starts_with("failed"),
        &out,
    );
    let ip30 = lab.ip(30).to_string();
    let out = kit.probe(&["tcp", &ip30, "443"]);
    r.check(
        "an unlisted address is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = kit.probe(&["dns", &lab.sa(53, 53), "api.example.test"]);
    r.check(
        "a direct DNS question to another server is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = kit.probe(&["tcp", "169.254.169.254", "80"]);
    r.check(
        "the metadata address is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = kit.probe(&["tcp", &gw_ip.to_string(), &host_port]);
    r.check(
        "a host port other than the gateway's is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = text(&docker(&[
        "exec",
        &kit.workspace,
        "sh",
        "-c",
        "test -e /var/run/docker.sock && echo present || echo absent",
    ]));
    r.check(
        "the Docker socket is not in the workspace",
        out.trim() == "absent",
        &out,
    );
    let url = format!("https://{gw_ip}:{port}/mcp");
    let out = kit.probe(&["mcp", &url, TOKEN]);
    r.check(
        "the gateway's MCP endpoint works (TLS, client token)",
        out.starts_with("status 200") && out.contains("protocolVersion"),
        &out,
    );
    // The full stack: Claude Code in the workspace lists only the gateway, Connected, through
    // the workspace's table (its other traffic has nowhere to go but the test's lab).
    let token_env = format!("PORTCULLIS_TOKEN={TOKEN}");
    let mut args = vec!["exec", "-e", "HOME=/tmp", "-e", &token_env];
    args.extend(["-e", "NODE_EXTRA_CA_CERTS=/etc/portcullis/tls/ca.crt"]);
    for e in &CLAUDE_QUIET_ENV {
        args.extend(["-e", e]);
    }
    args.extend([kit.workspace.as_str(), "claude", "mcp", "list"]);
    let listed = text(&docker(&args));
    r.check(
        "`claude mcp list` in the workspace shows only the gateway, Connected",
        only_the_gateway_connected(&listed),
        &listed,
    );
    for cmd in ["nft flush ruleset", "iptables -F"] {
        let o = docker(&["exec", "-u", "0", &kit.workspace, "sh", "-c", cmd]);
        r.check(
            &format!("root in the workspace cannot run `{cmd}`"),
            !o.status.success(),
            &text(&o),
        );
    }
    let found = await_record(&audit, Duration::from_secs(30), |rec| {
        rec["kind"] == "egress_denied" && rec["server"] == "workspace"
    })
    .await;
    r.check(
        "the denials are audited with the workspace as subject",
        found,
        "egress_denied, server = workspace",
    );

    // The changing address: pinned at question time, so a move is followed on the next
    // question, and the old address closes when its pin (TTL 1 s, at least pin_ttl_min) ends.
    let (old, new) = (lab.ip(11).to_string(), lab.ip(12).to_string());
    let out = kit.probe(&["resolve_connect", "moved.example.test", "443"]);
    r.check(
        "an allowed name connects at its first address",
        out.starts_with(&format!("connected {old} ")),
        &out,
    );
    *zone.moved.lock().unwrap() = lab.ip(12);
    // Past the resolver's cache of the old answer (TTL 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = kit.probe(&["resolve_connect", "moved.example.test", "443"]);
    r.check(
        "after the move the name connects at its new address (re-pinned)",
        out.starts_with(&format!("connected {new} ")),
        &out,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = kit.probe(&["tcp", &old, "443"]);
    r.check(
        "the old address is closed once its pin expired",
        out.starts_with("failed"),
        &out,
    );
    let out = kit.probe(&["tcp", &new, "443"]);
    r.check(
        "the new address is also closed once its pin expired (nothing asked again)",
        out.starts_with("failed"),
        &out,
    );
    drop(gw);
    r.finish();
}
