//! A fleet on loopback, all real processes started and stopped here: redis-server on a free
//! port (temp dir, no persistence), three gateway replicas sharing it as `[limits] store`, and
//! HAProxy in front with the session stickiness of deploy/haproxy.cfg.
//!
//! Under CI=true a missing haproxy or redis-server fails the test; locally it skips loudly.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::fleet::{free_port, haproxy, redis, tool};
use common::{audit_records, Gateway};
use serde_json::{json, Value};

/// Calls per minute the fleet admits in total (the quota's burst equals it).
const QUOTA: u32 = 6;

fn policy(redis_port: u16, on_error: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[limits]
store = "redis://127.0.0.1:{redis_port}/0"
on_store_error = "{on_error}"
replicas = 3
store_timeout = "200ms"

[audit]
dir = "{{tmp}}/audit"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
rate = {{ quota = "{QUOTA}/min", burst = {QUOTA} }}
"#
    )
}

fn replica(policy: &str, name: &str) -> Gateway {
    Gateway::start_with(policy, &[("PORTCULLIS_REPLICA", name)])
}

async fn session(url: &str) -> Mcp {
    let mut c = Mcp::new(url);
    c.initialize(LATEST).await;
    c
}

async fn call(c: &mut Mcp) -> Value {
    c.call_tool("test_simple_text", json!({})).await
}

fn code(v: &Value) -> Option<i64> {
    v["error"]["code"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_quotas_through_redis_behind_haproxy() {
    let (Some(redis_bin), Some(haproxy_bin)) = (tool("redis-server"), tool("haproxy")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut store = Some(redis(&redis_bin, redis_port, tmp.path()));
    let p = policy(redis_port, "deny");
    let mut gws: Vec<Gateway> = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .map(|n| replica(&p, n))
        .collect();
    let lb_port = free_port();
    let ports: Vec<u16> = gws.iter().map(Gateway::port).collect();
    let _lb = haproxy(&haproxy_bin, lb_port, &ports, tmp.path());
    let lb = format!("http://127.0.0.1:{lb_port}/mcp");

    // One quota of QUOTA calls a minute for the whole fleet: calls spread round robin over the
    // three replicas are admitted QUOTA times (the burst), not 3 x QUOTA.
    let mut direct = Vec::new();
    for gw in &gws {
        direct.push(session(&gw.url).await);
    }
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..(3 * QUOTA as usize) {
        let r = call(&mut direct[i % 3]).await;
        match code(&r) {
            None => admitted += 1,
            Some(-32014) => limited += 1,
            Some(c) => panic!("unexpected error {c}: {r}"),
        }
    }
    assert_eq!(
        admitted, QUOTA,
        "the fleet admits the quota once ({limited} limited)"
    );
    let r = call(&mut direct[1]).await;
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("shared by the fleet"), "{r}");

    // A legacy session through HAProxy stays on its replica for its whole life (a request that
    // reached another replica would get 404).
    let mut sticky = session(&lb).await;
    for _ in 0..6 {
        let r = sticky.request("tools/list", json!({})).await;
        assert!(r["result"]["tools"].is_array(), "{r}");
    }

    // Redis down, on_store_error = "deny": -32014 saying why, audited as rate_limited.
    store.take();
    let r = call(&mut direct[0]).await;
    assert_eq!(code(&r), Some(-32014), "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("rate limit unavailable") && msg.contains("on_store_error"),
        "{r}"
    );
    let ready = common::http_get(&format!("{}/ready", gws[0].base)).unwrap();
    assert_eq!(
        ready.0, 503,
        "a replica that must deny is not ready: {}",
        ready.1
    );
    assert!(ready.1.contains("quota_store"), "{}", ready.1);

    // Redis back (empty): shared limits resume, once for the fleet again.
    store = Some(redis(&redis_bin, redis_port, tmp.path()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first = call(&mut direct[0]).await;
    while code(&first) == Some(-32014)
        && first.to_string().contains("unavailable")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        first = call(&mut direct[0]).await;
    }
    assert_eq!(
        code(&first),
        None,
        "calls pass once the store is back: {first}"
    );
    let mut admitted = 1;
    for i in 0..(3 * QUOTA as usize) {
        if code(&call(&mut direct[i % 3]).await).is_none() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, QUOTA, "shared limits resumed");

    // The replica holding the HAProxy session dies: the session gets 404 through HAProxy
    // (another replica does not hold it), re-initializing recovers; the others are unaffected.
    // The holder has two sessions open (this test's direct one and the HAProxy one).
    let sessions = |g: &Gateway| -> u64 {
        let (_, body) = common::http_get(&format!("{}/health", g.base)).unwrap();
        serde_json::from_str::<Value>(&body).unwrap()["sessions"]
            .as_u64()
            .unwrap_or(0)
    };
    let holder = gws
        .iter()
        .position(|g| sessions(g) == 2)
        .expect("one replica holds the HAProxy session");
    gws[holder].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let r = sticky
            .post(&json!({"jsonrpc":"2.0","id":99,"method":"tools/list"}))
            .await;
        if r.status == 404 || Instant::now() > deadline {
            break r.status;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let readiness: Vec<String> = gws
        .iter()
        .map(|g| format!("{:?}", common::http_get(&format!("{}/ready", g.base))))
        .collect();
    assert_eq!(
        status, 404,
        "a session of a dead replica is unknown elsewhere; replicas' /ready: {readiness:?}"
    );
    let mut again = session(&lb).await;
    let r = again.request("tools/list", json!({})).await;
    assert!(r["result"]["tools"].is_array(), "{r}");
    for (i, c) in direct.iter_mut().enumerate() {
        if i != holder {
            let r = c.request("tools/list", json!({})).await;
            assert!(
                r["result"]["tools"].is_array(),
                "replica {i} unaffected: {r}"
            );
        }
    }

    // Every replica wrote its own chain, each record naming its replica; one verify run covers
    // all three.
    let dirs: Vec<PathBuf> = gws.iter().map(|g| g.dir().join("audit")).collect();
    for g in gws.iter_mut() {
        if g.child.try_wait().unwrap().is_none() {
            g.terminate(Duration::from_secs(20));
        }
    }
    let mut refused = 0;
    for (i, d) in dirs.iter().enumerate() {
        let name = format!("gw-{}", i + 1);
        for r in audit_records(d) {
            assert_eq!(r["replica"], json!(name), "{r}");
            let detail = r["detail"].as_str().unwrap_or_default();
            if r["outcome"] == "rate_limited" && detail.contains("on_store_error") {
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "refusals while the store was down are audited, saying why"
    );
    let out = Command::new(common::gateway_bin())
        .args(["audit", "verify"])
        .args(&dirs)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all 3 logs verified"), "{text}");
    drop(store);
}

/// SIGTERM drains: the socket stops taking connections and `/ready` would say so, while a call
/// already in flight still gets its answer before the gateway exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut gw = Gateway::start(&common::fixture_policy());
    let mut c = session(&gw.url).await;
    let pending = tokio::spawn(async move { c.call_tool("slow", json!({"ms": 1500})).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(Pid::from_raw(gw.pid() as i32), Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw.port())).is_err(),
        "a draining gateway takes no new connections"
    );
    let r = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the call in flight was answered")
        .unwrap();
    assert_eq!(common::client::tool_text(&r), "done", "{r}");
    let status = gw.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

/// Stateless 2026-07-28 clients through HAProxy round robin, and state held in one replica's
/// process reached from any: a multi round-trip retry and task polls that land on another
/// replica are forwarded to the owner over the fleet hop and get the owner's answer, which the
/// owner alone audits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_retries_and_task_handles_reach_their_replica_through_haproxy() {
    use common::modern::{request, shapes_server};
    let Some(haproxy_bin) = tool("haproxy") else {
        return;
    };
    if common::peer("venv/bin/python").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = common::fixture_policy().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nfleet_key = \"env:PORTCULLIS_TEST_FLEET_KEY\"\n",
    ) + &shapes_server();
    let env = |n: &'static str| {
        [
            ("PORTCULLIS_REPLICA", n),
            ("PORTCULLIS_TEST_FLEET_KEY", "a shared fleet secret"),
        ]
    };
    let gws: Vec<Gateway> = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .map(|n| Gateway::start_with(&p, &env(n)))
        .collect();
    let lb_port = free_port();
    let ports: Vec<u16> = gws.iter().map(Gateway::port).collect();
    let _lb = haproxy(&haproxy_bin, lb_port, &ports, tmp.path());
    let lb = Mcp::new(&format!("http://127.0.0.1:{lb_port}/mcp"));
    for id in 1..=6 {
        let r = request(
            &lb,
            id,
            "tools/call",
            json!({"name": "fixture__echo", "arguments": {"text": "hi"}}),
            json!({}),
        )
        .await
        .message();
        assert_eq!(common::modern::text(&r), "hi", "{r}");
    }

    // A held call: started on gw-1, retried on gw-2, answered by gw-1 through the hop.
    let caps = json!({"elicitation": {}});
    let elicit = json!({"name": "fixture__test_elicitation", "arguments": {"message": "who?"}});
    let one = Mcp::new(&gws[0].url);
    let two = Mcp::new(&gws[1].url);
    let retry =
        |first: &Value| common::modern::answer_input(first, &elicit, json!({"name": "Ada"}));
    let first = request(&one, 10, "tools/call", elicit.clone(), caps.clone())
        .await
        .message();
    let elsewhere = request(&two, 11, "tools/call", retry(&first), caps.clone()).await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.body);
    let answered = elsewhere.message();
    assert!(answered["result"]["content"].is_array(), "{answered}");
    gws[1].wait_for_log(
        "request forwarded to the replica that holds its state",
        1,
        Duration::from_secs(5),
    );

    // The same through HAProxy: the start and its retry land on different replicas.
    let first = request(&lb, 20, "tools/call", elicit.clone(), caps.clone())
        .await
        .message();
    let done = request(&lb, 21, "tools/call", retry(&first), caps.clone())
        .await
        .message();
    assert!(done["result"]["content"].is_array(), "{done}");

    // A task started through HAProxy, polled through HAProxy: every poll lands on some
    // replica (two of three on one that does not hold it) and gets the owner's answer.
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    let task = request(
        &lb,
        30,
        "tools/call",
        json!({"name": "shapes__start_job", "arguments": {}}),
        tasks.clone(),
    )
    .await
    .message();
    assert_eq!(task["result"]["resultType"], "task", "{task}");
    let handle = task["result"]["taskId"].as_str().unwrap().to_owned();
    for id in 31..34 {
        let got = request(
            &lb,
            id,
            "tasks/get",
            json!({"taskId": handle}),
            tasks.clone(),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.body);
        let got = got.json();
        assert_eq!(got["result"]["status"], "completed", "{got}");
        assert_eq!(got["result"]["taskId"], handle.as_str(), "{got}");
    }
    // Each forwarded request was audited once, by the replica that served it.
    let calls: usize = gws
        .iter()
        .map(|g| {
            audit_records(&g.dir().join("portcullis-audit"))
                .iter()
                .filter(|r| r["kind"] == "call" && r["method"] == "tasks/get")
                .count()
        })
        .sum();
    assert_eq!(calls, 3, "one audit record per poll, fleet-wide");
}

/// `on_store_error = "local"` with the store unreachable: each replica enforces its share of
/// the quota (burst / replicas), so the fleet still admits about the quota, and says so loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_with_local_fallback_enforces_each_replicas_share() {
    // Nothing listens on this port: the store is down from the start.
    let p = policy(free_port(), "local");
    let gws: Vec<Gateway> = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .map(|n| replica(&p, n))
        .collect();
    let mut direct = Vec::new();
    for gw in &gws {
        direct.push(session(&gw.url).await);
    }
    let mut admitted = 0;
    for i in 0..(3 * QUOTA as usize) {
        let r = call(&mut direct[i % 3]).await;
        match code(&r) {
            None => admitted += 1,
            Some(-32014) => {
                let msg = r["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !msg.contains("unavailable"),
                    "local limits, not a store refusal: {r}"
                );
            }
            Some(c) => panic!("unexpected error {c}: {r}"),
        }
    }
    // Each replica: burst ceil(QUOTA / 3) = 2, so 3 x 2 = QUOTA.
    assert_eq!(admitted, QUOTA, "each replica admitted its share");
    for (i, gw) in gws.iter().enumerate() {
        gw.wait_for_log("QUOTA STORE DOWN", 1, Duration::from_secs(5));
        // The replica's name is on every log line and every metric series.
        let name = format!("gw-{}", i + 1);
        let log = gw.stderr();
        assert!(
            log.lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| !l.contains(" INFO ") || l.starts_with(&format!("replica={name} "))),
            "{log}"
        );
        let (_, metrics) = common::http_get(&format!("{}/metrics", gw.base)).unwrap();
        let series: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!series.is_empty());
        assert!(
            series
                .iter()
                .all(|l| l.contains(&format!("replica=\"{name}\""))),
            "{metrics}"
        );
    }
}
