//! A server's list-change storm must not reach every client, nor keep the gateway re-listing.
//!
//! A hostile stdio server (`tests/python/servers/list_storm.py`) answers a tool call with a burst
//! of tens of thousands of `list_changed` (and `resources/updated`) notifications, and gives a
//! slightly different list every time it is asked. Five client sessions hold their standalone
//! GET streams and, as real clients do, list again whenever they hear of a change. Covered:
//! each session hears of the storm at most about once per `list_changed_interval` (and once more
//! after the last change, so its final list is the server's final list); the gateway asks the
//! server for the list at most about once per interval; a neighbouring server's calls keep
//! their latency (loosely, against a baseline taken in the same run); the audit log gets
//! `catalog_unstable` records and `/metrics` counts what the server sent. The same for prompts,
//! resources (a stable list changes nobody's view) and `resources/updated` per URI. A single
//! change still reaches every session at once.
//!
//! Counts are bounded by elapsed time measured in the test (the bounds only loosen under load);
//! the latency comparison is loose and relative to the same run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{sse_events, Mcp, LATEST};
use common::{audit_records, audit_verify, http_get, repo_root, Gateway};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How long any "eventually" may take on a loaded two-core machine. Not a performance bound.
const PATIENCE: Duration = Duration::from_secs(120);
const INTERVAL: Duration = Duration::from_millis(250);
/// How long nothing may arrive before the storm's aftermath counts as over.
const QUIET: Duration = Duration::from_secs(2);
const SESSIONS: usize = 5;
const STORM: u64 = 50_000;

fn storm_server(name: &str) -> String {
    let script = repo_root().join("tests/python/servers/list_storm.py");
    format!(
        "\n[servers.{name}]\nruntime = \"process\"\ncommand = \"python3\"\nargs = [\"{}\"]\n",
        script.display()
    )
}

fn policy(gateway: &str, servers: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\n{gateway}\n{servers}")
}

/// One notification as a session received it.
struct Heard {
    at: Instant,
    method: String,
    params: Value,
}

/// A client session that holds its standalone stream and, like a real client, lists again
/// whenever it hears `trigger` (one listing at a time, one more queued at most).
struct Watcher {
    client: Mcp,
    heard: Arc<Mutex<Vec<Heard>>>,
    /// Names (or URIs) in the answer to the latest listing.
    listed: Arc<Mutex<Option<Vec<String>>>>,
    listing: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    async fn open(gw: &Gateway, trigger: &'static str, list: &'static str) -> Watcher {
        let mut client = Mcp::new(&gw.url);
        client.initialize(LATEST).await;
        let session = client.session.clone().unwrap();
        let mut stream = client
            .http
            .get(&gw.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", &client.protocol)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200, "standalone stream");
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let listed: Arc<Mutex<Option<Vec<String>>>> = Arc::default();
        let listing = Arc::new(AtomicBool::new(false));
        let (wake, mut woken) = mpsc::channel::<()>(1);
        let sink = heard.clone();
        let reader = tokio::spawn(async move {
            let mut pending = String::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    for (_, data) in sse_events(&block) {
                        let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                            continue;
                        };
                        let Some(method) = msg["method"].as_str() else {
                            continue;
                        };
                        if method == trigger {
                            // Full means a listing is already queued: one is enough.
                            let _ = wake.try_send(());
                        }
                        sink.lock().unwrap().push(Heard {
                            at: Instant::now(),
                            method: method.to_owned(),
                            params: msg["params"].clone(),
                        });
                    }
                }
            }
        });
        let mut lister_client = Mcp::new(&gw.url);
        lister_client.session = Some(session);
        lister_client.protocol = client.protocol.clone();
        let (out, busy) = (listed.clone(), listing.clone());
        let lister = tokio::spawn(async move {
            while woken.recv().await.is_some() {
                busy.store(true, Ordering::SeqCst);
                let names = list_names(&mut lister_client, list).await;
                *out.lock().unwrap() = Some(names);
                busy.store(false, Ordering::SeqCst);
            }
        });
        Watcher {
            client,
            heard,
            listed,
            listing,
            tasks: vec![reader, lister],
        }
    }

    fn count(&self, method: &str) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == method)
            .count()
    }

    fn count_updated(&self, uri: &str) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "notifications/resources/updated" && h.params["uri"] == uri)
            .count()
    }

    /// When the last notification with `method` arrived.
    fn last(&self, method: &str) -> Option<Instant> {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == method)
            .map(|h| h.at)
            .max()
    }

    fn last_any(&self) -> Option<Instant> {
        self.heard.lock().unwrap().iter().map(|h| h.at).max()
    }

    fn listed(&self) -> Option<Vec<String>> {
        self.listed.lock().unwrap().clone()
    }

    fn idle(&self) -> bool {
        !self.listing.load(Ordering::SeqCst)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The names (tools, prompts) or URIs (resources) of a whole list, every page.
async fn list_names(c: &mut Mcp, method: &str) -> Vec<String> {
    let (key, field) = match method {
        "tools/list" => ("tools", "name"),
        "prompts/list" => ("prompts", "name"),
        "resources/list" => ("resources", "uri"),
        other => panic!("no list {other}"),
    };
    let mut out = Vec::new();
    let mut params = json!({});
    for _ in 0..100 {
        let r = c.request(method, params).await;
        let result = &r["result"];
        for item in result[key].as_array().unwrap_or_else(|| panic!("{r}")) {
            out.push(item[field].as_str().unwrap().to_owned());
        }
        match result["nextCursor"].as_str() {
            Some(cursor) => params = json!({ "cursor": cursor }),
            None => return out,
        }
    }
    panic!("{method}: more than 100 pages");
}

/// What the storm server saw (its `stats` tool, exposed as `tool`).
async fn stats(c: &mut Mcp, tool: &str) -> Value {
    let r = c.call_tool(tool, json!({})).await;
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("stats: {r}"));
    serde_json::from_str(text).unwrap()
}

/// Waits until the storm server has sent all `count` notifications.
async fn storm_over(probe: &mut Mcp, tool: &str, count: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = stats(probe, tool).await;
        if s["sent"] == count && s["running"] == false {
            return;
        }
        assert!(Instant::now() < deadline, "storm not over: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `patience` until every watcher's latest listing equals the server's last answer
/// to that list (`server_list` reads it from the stats, under the names clients see); returns
/// the stats.
async fn caught_up(
    watchers: &[Watcher],
    probe: &mut Mcp,
    tool: &str,
    server_list: impl Fn(&Value) -> Vec<String>,
    patience: Duration,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let s = stats(probe, tool).await;
        let server = server_list(&s);
        let prefix = tool.strip_suffix("stats").unwrap_or_default();
        let same = |l: Vec<String>| {
            let mine: Vec<String> = l.into_iter().filter(|n| n.starts_with(prefix)).collect();
            mine == server
        };
        if watchers
            .iter()
            .all(|w| w.idle() && w.listed().is_some_and(same))
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "sessions never listed the server's final list {server:?}: {:?}",
            watchers.iter().map(Watcher::listed).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn strings(v: &Value, prefix: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| format!("{prefix}{}", n.as_str().unwrap()))
        .collect()
}

/// The most a throttled sender may send in `elapsed`: one at once, one per interval after
/// that, and one after the last change.
fn bound(elapsed: Duration) -> usize {
    (elapsed.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as usize + 2
}

/// Waits until nothing has reached any watcher for [`QUIET`] and none is listing.
async fn wait_quiet(watchers: &[Watcher], since: Instant) {
    let start = Instant::now();
    loop {
        let last = watchers
            .iter()
            .filter_map(Watcher::last_any)
            .max()
            .unwrap_or(since)
            .max(since);
        if last.elapsed() >= QUIET && watchers.iter().all(Watcher::idle) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "notifications still arriving after {PATIENCE:?}; heard so far per session: {:?}",
            watchers
                .iter()
                .map(|w| w.heard.lock().unwrap().len())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Median latency of `calm__echo` calls made until `stop` is set (at most `max`).
async fn echo_latencies(url: String, stop: Arc<AtomicBool>, max: usize) -> Vec<Duration> {
    let mut c = Mcp::new(&url);
    c.initialize(LATEST).await;
    let mut out = Vec::new();
    while out.len() < max && !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let r = c.call_tool("calm__echo", json!({"text": "x"})).await;
        assert_eq!(r["result"]["content"][0]["text"], "x", "{r}");
        out.push(t.elapsed());
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    let (_, body) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn unstable_records(gw: &Gateway) -> Vec<Value> {
    audit_records(&gw.dir().join("portcullis-audit"))
        .into_iter()
        .filter(|r| r["kind"] == "catalog_unstable")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_list_storm_is_coalesced_upstream_and_debounced_downstream() {
    let mut gw = Gateway::start(&policy(
        "list_changed_interval = \"250ms\"\nunstable_list_changes = 1000\nunstable_window = \"2s\"",
        &(storm_server("storm")
            + "\n[servers.calm]\nruntime = \"process\"\ncommand = \"{fixture}\"\n"),
    ));
    let mut watchers = Vec::new();
    for _ in 0..SESSIONS {
        watchers.push(Watcher::open(&gw, "notifications/tools/list_changed", "tools/list").await);
    }
    let never = Arc::new(AtomicBool::new(false));
    let baseline = median(echo_latencies(gw.url.clone(), never, 30).await);

    let storm_over_flag = Arc::new(AtomicBool::new(false));
    let neighbour = tokio::spawn(echo_latencies(
        gw.url.clone(),
        storm_over_flag.clone(),
        2000,
    ));
    let trigger = Instant::now();
    let r = watchers[0]
        .client
        .call_tool("storm__storm", json!({ "count": STORM }))
        .await;
    assert_eq!(r["result"]["content"][0]["text"], "storming", "{r}");

    // The storm is over once the server has sent it all; then every session's last listing
    // must come to show the server's last list.
    let mut probe = Mcp::new(&gw.url);
    probe.initialize(LATEST).await;
    storm_over(&mut probe, "storm__stats", STORM).await;
    storm_over_flag.store(true, Ordering::SeqCst);
    let during = neighbour.await.unwrap();
    // The gateway may still be reading the storm when the server has written it all: once the
    // sessions caught up and nothing more arrived, their lists must still be the server's last.
    let last_tools = |s: &Value| strings(&s["last_tools"], "storm__");
    caught_up(&watchers, &mut probe, "storm__stats", last_tools, PATIENCE).await;
    wait_quiet(&watchers, trigger).await;
    let s = caught_up(
        &watchers,
        &mut probe,
        "storm__stats",
        last_tools,
        Duration::ZERO,
    )
    .await;

    for (i, w) in watchers.iter().enumerate() {
        let n = w.count("notifications/tools/list_changed");
        let elapsed = w
            .last("notifications/tools/list_changed")
            .map_or(Duration::ZERO, |t| t - trigger);
        eprintln!("session {i}: {n} tools/list_changed in {elapsed:?}");
        assert!(n >= 1, "session {i} never heard of the change");
        assert!(
            n <= bound(elapsed),
            "session {i} heard {n} tools/list_changed in {elapsed:?} (at most {} expected at one per {INTERVAL:?})",
            bound(elapsed)
        );
    }
    let lists = s["lists"]["tools/list"].as_u64().unwrap_or(0) as usize;
    let span = Duration::from_secs_f64(s["last_list_after"]["tools/list"].as_f64().unwrap_or(0.0));
    eprintln!("server: {lists} tools/list requests in {span:?} after {STORM} list_changed");
    assert!(
        lists >= 1 && lists <= bound(span),
        "the gateway asked for tools/list {lists} times in {span:?} (at most {} expected)",
        bound(span)
    );
    let during_median = median(during.clone());
    eprintln!(
        "neighbour echo: median {baseline:?} before, {during_median:?} during the storm ({} calls)",
        during.len()
    );
    assert!(
        during_median <= baseline * 10 + Duration::from_millis(50),
        "a neighbouring server's calls slowed from {baseline:?} to {during_median:?}"
    );

    // Windows of 2 s with more than 1000 changes: audited once each, with the count.
    let deadline = Instant::now() + PATIENCE;
    let records = loop {
        let r = unstable_records(&gw);
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "no catalog_unstable record");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut total = 0;
    for r in &records {
        assert_eq!(r["server"], "storm", "{r}");
        let detail: Value = serde_json::from_str(r["detail"].as_str().unwrap()).unwrap();
        let count = detail["count"].as_u64().unwrap();
        assert!(count > 1000, "{r}");
        assert_eq!(detail["lists"]["tools"], count, "{r}");
        assert_eq!(detail["limit"], 1000, "{r}");
        assert_eq!(detail["window_ms"], 2000, "{r}");
        total += count;
    }
    assert!(total <= STORM, "{records:?}");
    assert!(
        records.len() as f64 <= trigger.elapsed().as_secs_f64() / 2.0 + 1.0,
        "more than one record per window: {records:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_list_changed_total{server=\"storm\",list=\"tools\"}"
        ),
        Some(STORM)
    );
    assert!(
        metric(&gw, "portcullis_catalog_unstable_total{server=\"storm\"}")
            .is_some_and(|n| n as usize >= records.len().min(1)),
        "no catalog_unstable metric"
    );
    gw.terminate(PATIENCE);
    let (ok, out) = audit_verify(&gw.dir().join("portcullis-audit"));
    assert!(ok, "audit verify: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_resources_and_updates_storms_are_bounded_per_kind_and_uri() {
    let gw = Gateway::start(&policy(
        "list_changed_interval = \"250ms\"",
        &storm_server("storm"),
    ));
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut w = Watcher::open(
            &gw,
            "notifications/resources/list_changed",
            "resources/list",
        )
        .await;
        let r = w
            .client
            .request("resources/subscribe", json!({"uri": "storm://r/1"}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        watchers.push(w);
    }
    let trigger = Instant::now();
    let methods = [
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    ];
    let r = watchers[0]
        .client
        .call_tool(
            "storm",
            json!({"count": 30_000, "methods": methods, "uris": ["storm://r/1", "storm://r/2"]}),
        )
        .await;
    assert_eq!(r["result"]["content"][0]["text"], "storming", "{r}");
    let mut probe = Mcp::new(&gw.url);
    probe.initialize(LATEST).await;
    storm_over(&mut probe, "stats", 30_000).await;
    let last_resources = |s: &Value| strings(&s["last_resources"], "");
    caught_up(&watchers, &mut probe, "stats", last_resources, PATIENCE).await;
    wait_quiet(&watchers, trigger).await;
    let server = caught_up(
        &watchers,
        &mut probe,
        "stats",
        last_resources,
        Duration::ZERO,
    )
    .await;

    for (i, w) in watchers.iter().enumerate() {
        let prompts = w.count("notifications/prompts/list_changed");
        assert_eq!(prompts, 0, "session {i}: the prompts never changed");
        let resources = w.count("notifications/resources/list_changed");
        let span = w
            .last("notifications/resources/list_changed")
            .map_or(Duration::ZERO, |t| t - trigger);
        let updated = w.count_updated("storm://r/1");
        let updated_span = w
            .last("notifications/resources/updated")
            .map_or(Duration::ZERO, |t| t - trigger);
        eprintln!(
            "session {i}: {resources} resources/list_changed in {span:?}, {updated} updates of r/1 in {updated_span:?}"
        );
        assert!(
            resources >= 1 && resources <= bound(span),
            "session {i}: {resources} resources/list_changed in {span:?}"
        );
        assert!(
            updated >= 1 && updated <= bound(updated_span),
            "session {i}: {updated} updates of storm://r/1 in {updated_span:?}"
        );
        assert_eq!(
            w.count_updated("storm://r/2"),
            0,
            "session {i} never subscribed to r/2"
        );
    }
    for method in ["prompts/list", "resources/list", "resources/templates/list"] {
        let n = server["lists"][method].as_u64().unwrap_or(0) as usize;
        let span =
            Duration::from_secs_f64(server["last_list_after"][method].as_f64().unwrap_or(0.0));
        eprintln!("server: {n} {method} in {span:?}");
        assert!(
            n >= 1 && n <= bound(span),
            "{n} {method} requests in {span:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_list_change_reaches_every_session_at_once() {
    // An interval far longer than the wait below: a change must go out at once, not at the end
    // of an interval.
    let gw = Gateway::start(&policy(
        "list_changed_interval = \"60s\"",
        "\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{fixture}\"\n",
    ));
    let mut watchers = Vec::new();
    for _ in 0..SESSIONS {
        watchers.push(Watcher::open(&gw, "notifications/tools/list_changed", "tools/list").await);
    }
    let r = watchers[0]
        .client
        .call_tool("emit_list_changed", json!({}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watchers.iter().all(|w| {
        w.listed()
            .is_some_and(|l| l.contains(&"extra_0".to_owned()))
    }) {
        assert!(
            Instant::now() < deadline,
            "not every session heard of the change well within the interval: {:?}",
            watchers
                .iter()
                .map(|w| w.count("notifications/tools/list_changed"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heard: Vec<usize> = watchers
        .iter()
        .map(|w| w.count("notifications/tools/list_changed"))
        .collect();
    assert_eq!(heard, vec![1; SESSIONS], "one notification per session");
}
