//! The docker runtime against a real dockerd: hardening as the engine reports it, stdio over
//! attach, limits that hold under abuse, restart, secrets, reconciliation, missing images.
//! dockerd and the test images are provided by tests/common/docker.rs.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptions,
    RemoveContainerOptionsBuilder,
};
use common::client::{median_call_ms, tool_text, Mcp, LATEST};
use common::docker::{containers_in, require_image, runtime, Scope, FIXTURE_IMAGE, TIME_IMAGE};
use common::Gateway;
use portcullis::sandbox::docker::DockerRuntime;
use portcullis::sandbox::{Purpose, Runtime, SandboxError, SpawnContext};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "pc-secret-7f3a9c1e5b";

fn gateway(scope: &Scope, policy: &str, env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str())];
    all.extend_from_slice(env);
    Gateway::start_with(policy, &all)
}

async fn only_container(rt: &DockerRuntime, scope: &str, server: &str) -> String {
    let found: Vec<String> = containers_in(rt, scope)
        .await
        .into_iter()
        .filter(|(_, l)| l.get("io.portcullis.server").map(String::as_str) == Some(server))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(found.len(), 1, "containers of {server}: {found:?}");
    found[0].clone()
}

fn server_policy(name: &str, image: &str) -> portcullis::policy::Server {
    let text = format!(
        "[servers.{name}]\nruntime = \"docker\"\nimage = \"{image}\"\nlimits = {{ memory = \"64m\", cpus = 0.5, pids = 32 }}\n"
    );
    portcullis::policy::parse(&text, "<test>")
        .expect("policy")
        .servers
        .remove(name)
        .expect("server")
}

#[tokio::test]
async fn hardened_container_serves_calls_and_keeps_secrets_out_of_sight() {
    let scope = Scope::new("harden");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let policy = format!(
        r#"
[gateway]
naming = "prefix"

[servers.box]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
env = {{ PLAIN = "visible" }}
secrets = {{ API_TOKEN = "env:PORTCULLIS_TEST_SECRET" }}
limits = {{ memory = "64m", cpus = 0.5, pids = 32 }}

[servers.mounted]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
mounts = [{{ source = "{{tmp}}", target = "/data" }}]
"#
    );
    let gw = gateway(&scope, &policy, &[("PORTCULLIS_TEST_SECRET", SECRET)]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c
        .call_tool("box__echo", json!({"text": "through docker"}))
        .await;
    assert_eq!(tool_text(&r), "through docker");
    // The secret is inside the container, where the server needs it (echoed back, it is
    // redacted by name: the server holds exactly that value).
    let r = c
        .call_tool("box__env_get", json!({"name": "API_TOKEN"}))
        .await;
    assert_eq!(tool_text(&r), "[REDACTED:API_TOKEN]");
    let r = c.call_tool("box__env_get", json!({"name": "PLAIN"})).await;
    assert_eq!(tool_text(&r), "visible");

    let id = only_container(&rt, &scope.name, "box").await;
    let info = rt
        .api()
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let h = info.host_config.clone().unwrap();
    let cfg = info.config.clone().unwrap();
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(h.cap_add.unwrap_or_default().is_empty());
    assert_eq!(h.privileged, Some(false));
    let sec = h.security_opt.unwrap_or_default();
    assert!(
        sec.iter().any(|s| s.starts_with("no-new-privileges")),
        "{sec:?}"
    );
    assert!(!sec.iter().any(|s| s.contains("unconfined")), "{sec:?}");
    assert_eq!(h.readonly_rootfs, Some(true));
    let tmpfs = h.tmpfs.unwrap_or_default();
    assert!(
        tmpfs
            .get("/tmp")
            .is_some_and(|o| o.contains("noexec") && o.contains("nosuid")),
        "{tmpfs:?}"
    );
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"));
    assert_eq!(h.memory, Some(64 * 1024 * 1024));
    assert_eq!(h.memory_swap, Some(64 * 1024 * 1024));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.pids_limit, Some(32));
    assert_eq!(h.init, Some(true));
    assert_eq!(h.network_mode.as_deref(), Some("none"));
    assert!(h.binds.unwrap_or_default().is_empty());
    assert!(h.mounts.unwrap_or_default().is_empty());
    assert_eq!(cfg.tty, Some(false));
    assert_eq!(cfg.open_stdin, Some(true));
    let labels = cfg.labels.clone().unwrap_or_default();
    assert_eq!(labels["io.portcullis.owner"], "portcullis");
    assert_eq!(labels["io.portcullis.server"], "box");
    assert_eq!(labels["io.portcullis.purpose"], "shared");
    assert_eq!(labels["io.portcullis.scope"], scope.name);
    assert!(labels.contains_key("io.portcullis.policy"));
    assert!(labels.contains_key("io.portcullis.session"));
    assert!(!labels["io.portcullis.gateway"].is_empty());
    assert!(info
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("/portcullis-box-")));
    // The process inside really runs as nobody with a read-only root (as the kernel sees it).
    let state = info.state.clone().unwrap();
    assert_eq!(state.running, Some(true));

    // The secret is nowhere but the env: not labels, not argv, not the gateway's log.
    let inspected = serde_json::to_string(&info).unwrap();
    let env = cfg.env.clone().unwrap_or_default();
    assert!(env.contains(&format!("API_TOKEN={SECRET}")));
    assert_eq!(inspected.matches(SECRET).count(), 1, "only in Config.Env");
    for l in labels.values() {
        assert!(!l.contains(SECRET));
    }
    let argv = format!("{:?} {:?} {:?}", info.path, info.args, cfg.cmd);
    assert!(!argv.contains(SECRET), "{argv}");

    // A configured mount is there, read-only by default.
    let mid = only_container(&rt, &scope.name, "mounted").await;
    let m = rt
        .api()
        .inspect_container(&mid, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let mounts = m.host_config.unwrap().mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].target.as_deref(), Some("/data"));
    assert_eq!(mounts[0].read_only, Some(true));

    drop(c);
    let log = gw.stderr();
    drop(gw);
    assert!(!log.contains(SECRET), "secret in the gateway's log");
}

#[tokio::test]
async fn fork_bomb_and_memory_hog_are_contained_while_others_keep_serving() {
    let scope = Scope::new("abuse");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let policy = format!(
        r#"
[gateway]
naming = "prefix"

[servers.sbx]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
limits = {{ memory = "64m", cpus = 0.5, pids = 32 }}

[servers.plain]
runtime = "process"
command = "{{fixture}}"
"#
    );
    let gw = gateway(&scope, &policy, &[]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;

    let r = c
        .call_tool("sbx__spawn_threads", json!({"count": 500}))
        .await;
    let text = tool_text(&r);
    let started: u64 = text
        .strip_prefix("started ")
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(started < 32, "pids limit did not hold: {text}");
    eprintln!("fork bomb: {text}");
    let r = c
        .call_tool("plain__echo", json!({"text": "still here"}))
        .await;
    assert_eq!(tool_text(&r), "still here");
    let first = only_container(&rt, &scope.name, "sbx").await;

    // 256 MiB in a 64 MiB container: the kernel kills it; the call in flight fails at once.
    let r = c.call_tool("sbx__alloc_mb", json!({"mb": 256})).await;
    assert!(
        r.get("error").is_some() || r["result"]["isError"] == true,
        "{r}"
    );
    let r = c
        .call_tool("plain__echo", json!({"text": "unaffected"}))
        .await;
    assert_eq!(tool_text(&r), "unaffected");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.stderr().contains("OOM-killed") {
        assert!(Instant::now() < deadline, "no OOM report:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The supervisor restarts it; the next call lands in a fresh container.
    let r = call_until_ok(&mut c, "sbx__echo", json!({"text": "back"})).await;
    assert_eq!(tool_text(&r), "back");
    let second = only_container(&rt, &scope.name, "sbx").await;
    assert_ne!(first, second);
}

async fn call_until_ok(c: &mut Mcp, tool: &str, args: serde_json::Value) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.call_tool(tool, args.clone()).await;
        if r.get("result").is_some() && r["result"]["isError"] != true {
            return r;
        }
        assert!(Instant::now() < deadline, "{tool} never recovered: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn killed_container_is_restarted_and_the_next_call_succeeds() {
    let scope = Scope::new("kill");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let policy = format!(
        "[servers.box]\nruntime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\"\nlimits = {{ memory = \"64m\", pids = 32 }}\n"
    );
    let gw = gateway(&scope, &policy, &[]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "a"})).await),
        "a"
    );
    let first = only_container(&rt, &scope.name, "box").await;
    rt.api()
        .kill_container(&first, None::<KillContainerOptions>)
        .await
        .unwrap();
    let r = call_until_ok(&mut c, "echo", json!({"text": "b"})).await;
    assert_eq!(tool_text(&r), "b");
    let second = only_container(&rt, &scope.name, "box").await;
    assert_ne!(first, second, "the killed container was replaced");
    assert!(
        gw.stderr().contains("killed by signal 9"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn runtime_spawns_over_attach_reports_exits_and_cleans_up() {
    let scope = Scope::new("lib");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let server = server_policy("lib", FIXTURE_IMAGE);
    let ctx = SpawnContext {
        secrets: vec![("TOKEN".into(), SECRET.into())],
        session: Some("sess-1".into()),
        policy_hash: "abc123".into(),
        purpose: Some(Purpose::Session),
        image_pin: None,
    };
    let mut times = Vec::new();
    for round in 0..3 {
        let t0 = Instant::now();
        let mut sp = rt.spawn(&server, &ctx).await.expect("spawn");
        let spawned = t0.elapsed();
        assert!(sp
            .info
            .image_digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:")));
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
        sp.stdin
            .write_all(format!("{init}\n").as_bytes())
            .await
            .unwrap();
        let mut out = BufReader::new(sp.stdout);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), out.read_line(&mut line))
            .await
            .expect("initialize answer")
            .unwrap();
        let answered = t0.elapsed();
        assert!(line.contains("protocolVersion"), "{line}");
        times.push((spawned, answered));

        let labels = &containers_in(&rt, &scope.name).await[&sp.info.id];
        assert_eq!(labels["io.portcullis.session"], "sess-1");
        assert_eq!(labels["io.portcullis.policy"], "abc123");
        assert_eq!(labels["io.portcullis.purpose"], "per-session");
        assert_eq!(labels["io.portcullis.gateway"], rt.gateway_id());

        if round == 0 {
            // A server that exits on its own is reported with its status.
            let crash = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"crash","arguments":{}}});
            sp.stdin
                .write_all(format!("{crash}\n").as_bytes())
                .await
                .unwrap();
            let reason = tokio::time::timeout(Duration::from_secs(10), sp.instance.wait())
                .await
                .expect("wait");
            assert_eq!(reason, "exited with status 3");
            sp.instance.kill().await;
        } else if round == 1 {
            sp.instance.kill().await;
            sp.instance.kill().await; // idempotent
            let reason = tokio::time::timeout(Duration::from_secs(10), sp.instance.wait())
                .await
                .expect("wait");
            assert_eq!(reason, "removed");
        } else {
            // Dropped without kill: removed in the background.
            drop(sp.instance);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !containers_in(&rt, &scope.name).await.is_empty() {
            assert!(Instant::now() < deadline, "container left behind");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, (spawned, answered)) in times.iter().enumerate() {
        eprintln!(
            "container start #{i}: create+attach+start {} ms, first initialize answer {} ms",
            spawned.as_millis(),
            answered.as_millis()
        );
    }
    assert_eq!(rt.shutdown().await, 0, "nothing left to remove");
}

#[tokio::test]
async fn shutdown_removes_everything_this_process_started() {
    let scope = Scope::new("shutdown");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let server = server_policy("sd", FIXTURE_IMAGE);
    let ctx = SpawnContext::default();
    let a = rt.spawn(&server, &ctx).await.expect("spawn");
    let b = rt.spawn(&server, &ctx).await.expect("spawn");
    assert_eq!(containers_in(&rt, &scope.name).await.len(), 2);
    assert_eq!(rt.shutdown().await, 2);
    assert!(containers_in(&rt, &scope.name).await.is_empty());
    drop((a, b));
}

#[tokio::test]
async fn reconcile_removes_only_labelled_orphans_of_its_scope() {
    let scope = Scope::new("reconcile");
    let other = Scope::new("reconcile-other");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let create = |name: String, labels: HashMap<String, String>| {
        let rt = rt.clone();
        async move {
            rt.api()
                .create_container(
                    Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                    ContainerCreateBody {
                        image: Some(FIXTURE_IMAGE.into()),
                        labels: Some(labels),
                        host_config: Some(bollard::models::HostConfig {
                            network_mode: Some("none".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
                .await
                .expect("create")
                .id
        }
    };
    let suffix = &scope.name[scope.name.len() - 8..];
    let owned = |s: &str| {
        HashMap::from([
            ("io.portcullis.owner".to_owned(), "portcullis".to_owned()),
            ("io.portcullis.scope".to_owned(), s.to_owned()),
        ])
    };
    let unlabelled = create(format!("pc-test-unlabelled-{suffix}"), HashMap::new()).await;
    // Claims the scope but not the owner label: not ours either.
    let mut half = HashMap::new();
    half.insert("io.portcullis.scope".to_owned(), scope.name.clone());
    let half_labelled = create(format!("pc-test-half-{suffix}"), half).await;
    let orphan = create(format!("pc-test-orphan-{suffix}"), owned(&scope.name)).await;
    let kept = create(format!("pc-test-kept-{suffix}"), {
        let mut l = owned(&scope.name);
        l.insert("io.portcullis.session".into(), "live".into());
        l
    })
    .await;
    let foreign = create(format!("pc-test-foreign-{suffix}"), owned(&other.name)).await;

    let done = rt
        .reconcile(|l| l.get("io.portcullis.session").map(String::as_str) == Some("live"))
        .await
        .expect("reconcile");
    assert_eq!(done.containers, vec![format!("pc-test-orphan-{suffix}")]);
    assert!(done.failed.is_empty(), "{:?}", done.failed);

    let exists = |id: String| {
        let rt = rt.clone();
        async move {
            rt.api()
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .is_ok()
        }
    };
    assert!(!exists(orphan).await);
    for id in [&unlabelled, &half_labelled, &kept, &foreign] {
        assert!(exists(id.clone()).await, "{id} was removed");
    }
    for id in [unlabelled, half_labelled, kept, foreign] {
        rt.api()
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
            .expect("cleanup");
    }
}

#[tokio::test]
async fn gateway_start_removes_leftovers_of_its_scope() {
    let scope = Scope::new("startup");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let server = server_policy("left", FIXTURE_IMAGE);
    // A container of a "previous gateway": spawned, then forgotten (as after a SIGKILL).
    let sp = rt
        .spawn(&server, &SpawnContext::default())
        .await
        .expect("spawn");
    let leftover = sp.info.id.clone();
    std::mem::forget(sp);
    let policy = format!("[servers.box]\nruntime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\"\n");
    let gw = gateway(&scope, &policy, &[]);
    let now = containers_in(&rt, &scope.name).await;
    assert!(!now.contains_key(&leftover), "leftover survived start-up");
    assert_eq!(now.len(), 1, "{now:?}");
    drop(gw);
}

#[tokio::test]
async fn missing_image_is_a_clear_error() {
    let scope = Scope::new("missing");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let image = "portcullis/surely-missing:nope";
    let server = server_policy("gone", image);
    let err = match rt.spawn(&server, &SpawnContext::default()).await {
        Err(e) => e,
        Ok(_) => panic!("spawned a missing image"),
    };
    assert!(matches!(err, SandboxError::ImageMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(image) && msg.contains("docker build") && msg.contains("gone"),
        "{msg}"
    );
    assert!(containers_in(&rt, &scope.name).await.is_empty());

    // `doctor` names it too, and fails.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!("[servers.gone]\nruntime = \"docker\"\nimage = \"{image}\"\n[servers.ok]\nruntime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["doctor", "--policy"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("[FAIL] image {image}")), "{text}");
    assert!(text.contains("fix:"), "{text}");
    assert!(
        text.contains(&format!("[ok]   image {FIXTURE_IMAGE}")),
        "{text}"
    );
    assert!(
        text.contains("docker: engine 20.") || text.contains("docker: engine"),
        "{text}"
    );
}

#[tokio::test]
async fn reference_python_server_runs_in_the_sandbox() {
    let scope = Scope::new("time");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let how = "install the peers (`make peers`), then run tests/docker/build-images.sh";
    if require_image(&rt, TIME_IMAGE, how).await.is_none() {
        return;
    }
    let policy = format!(
        "[servers.time]\nruntime = \"docker\"\nimage = \"{TIME_IMAGE}\"\ncommand = [\"--local-timezone\", \"UTC\"]\nlimits = {{ memory = \"128m\", pids = 64 }}\n"
    );
    let gw = gateway(&scope, &policy, &[]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c
        .call_tool("get_current_time", json!({"timezone": "UTC"}))
        .await;
    let text = tool_text(&r);
    assert!(text.contains("\"timezone\": \"UTC\""), "{text}");
    let id = only_container(&rt, &scope.name, "time").await;
    let info = rt
        .api()
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let h = info.host_config.unwrap();
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(info.config.unwrap().user.as_deref(), Some("65534:65534"));
}

#[test]
fn unreachable_engine_is_reported_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!("[servers.box]\nruntime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["doctor", "--policy"])
        .arg(&p)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("[FAIL] docker: the Docker engine is not reachable"),
        "{text}"
    );
    assert!(text.contains("fix: install the engine"), "{text}");
}

/// The stderr flood of `tests/server_output.rs`, from a container: its attach stream goes
/// through the same per-server budget, the gateway's memory stays flat and a neighbouring
/// container keeps answering.
#[tokio::test]
async fn a_container_flooding_stderr_is_held_to_its_log_budget() {
    let scope = Scope::new("stderr");
    let Some(_rt) = runtime(&scope.name).await else {
        return;
    };
    let policy = format!(
        r#"
[gateway]
naming = "prefix"

[servers.loud]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
log_rate = {{ quota = "10/s", burst = 20 }}

[servers.calm]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
"#
    );
    // The budget's bucket fills from the moment the server starts, which is after this.
    let started = std::time::Instant::now();
    let gw = gateway(&scope, &policy, &[]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let quiet = median_call_ms(&mut c, "calm__echo", 40).await;
    let rss_before = common::rss_kib(gw.child.id());
    let url = gw.url.clone();
    let flood = tokio::spawn(async move {
        let mut f = Mcp::new(&url);
        f.initialize(LATEST).await;
        f.call_tool("loud__stderr_flood", json!({"lines": 100000}))
            .await
    });
    let during = median_call_ms(&mut c, "calm__echo", 40).await;
    let r = flood.await.expect("flood task");
    assert_eq!(tool_text(&r), "wrote 100000 lines");
    let series = |m: &str, outcome: &str| -> u64 {
        let key = format!(
            "portcullis_server_stderr_lines_total{{server=\"loud\",outcome=\"{outcome}\"}}"
        );
        m.lines()
            .find_map(|l| l.strip_prefix(key.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (logged, suppressed) = loop {
        let (_, m) = common::http_get(&format!("{}/metrics", gw.base)).unwrap();
        let (l, s) = (series(&m, "logged"), series(&m, "suppressed"));
        if l + s >= 100_000 || std::time::Instant::now() > deadline {
            break (l, s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // The fixture also says hello on stderr when it starts.
    assert!(logged + suppressed >= 100_000, "{logged} + {suppressed}");
    let budget = 20.0 + 10.0 * started.elapsed().as_secs_f64();
    assert!(
        (logged as f64) <= budget,
        "{logged} logged, budget {budget}"
    );
    let in_log = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("server stderr") && l.contains("server=loud"))
        .count();
    assert_eq!(in_log as u64, logged);
    common::flood_was_harmless(gw.child.id(), rss_before, quiet, during);
}
