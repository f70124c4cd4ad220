//! The Kubernetes egress sidecar (`deploy/kubernetes/egress-sidecar.yaml`) with Docker standing
//! in for the pod: a standalone `portcullis egress-agent --rules FILE` container (the gateway
//! image built from the binary under test, the manifest's uid, capabilities and read-only root,
//! the rules file mounted read-only as a ConfigMap is, with its `..data` symlink), and the server
//! container joined to its network namespace (`network_mode: container:<agent>`, another uid,
//! no capabilities, `nameserver 127.0.0.1` as `dnsPolicy: None` gives it), serving MCP over
//! streamable HTTP (the Python SDK, tests/python/servers/netprobe_server.py). A real gateway on
//! the host uses it as a remote server.
//!
//! Privileged (root, dockerd, `ip`, `nft`); the fake outside world is `common::hostlab`: the
//! pod's network is carved from the lab's pool, which is routed into the test's external
//! namespace only, so nothing real is reached.
//!
//! Negative controls: `EGRESS_STANDALONE_UNCONFINED=1` runs the server container on its own
//! network namespace (no agent table): the confinement checks must then fail.
//! `EGRESS_STANDALONE_NO_ACCEPT=1` starts the agent without `--accept-tcp`: the gateway's calls
//! must then fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::hostlab::{build_agent_image, setup, Setup, AGENT_IMAGE};
use common::sidecar::AGENT_PRIVILEGES;
use common::{peer, Cases, Gateway};
use serde_json::json;

const PY_IMAGE: &str = "portcullis/netprobe-py:test";
const PORT: u16 = 8000;
/// A port the server also listens on that the agent must not open.
const CLOSED_PORT: u16 = 8001;

fn docker(args: &[&str]) -> (bool, String) {
    let o = Command::new("docker").args(args).output().expect("docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text.trim().to_owned())
}

/// Just the stdout of a container (what `kubectl logs` ships), one JSON value per line.
fn stdout_of(id: &str) -> Vec<serde_json::Value> {
    let o = Command::new("docker")
        .args(["logs", id])
        .output()
        .expect("docker logs");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"not_json": l})))
        .collect()
}

async fn await_line(id: &str, limit: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if stdout_of(id).iter().any(&pred) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// An image with nothing but the merged-/usr symlinks: the host's /usr (Python) and the test
/// peers' venv are mounted read-only when it runs.
fn build_py_image() {
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("root");
    for d in ["etc", "tmp", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/sbin/nologin\nnobody:x:65534:65534::/:/sbin/nologin\n",
    )
    .unwrap();
    let tar = Command::new("tar")
        .args(["-C", root.to_str().unwrap(), "-c", "."])
        .output()
        .expect("tar");
    let mut child = Command::new("docker")
        .args(["import", "-", PY_IMAGE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker import");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(child.wait().unwrap().success(), "docker import failed");
}

/// The ConfigMap volume's layout: `rules.toml -> ..data/rules.toml`, `..data -> ..VERSION`.
struct ConfigMap {
    dir: PathBuf,
    version: usize,
}

impl ConfigMap {
    fn new(dir: &Path, text: &str) -> ConfigMap {
        let mut c = ConfigMap {
            dir: dir.to_path_buf(),
            version: 0,
        };
        std::os::unix::fs::symlink("..data/rules.toml", dir.join("rules.toml")).unwrap();
        c.swap(text);
        c
    }

    /// What the kubelet does on an update: a new version directory, then one atomic rename of
    /// a fresh `..data` symlink over the old one.
    fn swap(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("rules.toml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn rules(dns: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[egress]\nupstream_resolvers = [\"{dns}\"]\npin_ttl_min = \"1s\"\npin_ttl_max = \"5s\"\n\n[servers.fetch]\nruntime = \"process\"\ncommand = \"true\"\negress.allow = [{}]\n",
        allow.join(", ")
    )
}

/// Removes what the test made in Docker, whatever happens.
struct Made(Vec<String>, String);

impl Drop for Made {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.1]);
    }
}

/// The agent as the manifest runs it: root only to be granted its capabilities (it drops to its
/// own uid at once, keeping NET_ADMIN and NET_BIND_SERVICE; SETUID/SETGID serve only that
/// switch), read-only root, the rules read-only.
fn agent_args<'a>(name: &'a str, net: &'a str, mount: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "-d", "--name", name, "--network", net];
    a.extend_from_slice(&AGENT_PRIVILEGES);
    a.extend_from_slice(&[
        "--read-only",
        "--security-opt",
        "no-new-privileges",
        "-v",
        mount,
        "-e",
        "PORTCULLIS_AGENT_RULES=/etc/portcullis-agent/rules.toml",
    ]);
    a.extend_from_slice(extra);
    a.extend_from_slice(&[AGENT_IMAGE, "egress-agent"]);
    a
}

async fn call(c: &mut Mcp, tool: &str, args: serde_json::Value) -> String {
    let v = c.call_tool(&format!("fetch__{tool}"), args).await;
    v["result"]["content"][0]["text"]
        .as_str()
        .map_or_else(|| format!("call failed: {v}"), str::to_owned)
}

/// `--check` in a fresh container of the agent's image and privileges on `network` (a Docker
/// network, or `container:NAME` to share another's namespace), with the rules at `mount`.
fn check_from(network: &str, mount: &str) -> (bool, String) {
    let mut a = vec!["run", "--rm", "--network", network];
    a.extend_from_slice(&AGENT_PRIVILEGES);
    a.extend_from_slice(&[
        "-v",
        mount,
        AGENT_IMAGE,
        "egress-agent",
        "--rules",
        "/etc/portcullis-agent/rules.toml",
        "--check",
    ]);
    docker(&a)
}

/// `--check` run the way the startupProbe runs it: in the agent's container, with its env.
fn probe_passes(agent: &str) -> (bool, String) {
    docker(&[
        "exec",
        agent,
        "/usr/local/bin/portcullis",
        "egress-agent",
        "--check",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_agent_holds_a_pod_to_its_rules_file() {
    let Some(Setup {
        _turn,
        scope,
        rt: _,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("standalone").await
    else {
        return;
    };
    let Some(venv) = peer("venv") else { return };
    let venv = std::fs::canonicalize(venv).unwrap();
    let unconfined = std::env::var_os("EGRESS_STANDALONE_UNCONFINED").is_some();
    build_agent_image();
    build_py_image();
    let k = lab.k;
    let net = format!("pcst{tag}");
    let (agent, server, spare) = (
        format!("{net}-agent"),
        format!("{net}-server"),
        format!("{net}-spare"),
    );
    let _made = Made(
        vec![agent.clone(), server.clone(), spare.clone()],
        net.clone(),
    );
    let (ok, out) = docker(&[
        "network",
        "create",
        "--subnet",
        &format!("10.214.{k}.128/28"),
        "--label",
        &format!("io.portcullis.scope={}", scope.name),
        &net,
    ]);
    assert!(ok, "network: {out}");
    let dns = lab.sa(53, 53);
    let tmp = tempfile::tempdir().unwrap();
    let cm_dir = tmp.path().join("rules");
    std::fs::create_dir(&cm_dir).unwrap();
    let mut cm = ConfigMap::new(&cm_dir, &rules(&dns, &["api.example.test:443"]));
    let mount = format!("{}:/etc/portcullis-agent:ro", cm_dir.display());
    let accept_env = format!("PORTCULLIS_AGENT_ACCEPT_TCP={PORT}");
    let accept: Vec<&str> = if std::env::var_os("EGRESS_STANDALONE_NO_ACCEPT").is_some() {
        Vec::new()
    } else {
        vec!["-e", &accept_env]
    };
    let mut r = Cases(Vec::new());

    // Not ready before any table: the probe, run in a namespace without one, says so.
    let (ok, out) = check_from(&net, &mount);
    r.check(
        "--check is false where no agent programmed a table",
        !ok && out.contains("does not exist"),
        &out,
    );

    let (ok, out) = docker(&agent_args(&agent, &net, &mount, &accept));
    assert!(ok, "agent: {out}");
    // The startupProbe: poll --check; the server starts only once it passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut probe = probe_passes(&agent);
    while !probe.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        probe = probe_passes(&agent);
    }
    let lines = stdout_of(&agent);
    r.check("the probe passes once the agent runs", probe.0, &probe.1);
    r.check(
        "`ready` is on stdout, after a verified table",
        lines
            .iter()
            .any(|l| l["ev"] == "ready" && l["table"] == "portcullis_standalone"),
        &format!("{lines:?}"),
    );
    let (_, ip) = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &agent,
    ]);

    let resolv = tmp.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let script = common::repo_root().join("tests/python/servers/netprobe_server.py");
    let netmode = if unconfined {
        net.clone()
    } else {
        format!("container:{agent}")
    };
    let (ok, out) = docker(&[
        "run",
        "-d",
        "--name",
        &server,
        "--network",
        &netmode,
        "--user",
        "65534:65534",
        "--cap-drop",
        "ALL",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--security-opt",
        "no-new-privileges",
        "-v",
        "/usr:/usr:ro",
        "-v",
        &format!("{}:{}:ro", venv.display(), venv.display()),
        "-v",
        &format!("{}:/srv/server.py:ro", script.display()),
        "-v",
        &format!("{}:/etc/resolv.conf:ro", resolv.display()),
        PY_IMAGE,
        &format!("{}/bin/python", venv.display()),
        "/srv/server.py",
        &PORT.to_string(),
        &CLOSED_PORT.to_string(),
    ]);
    assert!(ok, "server: {out}");
    let server_ip = if unconfined {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &server,
        ])
        .1
    } else {
        ip.clone()
    };

    let policy = format!(
        "[gateway]\nnaming = \"prefix\"\n\n[audit]\ndir = \"{}\"\n\n[servers.fetch]\nruntime = \"remote\"\nurl = \"http://{server_ip}:{PORT}/mcp\"\negress.allow = [\"{server_ip}/32:{PORT}\"]\n",
        audit.display()
    );
    let gw = Gateway::start_with(&policy, &[("PORTCULLIS_INSTANCE", &scope.name)]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = call(&mut c, "echo", json!({"text": "up"})).await;
    while out != "up" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        out = call(&mut c, "echo", json!({"text": "up"})).await;
    }
    r.check(
        "the gateway's calls come in on the accepted port",
        out == "up",
        &out,
    );
    let other = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{CLOSED_PORT}").parse().unwrap(),
        Duration::from_millis(1500),
    );
    r.check(
        "another port of the pod is refused",
        other.is_err(),
        &format!("{other:?}"),
    );

    let connect = |host: &str| json!({"host": host, "port": 443});
    let out = call(&mut c, "connect", connect("api.example.test")).await;
    r.check(
        "the allowed fake host is reached",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = call(&mut c, "connect", connect("unlisted.test")).await;
    r.check(
        "an unlisted name is not reached",
        out.starts_with("failed"),
        &out,
    );
    let out = call(&mut c, "connect", connect(&lab.ip(30).to_string())).await;
    r.check(
        "an unlisted address is not reached",
        out.starts_with("failed"),
        &out,
    );
    let out = call(
        &mut c,
        "dns",
        json!({"server": dns, "name": "unlisted.test"}),
    )
    .await;
    r.check(
        "the upstream resolver is out of reach directly",
        out.starts_with("failed"),
        &out,
    );
    let denied = await_line(&agent, Duration::from_secs(5), |l| {
        l["ev"] == "denied" && l["packets"].as_u64().unwrap_or(0) > 0
    })
    .await;
    r.check(
        "denials are JSON lines on the agent's stdout",
        denied,
        &format!("{:?}", stdout_of(&agent)),
    );

    // A ConfigMap update: target.other.test in, api.example.test out, applied in place.
    cm.swap(&rules(&dns, &["target.other.test:443"]));
    let applied = await_line(&agent, Duration::from_secs(10), |l| l["ev"] == "applied").await;
    r.check("a changed rules file is applied", applied, "");
    let out = call(&mut c, "connect", connect("target.other.test")).await;
    r.check(
        "after the update: the newly listed host is reached",
        out.starts_with("connected"),
        &out,
    );
    let out = call(&mut c, "connect", connect("api.example.test")).await;
    r.check(
        "after the update: the removed host is not",
        out.starts_with("failed"),
        &out,
    );
    cm.swap("[egress]\nupstream_resolvers = [\"nope\"]\n");
    let rejected = await_line(&agent, Duration::from_secs(10), |l| {
        l["ev"] == "rejected"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("rules.toml:2:"))
    })
    .await;
    r.check(
        "an invalid file is rejected with its line and column",
        rejected,
        &format!("{:?}", stdout_of(&agent)),
    );
    let out = call(&mut c, "connect", connect("target.other.test")).await;
    r.check(
        "after the invalid file: the rules in force stay",
        out.starts_with("connected"),
        &out,
    );
    let (_, running) = docker(&["inspect", "-f", "{{.State.Running}}", &agent]);
    r.check("the agent keeps running", running == "true", &running);

    // Owned table: even root on the host cannot change it.
    let (_, pid) = docker(&["inspect", "-f", "{{.State.Pid}}", &agent]);
    let tamper = Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-n",
            "nft",
            "add",
            "rule",
            "inet",
            "portcullis_standalone",
            "input",
            "accept",
        ])
        .output()
        .expect("nsenter");
    r.check(
        "the owned table refuses changes from root",
        !tamper.status.success(),
        &String::from_utf8_lossy(&tamper.stderr),
    );
    drop(gw);

    // Without the owner flag (an older kernel): a tampered table fails the probe until the
    // agent's watch restores it. The spare agent is paused so the tamper stays in place.
    // The current file is the invalid one; put a valid one back first.
    cm.swap(&rules(&dns, &["target.other.test:443"]));
    let (ok, out) = docker(&agent_args(
        &spare,
        &net,
        &mount,
        &["-e", "PORTCULLIS_EGRESS_TABLE_FLAGS=off"],
    ));
    assert!(ok, "spare agent: {out}");
    let ready = await_line(&spare, Duration::from_secs(30), |l| l["ev"] == "ready").await;
    r.check(
        "the spare agent is ready",
        ready,
        &format!("{:?}", stdout_of(&spare)),
    );
    let (ok, out) = probe_passes(&spare);
    r.check("the spare agent's probe passes", ok, &out);
    let (_, pid) = docker(&["inspect", "-f", "{{.State.Pid}}", &spare]);
    let _ = docker(&["pause", &spare]);
    let tamper = Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-n",
            "nft",
            "add",
            "rule",
            "inet",
            "portcullis_standalone",
            "input",
            "accept",
        ])
        .output()
        .expect("nsenter");
    let checker = format!("container:{spare}");
    let (ok, out) = check_from(&checker, &mount);
    r.check(
        "--check is false while the table is tampered with",
        tamper.status.success() && !ok && out.contains("differs"),
        &format!("tamper: {:?}; check: {out}", tamper.status),
    );
    let _ = docker(&["unpause", &spare]);
    let restored = await_line(&spare, Duration::from_secs(10), |l| l["ev"] == "tamper").await;
    r.check("the watch restores it and says so", restored, "");
    let (ok, out) = probe_passes(&spare);
    r.check("--check passes again after the restore", ok, &out);
    r.finish();
}
