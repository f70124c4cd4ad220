//! Hot reload of the policy under live sessions, through the real gateway binary and a real MCP
//! client (rmcp, which keeps the session's standalone SSE stream open for notifications).
//!
//! Covered: a server added (the session hears `tools/list_changed` and can call it), removed
//! (its tools go, its process stops, a call in flight is still answered), changed (restarted
//! with a new process while the unchanged server keeps its pid); a tool taken off a client's
//! allow list (that client hears of it and is refused, another client is not disturbed); a
//! rotated token (the old sessions end); broken files (syntax and semantic) rejected with the old
//! policy still serving; the SIGHUP and the file-watch paths; an upstream's own list change; an
//! audit record for every reload, accepted or rejected, and `portcullis audit verify` passing.
//! Docker servers keep or change their container the same way (needs dockerd).
//!
//! No assertion is timed: every wait is for an event, with a generous deadline against hangs.

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{sse_events, Mcp, LATEST};
use common::{audit_records as records, audit_verify, Gateway};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};

/// How long any "eventually" may take on a loaded two-core machine. Not a performance bound.
const PATIENCE: Duration = Duration::from_secs(60);

const ALICE: &str = "pcs_alice-reload-token-for-tests-only-000000000";
const BOB: &str = "pcs_bob-reload-token-for-tests-only-1111111111111";
const ALICE_ROTATED: &str = "pcs_alice-reload-token-rotated-22222222222222";

fn sha(t: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// A fixture server `name` run as a child process.
fn server(name: &str, extra: &str) -> String {
    format!(
        "\n[servers.{name}]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\nenv = {{ FIXTURE_NAME = \"{name}\" }}\n{extra}\n"
    )
}

fn policy(body: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\nnaming = \"prefix\"\n{body}")
}

/// Counts the list-change notifications one session receives.
#[derive(Clone, Default)]
struct Changes {
    tools: Arc<AtomicUsize>,
}

impl ClientHandler for Changes {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.tools.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    }
}

struct Session {
    client: RunningService<RoleClient, Changes>,
    changes: Changes,
}

impl Session {
    async fn open(gw: &Gateway, token: Option<&str>) -> Session {
        let mut config = StreamableHttpClientTransportConfig::with_uri(gw.url.as_str());
        if let Some(t) = token {
            config = config.auth_header(t);
        }
        let changes = Changes::default();
        let client = changes
            .clone()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("rmcp connects");
        Session { client, changes }
    }

    fn tool_changes(&self) -> usize {
        self.changes.tools.load(Ordering::SeqCst)
    }

    /// Waits until this session has heard `n` tools/list_changed notifications.
    async fn heard(&self, n: usize) {
        wait_until("tools/list_changed", || async { self.tool_changes() >= n }).await;
    }

    async fn tools(&self) -> Vec<String> {
        self.client
            .list_all_tools()
            .await
            .expect("tools/list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    /// The text of a tool's answer, or the error the gateway gave.
    async fn call(&self, tool: &str, args: Value) -> Result<String, String> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(m) = args {
            params = params.with_arguments(m);
        }
        match self.client.call_tool(params).await {
            Ok(r) => {
                let v = serde_json::to_value(&r).unwrap();
                Ok(v["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn pid(&self, server: &str) -> u32 {
        let text = self
            .call(&format!("{server}__pid"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("{server}__pid: {e}"));
        text.parse().unwrap_or_else(|_| panic!("not a pid: {text}"))
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn logged(gw: &Gateway, needle: &str, times: usize) {
    wait_until(&format!("`{needle}` logged {times}x"), || async {
        gw.stderr().matches(needle).count() >= times
    })
    .await;
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still have one, so check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        .unwrap_or(false)
}

fn audit_dir(gw: &Gateway) -> std::path::PathBuf {
    gw.dir().join("portcullis-audit")
}

/// The `policy_reload` records of the audit log, with their `detail` parsed.
fn reloads(dir: &Path) -> Vec<(String, Value)> {
    records(dir)
        .into_iter()
        .filter(|r| r["kind"] == "policy_reload")
        .map(|r| {
            let detail = serde_json::from_str(r["detail"].as_str().unwrap()).unwrap();
            (r["outcome"].as_str().unwrap().to_owned(), detail)
        })
        .collect()
}

/// Stops the gateway with SIGTERM and checks the audit log offline; returns a copy of the log
/// (the gateway's own folder goes with it).
fn stop_and_verify(mut gw: Gateway) -> tempfile::TempDir {
    gw.terminate(PATIENCE);
    let dir = audit_dir(&gw);
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "audit verify: {out}");
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
    }
    copy
}

/// Reload by watching the file (fast polling so the test does not idle).
fn watched(p: &str) -> Gateway {
    Gateway::start_with(p, &[("PORTCULLIS_WATCH_INTERVAL", "200ms")])
}

/// Reload only by SIGHUP.
fn unwatched(p: &str) -> Gateway {
    Gateway::start_with(p, &[("PORTCULLIS_NO_WATCH", "true")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_added_and_removed_by_the_file_watch_reach_a_live_session() {
    let gw = watched(&policy(&server("a", "")));
    let s = Session::open(&gw, None).await;
    assert!(!s.tools().await.iter().any(|t| t.starts_with("b__")));
    let pid_a = s.pid("a").await;

    gw.write_policy(&policy(&(server("a", "") + &server("b", ""))));
    s.heard(1).await;
    let tools = s.tools().await;
    assert!(tools.contains(&"b__echo".to_owned()), "{tools:?}");
    assert_eq!(
        s.call("b__echo", json!({"text": "from b"})).await.unwrap(),
        "from b"
    );
    let pid_b = s.pid("b").await;
    assert_eq!(s.pid("a").await, pid_a, "the unchanged server kept running");

    gw.write_policy(&policy(&server("a", "")));
    s.heard(2).await;
    let tools = s.tools().await;
    assert!(!tools.iter().any(|t| t.starts_with("b__")), "{tools:?}");
    let refused = s.call("b__echo", json!({"text": "x"})).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("unknown tool")),
        "{refused:?}"
    );
    wait_until("the removed server's process exits", || async {
        !alive(pid_b)
    })
    .await;
    assert_eq!(s.pid("a").await, pid_a, "the unchanged server kept running");
    assert!(alive(pid_a));
    s.client.cancel().await.ok();

    let log = stop_and_verify(gw);
    let r = reloads(log.path());
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|(o, d)| o == "ok" && d["trigger"] == "file"));
    assert_eq!(r[0].1["servers"]["added"], json!(["b"]), "{r:?}");
    assert_eq!(r[1].1["servers"]["removed"], json!(["b"]), "{r:?}");
    assert_eq!(r[0].1["sha256"]["to"], r[1].1["sha256"]["from"]);
}

fn clients(alice_allow: &str, bob_allow: &str, alice_token: &str) -> String {
    format!(
        "\n[clients.alice]\ntoken_sha256 = \"{}\"\nallow = {alice_allow}\n\n[clients.bob]\ntoken_sha256 = \"{}\"\nallow = {bob_allow}\n",
        sha(alice_token),
        sha(BOB)
    )
}

/// A session's standalone SSE stream read in order, byte by byte as the gateway sent it: what
/// says that one notification came before another, or that none came at all before a marker.
struct Stream {
    response: reqwest::Response,
    pending: String,
}

impl Stream {
    /// A new session of `token`'s client, and its standalone stream.
    async fn open(gw: &Gateway, token: &str) -> (Mcp, Stream) {
        let mut c = Mcp::new(&gw.url);
        c.bearer = Some(token.to_owned());
        c.initialize(LATEST).await;
        let response = c
            .http
            .get(&gw.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.clone().unwrap())
            .header("mcp-protocol-version", c.protocol.clone())
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let stream = Stream {
            response,
            pending: String::new(),
        };
        (c, stream)
    }

    /// The methods of the messages that arrive until one with `method`, which ends the list.
    async fn until(&mut self, method: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                for (_, data) in sse_events(&block) {
                    let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    let m = msg["method"].as_str().unwrap_or_default().to_owned();
                    let done = m == method;
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {method} within {PATIENCE:?}; seen {seen:?}"))
                .expect("stream error")
                .unwrap_or_else(|| panic!("stream ended before {method}; seen {seen:?}"));
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits until the gateway ends the stream (keep-alives and other events skipped).
    async fn ends(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(_) => return,
                Err(_) => panic!("the stream is still open after {PATIENCE:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_taken_off_an_allow_list_by_sighup_is_hidden_and_refused() {
    let all = "[\"a__*\"]";
    let only_echo = "[\"a__echo\"]";
    // Bob may also see every server's `test_simple_prompt`: the marker below.
    let bob_all = "[\"a__*\", \"*__test_simple_prompt\"]";
    let gw = unwatched(&policy(&(server("a", "") + &clients(all, bob_all, ALICE))));
    let alice = Session::open(&gw, Some(ALICE)).await;
    let (_alice_raw, mut alice_stream) = Stream::open(&gw, ALICE).await;
    let (mut bob, mut bob_stream) = Stream::open(&gw, BOB).await;
    assert!(alice.tools().await.contains(&"a__pid".to_owned()));
    alice.pid("a").await;

    gw.write_policy(&policy(
        &(server("a", "") + &clients(only_echo, bob_all, ALICE)),
    ));
    gw.sighup();
    alice.heard(1).await;
    let tools = alice.tools().await;
    assert_eq!(tools, vec!["a__echo"], "alice sees only what she may call");
    let refused = alice.call("a__pid", json!({})).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("may not call")),
        "{refused:?}"
    );
    assert_eq!(
        alice
            .call("a__echo", json!({"text": "still"}))
            .await
            .unwrap(),
        "still"
    );
    assert_eq!(
        alice_stream.until("notifications/tools/list_changed").await,
        vec!["notifications/tools/list_changed"]
    );
    let bob_tools = bob.request("tools/list", json!({})).await;
    assert!(bob_tools.to_string().contains("a__pid"), "{bob_tools}");

    // A server added next changes bob's prompt list: that notification marks a point on his
    // stream before which alice's rule change must not have reached him.
    gw.write_policy(&policy(
        &(server("a", "") + &server("b", "") + &clients(only_echo, bob_all, ALICE)),
    ));
    gw.sighup();
    let before_marker = bob_stream.until("notifications/prompts/list_changed").await;
    assert!(
        !before_marker.contains(&"notifications/tools/list_changed".to_owned()),
        "bob heard of a change to alice's rules: {before_marker:?}"
    );

    // A rotated token ends the sessions the old one opened; the new token works.
    gw.write_policy(&policy(
        &(server("a", "") + &server("b", "") + &clients(only_echo, bob_all, ALICE_ROTATED)),
    ));
    gw.sighup();
    alice_stream.ends().await;
    let gone = alice.call("a__echo", json!({"text": "x"})).await;
    assert!(gone.is_err(), "the revoked session still works: {gone:?}");
    let again = Session::open(&gw, Some(ALICE_ROTATED)).await;
    assert_eq!(
        again.call("a__echo", json!({"text": "new"})).await.unwrap(),
        "new"
    );
    let r = bob.call_tool("a__echo", json!({"text": "bob"})).await;
    assert_eq!(
        r["result"]["content"][0]["text"], "bob",
        "bob's session stays: {r}"
    );
    again.client.cancel().await.ok();

    let log = stop_and_verify(gw);
    let r = reloads(log.path());
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r.iter().all(|(o, d)| o == "ok" && d["trigger"] == "sighup"));
    assert_eq!(r[0].1["clients"], json!(["alice"]));
    assert_eq!(r[1].1["servers"]["added"], json!(["b"]));
    assert_eq!(r[2].1["revoked"], json!(["alice"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policies_are_rejected_and_the_old_one_keeps_serving() {
    let good = policy(&server("a", ""));
    let gw = watched(&good);
    let s = Session::open(&gw, None).await;
    let before = s.tools().await;

    // Syntax error, seen by the file watch.
    let broken = format!("{good}\n[servers.b\nruntime = \"process\"\n");
    let line = 1 + broken.lines().position(|l| l == "[servers.b").unwrap();
    gw.write_policy(&broken);
    logged(&gw, "policy reload rejected", 1).await;
    assert!(
        gw.stderr().contains(&format!("policy.toml:{line}:")),
        "the diagnostic names file and line {line}: {}",
        gw.stderr()
    );
    assert_eq!(
        s.call("a__echo", json!({"text": "up"})).await.unwrap(),
        "up"
    );

    // Semantic errors (a server without a command, a rule for an unknown server): the file
    // watch rejects it, and so does SIGHUP.
    let semantic = format!(
        "{good}\n[servers.b]\nruntime = \"process\"\n\n[clients.anonymous]\nallow = [\"nope__*\"]\n"
    );
    gw.write_policy(&semantic);
    logged(&gw, "policy reload rejected", 2).await;
    gw.sighup();
    logged(&gw, "policy reload rejected", 3).await;
    let err = gw.stderr();
    assert!(
        err.contains("has runtime = \"process\" but no `command`"),
        "{err}"
    );
    assert!(
        err.contains("names server `nope`, which is not configured"),
        "{err}"
    );
    assert_eq!(s.tools().await, before, "the old catalog is still served");
    assert_eq!(
        s.call("a__echo", json!({"text": "up"})).await.unwrap(),
        "up"
    );
    assert_eq!(s.tool_changes(), 0);

    // Fixed: accepted. A listener setting in it waits for a restart; the rest applies.
    let fixed = policy(&(server("a", "") + &server("b", ""))).replace(
        "naming = \"prefix\"",
        "naming = \"prefix\"\nmax_sessions = 5",
    );
    gw.write_policy(&fixed);
    s.heard(1).await;
    assert_eq!(s.call("b__echo", json!({"text": "b"})).await.unwrap(), "b");
    logged(&gw, "needs a restart of the gateway", 1).await;
    s.client.cancel().await.ok();

    let log = stop_and_verify(gw);
    let r = reloads(log.path());
    let outcomes: Vec<(&str, &str)> = r
        .iter()
        .map(|(o, d)| (o.as_str(), d["trigger"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("rejected", "file"),
            ("rejected", "file"),
            ("rejected", "sighup"),
            ("ok", "file")
        ]
    );
    assert!(r[0].1["error"].as_str().unwrap().contains("invalid TOML"));
    assert!(r[2].1["error"].as_str().unwrap().contains("no `command`"));
    // Rejected files never became the policy in force.
    assert_eq!(r[3].1["sha256"]["from"], r[0].1["sha256"]["from"]);
    assert_eq!(r[3].1["requires_restart"], json!(["gateway.max_sessions"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_restarts_its_server_on_sighup() {
    let secret = |gw_dir: &Path, v: &str| std::fs::write(gw_dir.join("token"), v).unwrap();
    let body = server("a", "secrets = { TOKEN = \"file:{tmp}/token\" }") + &server("b", "");
    // The secret file must exist before the gateway starts its server.
    let dir = tempfile::tempdir().unwrap();
    let with_file = policy(&body).replace(
        "{tmp}/token",
        &dir.path().join("token").display().to_string(),
    );
    secret(dir.path(), "first-secret-value");
    let gw = unwatched(&with_file);
    let s = Session::open(&gw, None).await;
    // An echoed secret is redacted by name, and the gateway redacts the values the policy in
    // force names: `[REDACTED:TOKEN]` means the server holds the file's current value (an old
    // one would come back as it is).
    let token = || s.call("a__env_get", json!({"name": "TOKEN"}));
    assert_eq!(token().await.unwrap(), "[REDACTED:TOKEN]");
    let pid_b = s.pid("b").await;

    secret(dir.path(), "second-secret-value");
    gw.sighup();
    logged(&gw, "policy reloaded", 1).await;
    assert_eq!(token().await.unwrap(), "[REDACTED:TOKEN]");
    assert_eq!(s.pid("b").await, pid_b, "the other server kept running");
    s.client.cancel().await.ok();

    let log = stop_and_verify(gw);
    let r = reloads(log.path());
    assert_eq!(
        r[0].1["servers"]["restarted"],
        json!({"a": ["secret values"]})
    );
    let text = records(log.path())
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(
        !text.contains("first-secret-value") && !text.contains("second-secret-value"),
        "a secret value reached the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_server_restarts_and_a_removed_one_answers_its_call_in_flight() {
    let gw = unwatched(&policy(&(server("a", "") + &server("b", ""))));
    let s = Session::open(&gw, None).await;
    let (pid_a, pid_b) = (s.pid("a").await, s.pid("b").await);

    // `b` gets another argument: a new process; `a` is untouched.
    gw.write_policy(&policy(
        &(server("a", "") + &server("b", "args = [\"--changed\"]")),
    ));
    gw.sighup();
    logged(&gw, "policy reloaded", 1).await;
    let new_b = s.pid("b").await;
    assert_ne!(new_b, pid_b, "the changed server was restarted");
    wait_until("the replaced process exits", || async { !alive(pid_b) }).await;
    assert_eq!(s.pid("a").await, pid_a, "the unchanged server kept running");

    // A call in flight at `b` when `b` is removed still gets its answer.
    let slow = {
        let peer = s.client.peer().clone();
        tokio::spawn(async move {
            peer.call_tool(
                CallToolRequestParams::new("b__slow")
                    .with_arguments(json!({"ms": 1500}).as_object().cloned().unwrap()),
            )
            .await
        })
    };
    // The call record is durable before the request leaves for the server.
    wait_until("the slow call reaches b", || async {
        records(&audit_dir(&gw))
            .iter()
            .any(|r| r["kind"] == "call" && r["server"] == "b" && r["tool"] == "slow")
    })
    .await;
    gw.write_policy(&policy(&server("a", "")));
    gw.sighup();
    let answered = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the call in flight hung")
        .unwrap()
        .expect("the call in flight failed");
    let v = serde_json::to_value(&answered).unwrap();
    assert_eq!(v["content"][0]["text"], "done", "{v}");
    wait_until("the removed server's process exits", || async {
        !alive(new_b)
    })
    .await;
    assert_eq!(s.pid("a").await, pid_a);
    s.client.cancel().await.ok();

    let log = stop_and_verify(gw);
    let r = reloads(log.path());
    assert_eq!(r[0].1["servers"]["restarted"], json!({"b": ["process"]}));
    assert_eq!(r[1].1["servers"]["removed"], json!(["b"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_list_change_reaches_the_sessions_that_can_see_it() {
    let gw = unwatched(&policy(
        &(server("a", "")
            + &clients(
                "[\"a__*\"]",
                "[\"a__echo\", \"*__test_simple_prompt\"]",
                ALICE,
            )),
    ));
    let alice = Session::open(&gw, Some(ALICE)).await;
    let (_bob, mut bob_stream) = Stream::open(&gw, BOB).await;
    assert_eq!(
        alice.call("a__emit_list_changed", json!({})).await.unwrap(),
        "ok"
    );
    alice.heard(1).await;
    assert!(alice.tools().await.contains(&"a__extra_0".to_owned()));
    assert_eq!(
        alice.call("a__extra_0", json!({})).await.unwrap(),
        "extra_0"
    );
    // Bob may not see `extra_*`, so his list did not change. A server added afterwards changes
    // his prompt list (he may see every `test_simple_prompt`): the mark on his stream before
    // which nothing may have arrived.
    gw.write_policy(&policy(
        &(server("a", "")
            + &server("b", "")
            + &clients(
                "[\"a__*\"]",
                "[\"a__echo\", \"*__test_simple_prompt\"]",
                ALICE,
            )),
    ));
    gw.sighup();
    let before_marker = bob_stream.until("notifications/prompts/list_changed").await;
    assert!(
        !before_marker.contains(&"notifications/tools/list_changed".to_owned()),
        "bob heard of a tool he cannot see: {before_marker:?}"
    );
    alice.client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_servers_keep_or_replace_their_containers() {
    use common::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
    let scope = Scope::new("reload");
    let Some(rt) = runtime(&scope.name).await else {
        return;
    };
    let docker = |name: &str, extra: &str| {
        format!(
            "\n[servers.{name}]\nruntime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\"\nstartup_timeout = \"120s\"\nlimits = {{ memory = \"64m\", pids = 32 }}\n{extra}\n"
        )
    };
    let p1 = policy(&(docker("box", "") + &docker("keep", "")));
    let gw = Gateway::start_with(
        &p1,
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_NO_WATCH", "true"),
        ],
    );
    let s = Session::open(&gw, None).await;
    // Docker sets HOSTNAME to the first 12 hex digits of the container id.
    async fn host(s: &Session, server: &str) -> String {
        s.call(&format!("{server}__env_get"), json!({"name": "HOSTNAME"}))
            .await
            .unwrap()
    }
    async fn running(
        rt: &portcullis::sandbox::docker::DockerRuntime,
        scope: &str,
        server: &str,
    ) -> Vec<String> {
        containers_in(rt, scope)
            .await
            .into_iter()
            .filter(|(_, l)| l.get("io.portcullis.server").is_some_and(|s| s == server))
            .map(|(id, _)| id)
            .collect()
    }
    let (box1, keep1) = (host(&s, "box").await, host(&s, "keep").await);

    gw.write_policy(&policy(
        &(docker("box", "env = { CHANGED = \"1\" }") + &docker("keep", "")),
    ));
    gw.sighup();
    logged(&gw, "policy reloaded", 1).await;
    let box2 = host(&s, "box").await;
    assert_ne!(box2, box1, "the changed server runs in a new container");
    assert_eq!(
        host(&s, "keep").await,
        keep1,
        "the unchanged one keeps its container"
    );
    wait_until("the replaced container is removed", || async {
        !running(&rt, &scope.name, "box")
            .await
            .iter()
            .any(|id| id.starts_with(&box1))
    })
    .await;

    gw.write_policy(&policy(&docker("keep", "")));
    gw.sighup();
    logged(&gw, "policy reloaded", 2).await;
    wait_until("the removed server's container is removed", || async {
        running(&rt, &scope.name, "box").await.is_empty()
    })
    .await;
    assert_eq!(host(&s, "keep").await, keep1);
    s.client.cancel().await.ok();
    stop_and_verify(gw);
}
