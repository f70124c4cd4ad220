//! compose.fleet.yaml for real: HAProxy on a free port of 127.0.0.1, three replicas with TLS
//! between them and HAProxy, Redis for the shared quotas. The images are built offline as
//! deploy/fleet/ says (the gateway from the binary under test, haproxy and redis-server from
//! this host's binaries), the secrets by deploy/fleet/gen-secrets.sh, all in a project
//! directory of the test's own; the only addition is an override that mounts the fixture
//! server binary into the replicas (the shipped policy has no servers).
//!
//! Through HAProxy: initialize with the developer token works (HAProxy -> replica is TLS,
//! verified), 401 without; stateless calls round robin (each replica audits some); one quota
//! holds across replicas (Redis); a multi round-trip retry that lands on another replica is
//! answered by the owner over the TLS fleet hop. Everything the test made (containers,
//! networks, volumes, images) is removed, also on failure.
//!
//! Under `CI=true` a missing engine, docker-compose, haproxy or redis-server fails the test;
//! locally it is skipped loudly.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::compose::{docker_compose_present, free_loopback_port, run, stdout};
use common::fleet::tool;
use common::skip_or_fail;
use common::{audit_records, fixture_bin, gateway_bin, repo_root};
use serde_json::{json, Value};

/// The shared quota of the `quota` server, for the whole fleet.
const QUOTA: usize = 3;
const REPLICAS: [&str; 3] = ["gw1", "gw2", "gw3"];

/// One compose project in a directory of its own; torn down (and its images removed) on drop,
/// whether the test got to the end or not.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
    images: Vec<String>,
}

impl Fleet {
    fn new() -> Fleet {
        let mut rnd = [0u8; 4];
        getrandom::getrandom(&mut rnd).expect("random");
        Fleet {
            name: format!("pcfleet{}", hex::encode(rnd)),
            dir: tempfile::tempdir().expect("tempdir"),
            images: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(self.path("compose.fleet.yaml"))
            .arg("--file")
            .arg(self.path("compose.test.yaml"))
            .arg("--env-file")
            .arg(self.path("test.env"))
            .arg("--project-directory")
            .arg(self.dir.path())
            .args(["--ansi", "never"]);
        c
    }

    fn logs(&self) -> String {
        self.compose()
            .args(["logs", "--no-color"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// The audit records replica `service` wrote (copied out of its container: the image has
    /// no shell).
    fn audit_of(&self, service: &str) -> Vec<Value> {
        let id = stdout(&run(self.compose().args(["ps", "-q", service])));
        let to = self.path(&format!("audit-{service}"));
        let _ = std::fs::remove_dir_all(&to);
        run(Command::new("docker")
            .arg("cp")
            .arg(format!("{id}:/var/lib/portcullis/audit"))
            .arg(&to));
        audit_records(&to)
    }

    /// Objects of this project still on the engine.
    fn leftovers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &filter]),
            ("network", vec!["network", "ls", "-q", "--filter", &filter]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &filter]),
        ] {
            let ids = stdout(&run(Command::new("docker").args(&args)));
            left.extend(ids.lines().map(|id| format!("{kind} {id}")));
        }
        for image in &self.images {
            let o = Command::new("docker")
                .args(["image", "inspect", image])
                .output();
            if o.is_ok_and(|o| o.status.success()) {
                left.push(format!("image {image}"));
            }
        }
        left
    }

    fn teardown(&self) {
        let _ = self
            .compose()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "10"])
            .output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- fleet logs ---\n{}", self.logs());
        }
        self.teardown();
    }
}

fn copy(from: &Path, to: &Path) {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// `KEY=VALUE` lines of an env file.
fn env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .expect("read .env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Makes the project: the shipped compose file and deploy/fleet/ copied in, the secrets
/// generated there, two servers (the fixture binary, mounted) added to the replicas' policy,
/// the images' tags and the port in `test.env`. Returns the developer token.
fn prepare(fleet: &Fleet, port: u16, tags: &[(&str, &str)]) -> String {
    let root = repo_root();
    copy(
        &root.join("compose.fleet.yaml"),
        &fleet.path("compose.fleet.yaml"),
    );
    for f in ["gen-secrets.sh", "policy.toml.in", "haproxy.cfg"] {
        copy(
            &root.join("deploy/fleet").join(f),
            &fleet.path(&format!("deploy/fleet/{f}")),
        );
    }
    run(Command::new("bash").arg(fleet.path("deploy/fleet/gen-secrets.sh")));
    let generated = fleet.path("deploy/fleet/generated");
    let policy = generated.join("policy.toml");
    let mut text = std::fs::read_to_string(&policy).expect("generated policy");
    text.push_str(&format!(
        r#"
[servers.fixture]
runtime = "process"
command = "/opt/fixture/server"

[servers.quota]
runtime = "process"
command = "/opt/fixture/server"
rate = {{ quota = "{QUOTA}/min", burst = {QUOTA} }}
"#
    ));
    std::fs::write(&policy, text).expect("write policy");
    let fixture = fixture_bin();
    let mount = format!("{}:/opt/fixture/server:ro", fixture.display());
    let mut over = String::from("services:\n");
    for r in REPLICAS {
        over.push_str(&format!("  {r}:\n    volumes:\n      - {mount}\n"));
    }
    std::fs::write(fleet.path("compose.test.yaml"), over).expect("write override");
    let secrets = env_file(&generated.join(".env"));
    let mut env = std::fs::read_to_string(generated.join(".env")).expect(".env");
    env.push_str(&format!("PORTCULLIS_PORT={port}\n"));
    for (k, v) in tags {
        env.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(fleet.path("test.env"), env).expect("write test.env");
    secrets
        .get("PORTCULLIS_DEV_TOKEN")
        .expect("developer token")
        .clone()
}

/// Builds the three images offline under this project's tags (recorded before building, so a
/// half-built set is removed too).
fn build_images(fleet: &mut Fleet, haproxy: &Path, redis: &Path) -> Vec<(&'static str, String)> {
    let tags = vec![
        (
            "PORTCULLIS_IMAGE",
            format!("portcullis/gateway:{}", fleet.name),
        ),
        (
            "PORTCULLIS_HAPROXY_IMAGE",
            format!("portcullis/haproxy:{}", fleet.name),
        ),
        (
            "PORTCULLIS_REDIS_IMAGE",
            format!("portcullis/redis:{}", fleet.name),
        ),
    ];
    fleet.images.extend(tags.iter().map(|(_, t)| t.clone()));
    let root = repo_root();
    run(Command::new("bash")
        .arg(root.join("tests/docker/build-gateway-image.sh"))
        .arg(&tags[0].1)
        .env("PORTCULLIS_GATEWAY_BIN", gateway_bin()));
    for (bin, tag) in [(haproxy, &tags[1].1), (redis, &tags[2].1)] {
        run(Command::new("bash")
            .arg(root.join("deploy/fleet/build-host-image.sh"))
            .arg(bin)
            .arg(tag)
            .arg("65532"));
    }
    tags
}

async fn raw_initialize(url: &str, token: Option<&str>) -> (u16, String, bool) {
    let mut c = Mcp::new(url);
    c.bearer = token.map(str::to_owned);
    let r = c
        .post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion": LATEST, "capabilities": {},
            "clientInfo": {"name": "compose-fleet", "version": "0"}}}),
        )
        .await;
    (r.status, r.body, r.headers.contains_key("mcp-session-id"))
}

/// Waits (bounded) until HAProxy routes an initialize to a ready replica.
async fn wait_served(url: &str, token: &str, fleet: &Fleet) {
    let start = Instant::now();
    loop {
        // HAProxy answers 503 until a replica passed its checks; a refused connection means
        // it is not listening yet.
        if let Some((200, _, _)) = try_initialize(url, token).await {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the fleet did not serve through HAProxy in 90 s:\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn try_initialize(url: &str, token: &str) -> Option<(u16, String, bool)> {
    let c = reqwest::Client::new();
    c.post(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(raw_initialize(url, Some(token)).await)
}

fn calls_in(records: &[Value], server: &str, tool: &str) -> usize {
    records
        .iter()
        .filter(|r| r["kind"] == "call" && r["server"] == server && r["tool"] == tool)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_fleet_serves_through_haproxy_over_tls_and_leaves_nothing_behind() {
    if common::docker::engine().is_none() {
        return;
    }
    if !docker_compose_present() {
        return skip_or_fail(
            "docker-compose is not installed: run `bash tests/setup/install-deps.sh system`",
        );
    }
    let (Some(haproxy), Some(redis)) = (tool("haproxy"), tool("redis-server")) else {
        return;
    };
    let began = Instant::now();
    let mut fleet = Fleet::new();
    let tags = build_images(&mut fleet, &haproxy, &redis);
    let port = free_loopback_port();
    let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let token = prepare(&fleet, port, &tags);
    run(fleet.compose().args(["up", "--detach", "--no-build"]));
    let url = format!("http://127.0.0.1:{port}/mcp");
    wait_served(&url, &token, &fleet).await;
    let up = began.elapsed();

    // The client's side: a token is required, HAProxy -> replica is TLS (verified by HAProxy
    // against the fleet CA; a replica listens on TLS only, so a 200 crossed it).
    let (status, body, sid) = raw_initialize(&url, Some(&token)).await;
    assert!(status == 200 && sid, "{status}: {body}");
    let (status, body, _) = raw_initialize(&url, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body, _) = raw_initialize(&url, Some("pc-dev-not-the-token")).await;
    assert_eq!(status, 401, "{body}");

    // Stateless calls round robin: six calls, and every replica audited some.
    let mut lb = Mcp::new(&url);
    lb.bearer = Some(token.clone());
    for id in 1..=6 {
        let r = common::modern::request(
            &lb,
            id,
            "tools/call",
            json!({"name": "fixture__echo", "arguments": {"text": "hi"}}),
            json!({}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(common::modern::text(&r.message()), "hi", "{}", r.body);
    }
    let audits: Vec<Vec<Value>> = REPLICAS.iter().map(|r| fleet.audit_of(r)).collect();
    let per_replica: Vec<usize> = audits
        .iter()
        .map(|a| calls_in(a, "fixture", "echo"))
        .collect();
    assert_eq!(per_replica.iter().sum::<usize>(), 6, "{per_replica:?}");
    assert!(
        per_replica.iter().all(|n| *n >= 1),
        "round robin reaches every replica: {per_replica:?}"
    );

    // One quota for the fleet, kept in Redis: QUOTA calls spread over three replicas are
    // admitted, the rest limited (not 3 x QUOTA, and not "unavailable": the store answers).
    let mut codes = Vec::new();
    for id in 10..(10 + 2 * QUOTA as u64) {
        let r = common::modern::request(
            &lb,
            id,
            "tools/call",
            json!({"name": "quota__echo", "arguments": {"text": "q"}}),
            json!({}),
        )
        .await;
        let m = r.message();
        if let Some(msg) = m["error"]["message"].as_str() {
            assert!(!msg.contains("unavailable"), "the store answers: {m}");
        }
        codes.push(m["error"]["code"].as_i64());
    }
    let admitted = codes.iter().filter(|c| c.is_none()).count();
    assert_eq!(admitted, QUOTA, "one quota across the replicas: {codes:?}");
    assert!(
        codes[QUOTA..].iter().all(|c| *c == Some(-32014)),
        "{codes:?}"
    );

    // A held call started through HAProxy and retried through HAProxy: round robin sends the
    // retry to another replica, which forwards it to the owner over the TLS hop.
    let caps = json!({"elicitation": {}});
    let elicit = json!({"name": "fixture__test_elicitation", "arguments": {"message": "who?"}});
    let first = common::modern::request(&lb, 30, "tools/call", elicit.clone(), caps.clone())
        .await
        .message();
    let retry = common::modern::answer_input(&first, &elicit, json!({"name": "Ada"}));
    let done = common::modern::request(&lb, 31, "tools/call", retry, caps.clone()).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let done = done.message();
    assert!(done["result"]["content"].is_array(), "{done}");
    assert!(common::modern::text(&done).contains("Ada"), "{done}");
    let logs = fleet.logs();
    assert!(
        logs.contains("request forwarded to the replica that holds its state"),
        "the retry crossed the hop:\n{logs}"
    );
    assert!(
        !logs.contains("forwarding to the owning replica failed"),
        "{logs}"
    );

    // Down: nothing of the project is left on the engine.
    fleet.teardown();
    let left = fleet.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!(
        "compose fleet: up and serving in {:.0?}, whole test {:.0?}",
        up,
        began.elapsed()
    );
}
