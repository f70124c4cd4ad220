//! The devcontainer kit brought up for real with ONE command: `docker-compose up -d` of the
//! compose file `portcullis init devcontainer` writes, unchanged. The test supplies only what a
//! user supplies: the `.env` values, the policy (the kit's own, with the test's DNS server as
//! `[egress] upstream_resolvers`, the test's client token, and `[workspace]` rules naming a fake
//! external host and the gateway's address on the test's subnet), signed with a key of its own,
//! the gateway's certificate, and the images (built offline from the binary under test; no
//! registry is reachable, so the kit's `build:` is never used).
//!
//! Checked: the three services come up healthy in order (gateway, egress agent, workspace);
//! from inside the workspace an allowed fake external host works, an unlisted one is refused
//! and audited with `server = "workspace"`, the metadata address is blocked, the gateway's MCP
//! endpoint answers by its kit name, and `claude mcp list` (telemetry off) shows only the
//! gateway, Connected. Then what a user sees when the egress agent restarts: the workspace is
//! left in the old namespace (nothing reachable, marked unhealthy), and
//! `docker-compose restart workspace` puts it in the agent's new one.
//!
//! Privileged (root, dockerd, docker-compose, `ip`, `nft`): run under the privileged-test
//! lock. The outside world is `common::hostlab`: the kit subnet is carved from the lab's pool,
//! whose traffic is routed only into the test's namespace with the test's DNS server; nothing
//! real is reached. Everything compose made is removed on drop, also when a check fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::hostlab::HostLab;
use common::kit::{
    build_images, docker, make_cert, must, only_the_gateway_connected, text, AGENT_IMAGE,
    CLAUDE_QUIET_ENV, PROBE, WORKSPACE_IMAGE,
};
use common::{audit_records, gateway_bin, token_hash, Cases};

const TOKEN: &str = "pcs_devcontainer-compose-test-token";
const SERVICES: [&str; 3] = ["portcullis", "egress-agent", "workspace"];

/// The compose project of one run: the checkout (`dir`, with the kit in `.devcontainer/`);
/// `down -v` on drop, after printing the services' logs if a check failed.
struct Project {
    dir: tempfile::TempDir,
    name: String,
}

impl Project {
    fn kit(&self) -> PathBuf {
        self.dir.path().join(".devcontainer")
    }

    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-f")
            .arg(self.kit().join("compose.yaml"))
            .args(["--project-name", &self.name]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.compose().args(args).output().expect("docker-compose")
    }

    fn id(&self, service: &str) -> String {
        let o = self.run(&["ps", "-q", service]);
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// `docker inspect -f FORMAT` of a service's container.
    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.id(service);
        if id.is_empty() {
            return format!("no container of {service}");
        }
        text(&docker(&["inspect", "-f", format, &id]))
            .trim()
            .to_owned()
    }

    fn health(&self, service: &str) -> String {
        self.inspect(
            service,
            "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
        )
    }

    /// Waits until `service`'s health is `want`; the last status seen.
    fn await_health(&self, service: &str, want: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let h = self.health(service);
            if h == want || Instant::now() >= deadline {
                return h;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn probe(&self, args: &[&str]) -> String {
        let mut a = vec!["exec", "-T", "workspace", "node", "-e", PROBE];
        a.extend_from_slice(args);
        text(&self.run(&a)).trim().to_owned()
    }

    /// The network namespace of `service`'s process, as the host sees it.
    fn netns(&self, service: &str) -> String {
        let pid = self.inspect(service, "{{.State.Pid}}");
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("pid {pid}: {e}"))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- compose logs ---\n{}",
                text(&self.run(&["logs", "--no-color", "--tail", "80"]))
            );
        }
        let down = self.run(&["down", "-v", "--timeout", "2"]);
        if !down.status.success() {
            eprintln!("docker-compose down: {}", text(&down));
        }
    }
}

fn ready() -> bool {
    if !common::netlab::privileged() {
        return false;
    }
    if common::docker::engine().is_none() {
        return false;
    }
    if !common::compose::docker_compose_present() {
        common::skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
        return false;
    }
    common::peer("node/node_modules/@anthropic-ai/claude-code/bin/claude.exe").is_some()
}

/// The kit's own policy with what the test supplies: its resolver, its token, its rules.
fn test_policy(kit_policy: &str, resolver: &str, gateway: &str) -> String {
    let mut p = kit_policy.to_owned();
    for (from, to) in [
        (
            "upstream_resolvers = [\"192.0.2.53:53\"]".to_owned(),
            format!("upstream_resolvers = [\"{resolver}\"]"),
        ),
        ("0".repeat(64), token_hash(TOKEN)),
        (
            "allow = [\"172.30.211.2:8811\", \"api.anthropic.com:443\", \"registry.npmjs.org:443\", \"github.com:443\"]".to_owned(),
            format!("allow = [\"{gateway}:8811\", \"api.example.test:443\"]"),
        ),
    ] {
        assert!(p.contains(&from), "the kit's policy has no `{from}`");
        p = p.replacen(&from, &to, 1);
    }
    // The kit's example server needs an image this test does not build; the workspace is the
    // subject here.
    let servers = p.find("[servers.").expect("the kit's example server");
    p.truncate(servers);
    p
}

fn sign(policy_dir: &Path, keys: &Path) -> String {
    let key = keys.join("policy.key");
    let run = |args: &[&str]| {
        let o = Command::new(gateway_bin()).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    run(&["policy", "keygen", "--out", key.to_str().unwrap()]);
    let policy = policy_dir.join("policy.toml");
    run(&[
        "policy",
        "sign",
        "--key",
        key.to_str().unwrap(),
        policy.to_str().unwrap(),
    ]);
    std::fs::read_to_string(keys.join("policy.key.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn await_denial(audit: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if audit_records(audit)
            .iter()
            .any(|r| r["kind"] == "egress_denied" && r["server"] == "workspace")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_compose_up_brings_the_kit_up_confined_and_bound_to_the_gateway() {
    if !ready() {
        return;
    }
    let started = Instant::now();
    build_images();
    let lab = HostLab::new();
    let _zone = lab.serve();
    let k = lab.k;
    let tag = common::netlab::tag().replace('x', "");
    // The kit subnet inside the lab's pool (clear of workspace_egress.rs's .240/29): all its
    // traffic that leaves the bridge goes to the lab only.
    let subnet = format!("10.214.{k}.232/29");
    let gateway = format!("10.214.{k}.234");

    let project = Project {
        dir: tempfile::tempdir().unwrap(),
        name: format!("pckitup{tag}"),
    };
    let out = Command::new(gateway_bin())
        .args(["init", "devcontainer"])
        .arg(project.kit())
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {}", text(&out));
    let kit = project.kit();
    let policy_dir = kit.join("policy");
    let kit_policy = std::fs::read_to_string(policy_dir.join("policy.toml")).unwrap();
    std::fs::write(
        policy_dir.join("policy.toml"),
        test_policy(&kit_policy, &lab.sa(53, 53), &gateway),
    )
    .unwrap();
    let keys = project.dir.path().join("keys");
    let tls = kit.join("tls");
    for d in [&keys, &tls] {
        std::fs::create_dir_all(d).unwrap();
    }
    let pubkey = sign(&policy_dir, &keys);
    make_cert(&tls, "DNS:portcullis");
    // Only values: the file names and settings are the kit's defaults.
    std::fs::write(
        kit.join(".env"),
        format!(
            "PORTCULLIS_POLICY_PUBKEY={pubkey}\nPORTCULLIS_TOKEN={TOKEN}\n\
             PORTCULLIS_KIT_SUBNET={subnet}\nPORTCULLIS_KIT_GATEWAY_IP={gateway}\n\
             PORTCULLIS_IMAGE={AGENT_IMAGE}\nPORTCULLIS_WORKSPACE_IMAGE={WORKSPACE_IMAGE}\n\
             PORTCULLIS_DOCKER_SCOPE=kitup{tag}\n"
        ),
    )
    .unwrap();
    // A run of this test that died with the same project name.
    let _ = project.run(&["down", "-v", "--timeout", "1"]);

    let mut r = Cases(Vec::new());
    // THE one command.
    let t = Instant::now();
    let up = project.run(&["up", "-d", "--no-build"]);
    let up_took = t.elapsed();
    assert!(up.status.success(), "docker-compose up -d: {}", text(&up));
    let healths: Vec<String> = SERVICES
        .iter()
        .map(|s| {
            format!(
                "{s}={}",
                project.await_health(s, "healthy", Duration::from_secs(60))
            )
        })
        .collect();
    let started_at: Vec<String> = SERVICES
        .iter()
        .map(|s| project.inspect(s, "{{.State.StartedAt}}"))
        .collect();
    r.check(
        "`docker-compose up -d` brings all three services up healthy",
        healths.iter().all(|h| h.ends_with("=healthy")),
        &format!("{healths:?} (up took {up_took:?})"),
    );
    // RFC 3339 with the same zone and precision: text order is time order.
    r.check(
        "in order: gateway, then egress agent, then workspace",
        started_at[0] < started_at[1] && started_at[1] < started_at[2],
        &format!("{started_at:?}"),
    );
    let audit = PathBuf::from(must(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        &format!("{}_audit", project.name),
    ]));

    let out = project.probe(&["resolve_connect", "api.example.test", "443"]);
    r.check(
        "an allowed fake external host resolves through the agent and connects",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = project.probe(&["resolve_connect", "unlisted.test", "443"]);
    r.check(
        "an unlisted name is refused",
        out.starts_with("failed"),
        &out,
    );
    let out = project.probe(&["tcp", &lab.ip(30).to_string(), "443"]);
    r.check(
        "an unlisted address is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = project.probe(&["tcp", "169.254.169.254", "80"]);
    r.check(
        "the metadata address is blocked",
        out.starts_with("failed"),
        &out,
    );
    let out = project.probe(&["mcp", "https://portcullis:8811/mcp", TOKEN]);
    r.check(
        "the gateway's MCP endpoint answers at its kit name (TLS, client token)",
        out.starts_with("status 200") && out.contains("protocolVersion"),
        &out,
    );
    let mut args = vec!["exec", "-T"];
    for e in &CLAUDE_QUIET_ENV {
        args.extend(["-e", e]);
    }
    args.extend(["workspace", "claude", "mcp", "list"]);
    let listed = text(&project.run(&args));
    r.check(
        "`claude mcp list` in the workspace shows only the gateway, Connected",
        only_the_gateway_connected(&listed),
        &listed,
    );
    r.check(
        "the refusals are audited with server = \"workspace\"",
        await_denial(&audit, Duration::from_secs(20)).await,
        &audit.display().to_string(),
    );

    // What a user sees when the egress agent restarts (a crash, `docker restart`): it comes
    // back in a NEW namespace; the running workspace stays in the old one.
    let before = project.netns("egress-agent");
    let o = project.run(&["restart", "-t", "1", "egress-agent"]);
    r.check("the egress agent restarts", o.status.success(), &text(&o));
    let agent = project.await_health("egress-agent", "healthy", Duration::from_secs(30));
    let after = project.netns("egress-agent");
    r.check(
        "the restarted agent is healthy again, in a new namespace",
        agent == "healthy" && before != after,
        &format!("{agent}: {before} -> {after}"),
    );
    let ws = project.netns("workspace");
    r.check(
        "the running workspace is still in the old namespace",
        ws == before,
        &format!("workspace {ws}, agent {after}"),
    );
    let out = project.probe(&["resolve_connect", "api.example.test", "443"]);
    r.check(
        "from the old namespace nothing is reachable, not even an allowed host (closed)",
        out.starts_with("failed"),
        &out,
    );
    let h = project.await_health("workspace", "unhealthy", Duration::from_secs(30));
    r.check("the workspace is marked unhealthy", h == "unhealthy", &h);
    let o = project.run(&["restart", "-t", "1", "workspace"]);
    r.check(
        "`docker-compose restart workspace`",
        o.status.success(),
        &text(&o),
    );
    let h = project.await_health("workspace", "healthy", Duration::from_secs(30));
    let ws = project.netns("workspace");
    r.check(
        "the restarted workspace is healthy, in the agent's new namespace",
        h == "healthy" && ws == project.netns("egress-agent"),
        &format!("{h}: workspace {ws}, agent {after}"),
    );
    let out = project.probe(&["resolve_connect", "api.example.test", "443"]);
    r.check(
        "the allowed host works again",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = project.probe(&["resolve_connect", "unlisted.test", "443"]);
    r.check(
        "and an unlisted one is still refused",
        out.starts_with("failed"),
        &out,
    );
    eprintln!("took {:?}", started.elapsed());
    r.finish();
}
