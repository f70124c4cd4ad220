//! One client cannot lock the others out through sessions: each client has its own session
//! quota and creation rate, and when the gateway is full an idle session of the client holding
//! the most makes room. Over Streamable HTTP and the legacy HTTP+SSE transport.
//!
//! The policies here use only keys that existed before the quotas, so that the same tests run
//! against an older build (`PORTCULLIS_BIN`) show what they guard against.

mod common;

use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::{audit_records, audit_verify, http_get, token_hash, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "pcs_alice-session-quota-token-1111111111111111";
const BOB: &str = "pcs_bob-session-flood-token-222222222222222222";
const CAROL: &str = "pcs_carol-session-quota-token-33333333333333333";
const PATIENCE: Duration = Duration::from_secs(20);
/// Attempts of the flooding client.
const FLOOD: usize = 200;
/// Pause between two attempts of the flood: it lasts about a second, long enough to reach the
/// quota through the default creation rate (10/s after a burst of 20).
const FLOOD_PACE: Duration = Duration::from_millis(5);

/// `gateway.max_sessions = 50`, so each client's default quota is 25.
fn policy() -> String {
    policy_with(50)
}

fn policy_with(max_sessions: usize) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
max_sessions = {max_sessions}

[servers.fx]
runtime = "process"
command = "{{fixture}}"

[clients.alice]
token_sha256 = "{}"

[clients.bob]
token_sha256 = "{}"

[clients.carol]
token_sha256 = "{}"
"#,
        token_hash(ALICE),
        token_hash(BOB),
        token_hash(CAROL)
    )
}

fn client(gw: &Gateway, token: &str) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(token.to_owned());
    c
}

/// One `initialize`: the session id, or the HTTP status and the error.
async fn try_initialize(gw: &Gateway, token: &str) -> Result<Mcp, (u16, Value)> {
    let mut c = client(gw, token);
    let r = c
        .post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LATEST, "capabilities": {},
            "clientInfo": {"name": "quota-test", "version": "0"}}}),
        )
        .await;
    match r.headers.get("mcp-session-id") {
        Some(id) if r.status == 200 => {
            c.session = Some(id.to_str().unwrap().to_owned());
            c.protocol = LATEST.to_owned();
            Ok(c)
        }
        _ => Err((r.status, r.json())),
    }
}

/// A session for `token`, waiting out the creation rate (never the quota).
async fn open(gw: &Gateway, token: &str) -> Mcp {
    for _ in 0..100 {
        match try_initialize(gw, token).await {
            Ok(c) => return c,
            Err((429, e)) if e["error"]["code"] == -32014 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err((status, e)) => panic!("initialize refused: HTTP {status} {e}"),
        }
    }
    panic!("initialize still rate limited after 100 tries");
}

fn code(e: &Value) -> i64 {
    e["error"]["code"].as_i64().unwrap_or(0)
}

fn message(e: &Value) -> String {
    e["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn echo_works(c: &mut Mcp) {
    let r = c.call_tool("echo", json!({"text": "still served"})).await;
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("still served")),
        "{r}"
    );
}

fn metric(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
}

/// What a flood of `initialize` got: the sessions it opened and every refusal.
struct Flood {
    opened: Vec<Mcp>,
    refused: Vec<(u16, Value)>,
}

async fn flood(gw: &Gateway, token: &str) -> Flood {
    let mut out = Flood {
        opened: Vec::new(),
        refused: Vec::new(),
    };
    for _ in 0..FLOOD {
        match try_initialize(gw, token).await {
            Ok(c) => out.opened.push(c),
            Err(e) => out.refused.push(e),
        }
        tokio::time::sleep(FLOOD_PACE).await;
    }
    out
}

#[tokio::test]
async fn a_client_opening_200_sessions_cannot_stop_another_and_gets_its_own_error() {
    let mut gw = Gateway::start(&policy());
    let bob = flood(&gw, BOB).await;
    // The other client still opens a session and uses it.
    let mut alice = match try_initialize(&gw, ALICE).await {
        Ok(c) => c,
        Err((status, e)) => {
            panic!("alice could not open a session after bob's flood: HTTP {status} {e}")
        }
    };
    echo_works(&mut alice).await;

    assert_eq!(
        bob.opened.len(),
        25,
        "bob holds his quota, half of max_sessions"
    );
    let quota: Vec<&(u16, Value)> = bob
        .refused
        .iter()
        .filter(|(_, e)| code(e) == -32012)
        .collect();
    assert!(!quota.is_empty(), "bob never reached his quota");
    for (status, e) in &quota {
        assert_eq!(*status, 429, "{e}");
        let m = message(e);
        assert!(
            m.contains("client `bob` already has 25 open sessions")
                && m.contains("clients.bob.max_sessions"),
            "{m}"
        );
        assert_eq!(e["error"]["data"]["maxSessions"], 25, "{e}");
    }
    // The rest were early attempts over the creation rate.
    assert!(
        bob.refused
            .iter()
            .all(|(s, e)| code(e) == -32012 || (*s == 429 && code(e) == -32014)),
        "{:?}",
        bob.refused.iter().find(|(_, e)| code(e) != -32012)
    );
    let mut bob_session = bob.opened.into_iter().next().unwrap();
    echo_works(&mut bob_session).await;

    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    assert_eq!(
        metric(&metrics, "portcullis_client_sessions_open{client=\"bob\"}"),
        Some(25),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "portcullis_client_sessions_open{client=\"alice\"}"
        ),
        Some(1)
    );
    assert_eq!(
        metric(
            &metrics,
            "portcullis_refusals_total{reason=\"session_quota\"}"
        ),
        Some(quota.len() as i64)
    );

    // Audited once per burst: the first refusal, then one summary with the count.
    gw.terminate(PATIENCE);
    let dir = gw.dir().join("portcullis-audit");
    let records = audit_records(&dir);
    let over_quota: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "denied"
                && r["client"] == "bob"
                && r["method"] == "initialize"
                && r["error_code"] == -32012
        })
        .collect();
    assert_eq!(over_quota.len(), 2, "{over_quota:#?}");
    assert!(over_quota[0]["detail"]
        .as_str()
        .unwrap()
        .contains("client `bob` already has 25 open sessions"));
    let summary = over_quota[1]["detail"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("{} sessions of client `bob` refused", quota.len())),
        "{summary}"
    );
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "audit verify: {out}");
}

#[tokio::test]
async fn opening_sessions_faster_than_the_default_session_rate_is_refused_with_retry_after() {
    // Room for 100 sessions per client: only the rate can refuse.
    let gw = Gateway::start(&policy_with(200));
    let attempts = (0..40).map(|_| try_initialize(&gw, BOB));
    let results = futures_util::future::join_all(attempts).await;
    let opened = results.iter().filter(|r| r.is_ok()).count();
    let Some((status, e)) = results.into_iter().find_map(Result::err) else {
        panic!("40 sessions opened at once: no creation rate");
    };
    assert!(
        (20..40).contains(&opened),
        "the burst of 20 was not granted, or nothing was refused: {opened}"
    );
    assert_eq!((status, code(&e)), (429, -32014), "{e}");
    let m = message(&e);
    assert!(
        m.contains("client `bob` opens sessions too fast") && m.contains("10/s"),
        "{m}"
    );
    assert!(e["error"]["data"]["retryAfterSeconds"]
        .as_u64()
        .is_some_and(|s| s >= 1));
    // Another client's rate is its own.
    open(&gw, ALICE).await;
}

#[tokio::test]
async fn an_evicted_idle_session_gets_404_and_a_fresh_initialize_works() {
    let gw = Gateway::start(&policy());
    let mut bob = Vec::new();
    for _ in 0..25 {
        bob.push(open(&gw, BOB).await);
    }
    let mut alice = Vec::new();
    for _ in 0..25 {
        alice.push(open(&gw, ALICE).await);
    }
    // The gateway is full (50). alice's sessions are used after bob's, and one of bob's has a
    // call in flight and one a stream open: neither may be evicted.
    for a in &mut alice {
        a.request("ping", json!({})).await;
    }
    let mut calling = client(&gw, BOB);
    calling.session = bob[0].session.clone();
    let slow = tokio::spawn(async move { calling.call_tool("slow", json!({"ms": 3000})).await });
    let stream = bob[1]
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {BOB}"))
        .header("mcp-session-id", bob[1].session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // carol, under her quota, gets a session: bob's least recently used idle one made room.
    let mut carol = match try_initialize(&gw, CAROL).await {
        Ok(c) => c,
        Err((status, e)) => panic!("carol was locked out of a full gateway: HTTP {status} {e}"),
    };
    echo_works(&mut carol).await;
    let gone = bob[2]
        .post(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
        .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    for b in &bob[3..] {
        let r = b
            .post(&json!({"jsonrpc": "2.0", "id": 6, "method": "ping"}))
            .await;
        assert_eq!(r.status, 200, "only one session was evicted: {}", r.body);
    }
    let r = bob[1]
        .post(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
        .await;
    assert_eq!(r.status, 200, "a session with an open stream was evicted");
    let done = slow.await.unwrap();
    assert!(
        done.get("result").is_some(),
        "the call in flight was cut off: {done}"
    );
    // bob re-initializes, as a client told 404 does.
    let mut again = open(&gw, BOB).await;
    echo_works(&mut again).await;
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    assert_eq!(
        metric(
            &metrics,
            "portcullis_sessions_expired_total{reason=\"evicted\"}"
        ),
        Some(2),
        "{metrics}"
    );
    drop(stream);
}

/// A legacy HTTP+SSE session: the open `GET /sse` and where to POST.
struct Legacy {
    http: reqwest::Client,
    stream: reqwest::Response,
    buf: String,
    endpoint: String,
    token: String,
}

impl Legacy {
    async fn open(gw: &Gateway, token: &str) -> Result<Legacy, (u16, Value)> {
        let http = reqwest::Client::new();
        let stream = http
            .get(format!("{}/sse", gw.base))
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = stream.status().as_u16();
        if status != 200 {
            return Err((status, stream.json().await.unwrap_or(Value::Null)));
        }
        let mut s = Legacy {
            http,
            stream,
            buf: String::new(),
            endpoint: String::new(),
            token: token.to_owned(),
        };
        let (event, data) = s.next_event().await;
        assert_eq!(event, "endpoint");
        s.endpoint = format!("{}{}", gw.base, data);
        Ok(s)
    }

    async fn next_event(&mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if !data.is_empty() {
                    return (event, data);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.stream.chunk())
                .await
                .expect("no event within 20 s")
                .unwrap()
                .expect("the stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        let r = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loop {
            let (_, data) = self.next_event().await;
            let v: Value = serde_json::from_str(&data).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn a_client_holding_200_legacy_sse_streams_cannot_stop_another() {
    let gw = Gateway::start(&policy());
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..FLOOD {
        match Legacy::open(&gw, BOB).await {
            Ok(s) => held.push(s),
            Err(e) => refused.push(e),
        }
        tokio::time::sleep(FLOOD_PACE).await;
    }
    // Every one of bob's sessions has its stream open, so none may be evicted: only his quota
    // leaves room for others.
    let mut alice = match Legacy::open(&gw, ALICE).await {
        Ok(s) => s,
        Err((status, e)) => {
            panic!("alice could not open a legacy session after bob's flood: HTTP {status} {e}")
        }
    };
    let init = alice
        .request(
            1,
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "legacy-quota-test", "version": "0"}}),
        )
        .await;
    assert!(init.get("result").is_some(), "{init}");
    let r = alice
        .request(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "legacy"}}),
        )
        .await;
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("legacy")),
        "{r}"
    );
    let mut streamable = open(&gw, ALICE).await;
    echo_works(&mut streamable).await;

    assert_eq!(held.len(), 25);
    assert!(refused.iter().any(|(s, e)| *s == 429
        && code(e) == -32012
        && message(e).contains("client `bob` already has 25 open sessions")));
    assert!(refused
        .iter()
        .all(|(s, e)| *s == 429 && [-32012, -32014].contains(&code(e))));
}

/// A 2026-07-28 client has no sessions, but each `subscriptions/listen` stream is held open
/// like one: a client gets as many streams as its session quota (apart from its sessions), and
/// the next is refused with the same 429 / -32012, audited once per burst, while another client
/// still listens, and a closed stream makes room again.
#[tokio::test]
async fn a_client_holding_listen_streams_up_to_its_quota_cannot_stop_another() {
    use common::modern::{listen_for_tools, open_listen, read_for};
    // max_sessions = 8: each client's default quota is 4.
    let mut gw = Gateway::start(&policy_with(8));
    let bob = client(&gw, BOB);
    let mut streams = Vec::new();
    for id in 0..4 {
        let mut s = listen_for_tools(&bob, &gw.url, id).await;
        let ack = read_for(&mut s, "acknowledged", PATIENCE).await;
        assert!(ack.contains("acknowledged"), "{ack}");
        streams.push(s);
    }
    for id in 4..8 {
        let r = open_listen(&bob, &gw.url, id).await;
        assert_eq!(r.status(), 429);
        let e: Value = r.json().await.unwrap();
        assert_eq!(code(&e), -32012, "{e}");
        assert!(
            message(&e).contains("client `bob` already has 4 open subscriptions/listen streams"),
            "{e}"
        );
        assert_eq!(e["error"]["data"]["maxStreams"], 4, "{e}");
    }
    // Bob's sessions are counted apart: he still opens one, and alice still listens.
    let mut bob_session = open(&gw, BOB).await;
    echo_works(&mut bob_session).await;
    let alice = client(&gw, ALICE);
    let mut a = listen_for_tools(&alice, &gw.url, 1).await;
    assert!(read_for(&mut a, "acknowledged", PATIENCE)
        .await
        .contains("acknowledged"));
    // A stream bob closes makes room for a new one.
    drop(streams.pop());
    // (The gateway notices the close when it next writes to the stream: retry until then.)
    let deadline = Instant::now() + PATIENCE;
    let mut refusals = 4;
    loop {
        let r = open_listen(&bob, &gw.url, 9).await;
        if r.status() == 200 {
            break;
        }
        refusals += 1;
        assert!(Instant::now() < deadline, "a closed stream never made room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    assert_eq!(
        metric(
            &metrics,
            "portcullis_refusals_total{reason=\"listen_quota\"}"
        ),
        Some(refusals),
        "{metrics}"
    );

    gw.terminate(PATIENCE);
    let dir = gw.dir().join("portcullis-audit");
    let refused: Vec<Value> = audit_records(&dir)
        .into_iter()
        .filter(|r| {
            r["kind"] == "denied" && r["client"] == "bob" && r["method"] == "subscriptions/listen"
        })
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "the first refusal, then the burst's count: {refused:#?}"
    );
    assert!(
        refused[1]["detail"].as_str().unwrap().starts_with(&format!(
            "{refusals} subscriptions/listen streams of client `bob` refused"
        )),
        "{refused:#?}"
    );
}
