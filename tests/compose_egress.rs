//! compose.yaml unchanged, with a docker server that has egress rules: the gateway runs in its
//! own network namespace (no host networking), so `[egress] mode = "auto"` picks sidecar mode
//! and each firewalled server gets an egress agent from the gateway's own image. Two servers:
//! the fixture (probes) and the reference fetch server as policy/compose.toml ships it, with
//! the fake world's web site in place of the real one.
//!
//! The outside world is the test's (`common::hostlab`: a DNS server and fake external hosts in a
//! namespace of the test's own; the sandbox pool is routed there only). A neighbouring stack
//! runs a "database" on a network of its own with its port published on the host, the usual
//! side door from one container to another stack: the test shows the port answers at the
//! host's address (control), then that the server cannot reach it, nor the database's own
//! address. Privileged (root, engine, docker-compose, `ip`, `nft`); under `CI=true` a missing
//! part fails the test.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::compose::*;
use common::docker::{FIXTURE_IMAGE, TIME_IMAGE};
use common::hostlab::{await_record, await_tools, blocked, probe, setup, tcp, HostLab, Setup};
use common::netlab::http_service;
use common::skip_or_fail;
use common::Cases;
use serde_json::json;

/// A neighbouring stack's database: a TCP service that greets with `ok`, on a network of its
/// own, its port published on every host address. Removed on drop.
struct Database {
    name: String,
    network: String,
    /// The port published on the host.
    port: u16,
    /// Its address on its own network.
    ip: String,
}

const LISTENER: &str = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 5432))\ns.listen(16)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'ok')\n    c.close()\n";

impl Database {
    fn start(tag: &str) -> Database {
        let name = format!("pcdb{tag}");
        let network = format!("pcdb{tag}_default");
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let _ = Command::new("docker")
            .args(["network", "rm", &network])
            .output();
        run(Command::new("docker").args(["network", "create", &network]));
        // From here on, whatever was made is removed on drop, also when a step panics.
        let mut db = Database {
            name: name.clone(),
            network: network.clone(),
            port: 0,
            ip: String::new(),
        };
        run(Command::new("docker")
            .args(["run", "--detach", "--name", &name, "--network", &network])
            .args(["--publish", "0.0.0.0::5432"])
            .args(["--entrypoint", "/opt/py/bin/python3", TIME_IMAGE, "-c"])
            .arg(LISTENER));
        let published = stdout(&run(
            Command::new("docker").args(["port", &name, "5432/tcp"])
        ));
        db.port = published
            .lines()
            .find_map(|l| l.strip_prefix("0.0.0.0:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port published for the database: {published}"));
        db.ip = stdout(&run(Command::new("docker").args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ])));
        db
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// A banner read straight from the test (the host), with retries while the service starts.
fn greets(addr: &str) -> Result<String, String> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tried = (|| {
            let sa = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        })();
        match tried {
            Ok(b) => return Ok(b),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// `fetch__fetch` of `url`: the text it returned, or the error (the first call may wait for
/// the server's agent and container to start).
async fn fetch(c: &mut Mcp, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c
            .call_tool("fetch__fetch", json!({"url": url, "max_length": 2000}))
            .await;
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| r.to_string());
        // Unknown tool or no server yet: the catalog is still filling.
        let starting = r["result"].is_null() && Instant::now() < deadline;
        if !starting {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The policy baked into the gateway's image: the lab's resolver and pool, one docker server
/// allowed one fake external host. No `mode`, no `agent_image`: the defaults must do.
fn policy(lab: &HostLab, fetch_image: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:8811"
naming = "prefix"

[egress]
upstream_resolvers = ["{dns}"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"
network_pool = "{pool}"

[servers.web]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
egress.allow = ["api.example.test:443"]
limits = {{ memory = "64m", pids = 32 }}

# As policy/compose.toml ships it, with the fake world's site instead of a real one. The fake
# world's addresses (198.18.0.0/15, for benchmarks) are not public, which the server refuses
# by itself unless told otherwise; the agent still allows only the one site.
[servers.fetch]
runtime = "docker"
image = "{fetch_image}"
command = ["--allow-private-ips"]
egress.allow = ["api.example.test:8080"]
limits = {{ memory = "256m", cpus = 0.5, pids = 64 }}

[audit]
dir = "/var/lib/portcullis/audit"
"#,
        dns = lab.sa(53, 53),
        pool = lab.pool,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_yaml_unchanged_holds_a_docker_server_to_its_egress_rules() {
    let Some(Setup {
        _turn,
        scope,
        rt: _,
        lab,
        zone: _,
        _audit_dir,
        audit: _,
        tag,
    }) = setup("composeegress").await
    else {
        return;
    };
    if !docker_compose_present() {
        return skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
    }
    let began = Instant::now();
    build_gateway_image();
    let db = Database::start(&tag);

    // The site the fetch server may read: a web server of the fake outside world.
    http_service(
        &lab.ext,
        "0.0.0.0:8080".parse().expect("address"),
        "hello from the fake outside",
    );

    let port = free_loopback_port();
    let mut project = Project::new(false);
    // The fetch image as `make images` builds it, from the test peers' venv.
    let fetch_image = format!("portcullis/mcp-fetch:{}", project.name);
    run(Command::new("bash")
        .arg(common::repo_root().join("tests/docker/fetch-image.sh"))
        .args([TIME_IMAGE, fetch_image.as_str()]));
    project.images.push(fetch_image.clone());
    let baked = format!("portcullis/gateway:{}", project.name);
    let policy_file = project.dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(&lab, &fetch_image)).expect("write policy");
    std::fs::write(
        project.dir.path().join(".env"),
        format!(
            "PORTCULLIS_PORT={port}\nPORTCULLIS_IMAGE={baked}\nPORTCULLIS_DOCKER_SCOPE={}\nPORTCULLIS_LOG=info\n",
            scope.name
        ),
    )
    .expect("write .env");
    bake_policy_image(&policy_file, &baked);
    project.images.push(baked);
    run(project.compose().args(["up", "--detach", "--no-build"]));
    let container = project.container();
    wait_healthy(&project, &container);

    let mut r = Cases(Vec::new());
    let logs = project.logs();
    r.check(
        "the gateway in compose picks sidecar mode by itself",
        logs.contains(r#"mode="sidecar""#),
        logs.lines()
            .find(|l| l.contains("egress mode"))
            .unwrap_or("no `egress mode` line in the gateway's log"),
    );

    let mut c = Mcp::new(&format!("http://127.0.0.1:{port}/mcp"));
    c.initialize(LATEST).await;
    await_tools(&mut c, &["web"]).await;

    let out = probe(
        &mut c,
        "web",
        json!({"op": "resolve_connect", "name": "api.example.test", "port": 443, "timeout_ms": 2000}),
    )
    .await;
    r.check(
        "the allowed fake external host works",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = probe(&mut c, "web", tcp(&lab.sa(30, 443))).await;
    r.check("an unlisted address is blocked", blocked(&out), &out);
    let out = probe(
        &mut c,
        "web",
        json!({"op": "resolve_connect", "name": "unlisted.test", "port": 443, "timeout_ms": 1500}),
    )
    .await;
    r.check(
        "an unlisted name is refused",
        !out.starts_with("connected"),
        &out,
    );

    // The reference fetch server, as policy/compose.toml ships it: it reads its one site through
    // its agent, and nothing else.
    let fetched = fetch(&mut c, "http://api.example.test:8080/page").await;
    r.check(
        "the fetch server reads its allowed site",
        fetched.contains("hello from the fake outside"),
        &fetched,
    );
    let fetched = fetch(&mut c, "http://unlisted.test:8080/page").await;
    r.check(
        "the fetch server cannot read an unlisted site",
        !fetched.contains("hello from the fake outside"),
        &fetched,
    );

    // The neighbouring stack's database: its published port answers at the host's address...
    let side_door = format!("{}:{}", lab.ip(1), db.port);
    let control = greets(&side_door);
    r.check(
        "control: the database's published port answers at the host's address",
        control.as_deref() == Ok("ok"),
        &format!("{side_door}: {control:?}"),
    );
    // ... but not to the server, neither there nor at the database's own address.
    let out = probe(&mut c, "web", tcp(&side_door)).await;
    r.check(
        "the server cannot reach the database's published port on the host",
        blocked(&out),
        &out,
    );
    let out = probe(&mut c, "web", tcp(&format!("{}:5432", db.ip))).await;
    r.check(
        "the server cannot reach the database on its own network",
        blocked(&out),
        &out,
    );

    // The denials are in the audit log on the compose volume.
    let volume = format!("{}_audit", project.name);
    let mountpoint = stdout(&run(Command::new("docker").args([
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        &volume,
    ])));
    await_record(
        std::path::Path::new(&mountpoint),
        Duration::from_secs(30),
        "an egress denial of web",
        |rec| rec["kind"] == "egress_denied" && rec["server"] == "web",
    )
    .await;
    r.check(
        "the denials are audited",
        true,
        "egress_denied record for web",
    );

    project.down();
    let leftovers = project.leftovers();
    r.check(
        "`docker-compose down` leaves nothing of the project",
        leftovers.is_empty(),
        &format!("{leftovers:?}"),
    );
    eprintln!("compose egress test: {:.1}s", began.elapsed().as_secs_f64());
    r.finish();
}
