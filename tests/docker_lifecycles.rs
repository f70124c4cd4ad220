//! Lifecycles of docker servers against a real dockerd, through the gateway binary: per-call
//! containers are fresh every call, per-session containers are private and end with their
//! session (deleted or expired), the warm pool serves calls and refills, a burst of concurrent
//! per-call calls leaves nothing behind, and a killed session container is replaced.
//!
//! Evidence of "which container served this call" is the fixture's `env_get HOSTNAME`: Docker
//! sets it to the first 12 hex digits of the container id (`pid` is the same in every container,
//! since the server always runs under the same init).
//!
//! dockerd and the fixture image come from tests/common/docker.rs. No assertion is timed: every
//! wait polls for a state with a generous deadline.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::KillContainerOptions;
use common::client::{tool_text, Mcp, LATEST};
use common::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
use common::Gateway;
use portcullis::sandbox::docker::DockerRuntime;
use serde_json::{json, Value};

const PURPOSE: &str = "io.portcullis.purpose";
/// How long any "eventually" may take on a loaded two-core machine. Not a performance bound.
const PATIENCE: Duration = Duration::from_secs(90);

/// A policy with one docker server `box` of the fixture image.
fn policy(lifecycle: &str, pool: usize, gateway_extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "180s"
{gateway_extra}

[servers.box]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
lifecycle = "{lifecycle}"
pool = {pool}
startup_timeout = "120s"
limits = {{ memory = "64m", pids = 32 }}
"#
    )
}

fn gateway(scope: &Scope, policy: &str) -> Gateway {
    Gateway::start_with(policy, &[("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str())])
}

/// The short id of the container that served this call.
async fn hostname(c: &mut Mcp) -> String {
    let r = c.call_tool("env_get", json!({"name": "HOSTNAME"})).await;
    let h = tool_text(&r);
    assert!(
        h.len() == 12 && h.chars().all(|c| c.is_ascii_hexdigit()),
        "HOSTNAME is not a container id: {h}"
    );
    h
}

async fn count_calls(c: &mut Mcp) -> String {
    tool_text(&c.call_tool("count_calls", json!({})).await)
}

/// Polls `check` until it holds or `limit` has passed; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Containers of the scope whose id starts with `short` (a HOSTNAME).
async fn with_hostname(rt: &DockerRuntime, scope: &str, short: &str) -> Vec<String> {
    containers_in(rt, scope)
        .await
        .into_keys()
        .filter(|id| id.starts_with(short))
        .collect()
}

/// Ids of the containers of the scope labelled as warm-pool instances.
async fn pool_ids(rt: &DockerRuntime, scope: &str) -> HashSet<String> {
    containers_in(rt, scope)
        .await
        .into_iter()
        .filter(|(_, l)| l.get(PURPOSE).map(String::as_str) == Some("pool"))
        .map(|(id, _)| id)
        .collect()
}

async fn delete_session(gw: &Gateway, c: &Mcp) {
    let del = c
        .http
        .delete(&gw.url)
        .header("mcp-session-id", c.session.clone().expect("session"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(del.status(), 200);
}

/// SIGTERM, then nothing of the scope may remain: the gateway removes what it started before
/// it exits.
async fn stop_and_expect_nothing_left(mut gw: Gateway, rt: &DockerRuntime, scope: &Scope) {
    let status = gw.terminate(PATIENCE);
    assert!(
        status.success(),
        "gateway exit {status}; stderr:\n{}",
        gw.stderr()
    );
    let left = containers_in(rt, &scope.name).await;
    assert!(left.is_empty(), "left after SIGTERM: {left:?}");
}

#[tokio::test]
async fn per_call_runs_every_call_in_a_fresh_container() {
    let scope = Scope::new("percall");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let gw = gateway(&scope, &policy("per-call", 0, ""));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let mut seen = HashSet::new();
    for _ in 0..3 {
        assert!(
            seen.insert(hostname(&mut c).await),
            "a container served twice"
        );
    }
    // A fresh server has served exactly one call: no state carries over.
    for _ in 0..3 {
        assert_eq!(count_calls(&mut c).await, "1");
    }
    // Without a pool, nothing stays once the calls are done (the bootstrap instance that read
    // the catalog is gone too).
    assert!(
        eventually(PATIENCE, || async {
            containers_in(&rt, &scope.name).await.is_empty()
        })
        .await,
        "per-call containers left behind: {:?}",
        containers_in(&rt, &scope.name).await
    );
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}

#[tokio::test]
async fn warm_pool_serves_per_call_calls_and_refills() {
    let scope = Scope::new("pool");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let gw = gateway(&scope, &policy("per-call", 2, ""));
    assert!(
        eventually(PATIENCE, || async {
            pool_ids(&rt, &scope.name).await.len() == 2
        })
        .await,
        "the pool never reached 2: {:?}",
        containers_in(&rt, &scope.name).await
    );
    let initial = pool_ids(&rt, &scope.name).await;

    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let served = hostname(&mut c).await;
    let served_id = initial
        .iter()
        .find(|id| id.starts_with(&served))
        .unwrap_or_else(|| panic!("call served by {served}, not by the pool {initial:?}"))
        .clone();
    // The next call gets another container, which has served nothing before.
    assert_eq!(count_calls(&mut c).await, "1");

    // The used containers are removed and the pool is back at 2, all of them fresh.
    assert!(
        eventually(PATIENCE, || async {
            let all = containers_in(&rt, &scope.name).await;
            let pool = pool_ids(&rt, &scope.name).await;
            all.len() == 2 && pool.len() == 2 && !pool.contains(&served_id)
        })
        .await,
        "the pool did not refill to 2: {:?}",
        containers_in(&rt, &scope.name).await
    );
    let now = pool_ids(&rt, &scope.name).await;
    assert!(
        now.iter().filter(|id| initial.contains(*id)).count() <= 1,
        "two calls were served, so at most one original pool container remains: {initial:?} -> {now:?}"
    );
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}

/// How long one call of the burst may take, start of its container included, and how long the
/// whole burst may take. Not performance bounds: they turn a stuck call into a failure that says
/// which calls were stuck, instead of a test that hangs until CI gives up.
const CALL_LIMIT: Duration = Duration::from_secs(240);
const BURST_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test]
async fn two_hundred_concurrent_per_call_calls_leave_only_the_pool() {
    const CALLS: usize = 200;
    const CONCURRENCY: usize = 32;
    let scope = Scope::new("burst");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let gw = gateway(&scope, &policy("per-call", 2, ""));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let session = c.session.clone();

    let began = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let permits = permits.clone();
        let url = gw.url.clone();
        let session = session.clone();
        calls.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            let mut c = Mcp::new(&url);
            c.session = session;
            let call = c.call_tool("env_get", json!({"name": "HOSTNAME"}));
            let r = tokio::time::timeout(CALL_LIMIT, call)
                .await
                .unwrap_or_else(|_| json!({"test": format!("no answer within {CALL_LIMIT:?}")}));
            (i, r)
        });
    }
    let mut hosts = HashSet::new();
    let mut failures: Vec<(usize, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + BURST_LIMIT;
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, calls.join_next()).await {
        let (i, r) = done.expect("call task");
        match r["result"]["content"][0]["text"].as_str() {
            Some(h) if r["result"]["isError"] != true => {
                hosts.insert(h.to_owned());
            }
            _ => failures.push((i, r)),
        }
    }
    let unfinished = calls.len();
    calls.abort_all();
    println!(
        "burst: {} answered, {} failed, {unfinished} unfinished after {:?}",
        hosts.len(),
        failures.len(),
        began.elapsed()
    );
    assert!(
        unfinished == 0 && failures.is_empty(),
        "{} failed calls: {failures:?}\n{unfinished} calls unfinished after {BURST_LIMIT:?} \
         (the gateway's stderr is above)",
        failures.len()
    );
    assert_eq!(hosts.len(), CALLS, "every call had a container of its own");

    // Afterwards only the refilled pool remains.
    let settled = eventually(PATIENCE, || async {
        let all = containers_in(&rt, &scope.name).await;
        all.len() == 2
            && all
                .values()
                .all(|l| l.get(PURPOSE).map(String::as_str) == Some("pool"))
    })
    .await;
    let all = containers_in(&rt, &scope.name).await;
    assert!(
        settled,
        "expected exactly the 2 pool containers, found {}: {:?}",
        all.len(),
        all.values()
            .map(|l| l.get(PURPOSE).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    );
    println!("burst: settled after {:?}", began.elapsed());
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}

#[tokio::test]
async fn per_session_containers_are_private_and_end_with_the_session() {
    let scope = Scope::new("persession");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    // One warm instance: the first session takes it, the second gets one started for it.
    let gw = gateway(&scope, &policy("per-session", 1, ""));
    let mut a = Mcp::new(&gw.url);
    a.initialize(LATEST).await;
    let mut b = Mcp::new(&gw.url);
    b.initialize(LATEST).await;

    let ha = hostname(&mut a).await;
    let hb = hostname(&mut b).await;
    assert_ne!(ha, hb, "sessions do not share a container");
    assert_eq!(hostname(&mut a).await, ha, "a session keeps its container");
    assert_eq!(hostname(&mut b).await, hb, "a session keeps its container");
    // State lives as long as the session: the third call of each session is its third.
    assert_eq!(count_calls(&mut a).await, "3");
    assert_eq!(count_calls(&mut b).await, "3");
    assert_eq!(with_hostname(&rt, &scope.name, &ha).await.len(), 1);
    assert_eq!(with_hostname(&rt, &scope.name, &hb).await.len(), 1);

    delete_session(&gw, &a).await;
    assert!(
        eventually(PATIENCE, || async {
            with_hostname(&rt, &scope.name, &ha).await.is_empty()
        })
        .await,
        "the deleted session's container {ha} still exists"
    );
    assert_eq!(hostname(&mut b).await, hb, "the other session is untouched");
    assert_eq!(with_hostname(&rt, &scope.name, &hb).await.len(), 1);

    // A new session gets a container of its own, not the deleted session's or b's.
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let hc = hostname(&mut c).await;
    assert!(hc != ha && hc != hb, "{hc} reused");
    assert_eq!(
        count_calls(&mut c).await,
        "2",
        "the container is new to this session"
    );
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}

/// Kills the container of a session behind the gateway's back; the session must then get a
/// working container again, after at most a clear error for calls that hit the dead one.
async fn killed_session_container_is_replaced(pool: usize, test: &str) {
    let scope = Scope::new(test);
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let gw = gateway(&scope, &policy("per-session", pool, ""));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let first = hostname(&mut c).await;
    assert_eq!(count_calls(&mut c).await, "2");
    let ids = with_hostname(&rt, &scope.name, &first).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    rt.api()
        .kill_container(&ids[0], None::<KillContainerOptions>)
        .await
        .expect("kill");

    let deadline = Instant::now() + PATIENCE;
    let mut errors = Vec::new();
    let second = loop {
        let r = c.call_tool("env_get", json!({"name": "HOSTNAME"})).await;
        match r["result"]["content"][0]["text"].as_str() {
            Some(h) if r["result"]["isError"] != true => break h.to_owned(),
            _ => {
                // What a client sees meanwhile is a JSON-RPC error that names the server.
                let msg = r["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains("box"), "unclear error: {r}");
                errors.push(msg.to_owned());
            }
        }
        assert!(Instant::now() < deadline, "never recovered: {errors:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("pool {pool}: errors before recovery: {errors:?}");
    assert_ne!(first, second, "served by a new container");
    // The new container is the session's from now on, and fresh.
    assert_eq!(hostname(&mut c).await, second);
    assert_eq!(count_calls(&mut c).await, "3");
    assert!(
        eventually(PATIENCE, || async {
            with_hostname(&rt, &scope.name, &first).await.is_empty()
        })
        .await,
        "the killed container {first} was not removed"
    );
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}

#[tokio::test]
async fn killed_session_container_is_replaced_without_pool() {
    killed_session_container_is_replaced(0, "kill0").await;
}

#[tokio::test]
async fn killed_session_container_from_the_pool_is_replaced() {
    killed_session_container_is_replaced(1, "kill1").await;
}

#[tokio::test]
async fn expired_session_takes_its_container_with_it() {
    let scope = Scope::new("idle");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let gw = gateway(
        &scope,
        &policy("per-session", 0, "session_idle_timeout = \"2s\""),
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let h = hostname(&mut c).await;
    assert_eq!(with_hostname(&rt, &scope.name, &h).await.len(), 1);
    assert!(
        eventually(PATIENCE, || async {
            with_hostname(&rt, &scope.name, &h).await.is_empty()
        })
        .await,
        "the idle session's container {h} still exists"
    );
    assert!(
        gw.stderr().contains("session expired after being idle"),
        "{}",
        gw.stderr()
    );
    // The session itself is gone too.
    let r = c.call_tool("env_get", json!({"name": "HOSTNAME"})).await;
    assert!(r.get("error").is_some(), "{r}");
    let left: HashMap<_, _> = containers_in(&rt, &scope.name).await;
    assert!(left.is_empty(), "{left:?}");
    stop_and_expect_nothing_left(gw, &rt, &scope).await;
}
