//! The hop between replicas against a hostile client: two replicas with a fleet key on loopback,
//! and a recording relay the test puts on the hop to the owner (it advertises the relay as its
//! `--replica-url`), so a real hop can be replayed and altered.
//!
//! Refused: a forged or tampered handle (never forwarded), another client's handle (never
//! forwarded), a replayed hop, an altered hop, a hop without or with a wrong signature, and a
//! client calling the hop endpoint itself. Served: a genuine hop that reaches its owner by a
//! name outside the owner's `allowed_hosts` (a pod's DNS name on Kubernetes).

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::client::Mcp;
use common::modern::{request, sha};
use common::Gateway;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";
const HOP: &str = "portcullis-fleet-hop";

/// One request the relay saw: its headers (lower-case names) and body.
#[derive(Clone, Debug)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Relay {
    target: OnceLock<u16>,
    /// The Host the relay sends to the owner instead of `127.0.0.1:PORT` (a name the owner
    /// does not list in `allowed_hosts`, as a pod's DNS name on Kubernetes).
    host: OnceLock<String>,
    seen: Mutex<Vec<Seen>>,
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body) from `s`.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Seen)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((target, Seen { headers, body }))
}

/// Relays every request to the owner's real port and records it.
async fn relay(listener: tokio::net::TcpListener, relay: Arc<Relay>) {
    let http = reqwest::Client::new();
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let Some((path, seen)) = read_request(&mut s).await else {
            continue;
        };
        relay.seen.lock().unwrap().push(seen.clone());
        let port = *relay.target.get().unwrap();
        let (status, ct, body) = send_as(&http, port, &path, &seen, relay.host.get()).await;
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&body).await;
    }
}

/// Sends `seen` to `path` on the replica at `port`, as it was (Host aside).
async fn send(
    http: &reqwest::Client,
    port: u16,
    path: &str,
    seen: &Seen,
) -> (u16, String, Vec<u8>) {
    send_as(http, port, path, seen, None).await
}

/// [`send`] with `host` (when given) as the Host header.
async fn send_as(
    http: &reqwest::Client,
    port: u16,
    path: &str,
    seen: &Seen,
    host: Option<&String>,
) -> (u16, String, Vec<u8>) {
    let mut req = http.post(format!("http://127.0.0.1:{port}{path}"));
    if let Some(h) = host {
        req = req.header("host", h.as_str());
    }
    for (k, v) in &seen.headers {
        if !matches!(k.as_str(), "host" | "content-length" | "connection") {
            req = req.header(k, v);
        }
    }
    let r = req.body(seen.body.clone()).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

fn policy() -> String {
    common::fixture_policy().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nfleet_key = \"env:PORTCULLIS_TEST_FLEET_KEY\"\n",
    ) + &format!(
        "\n[clients.alice]\ntoken_sha256 = \"{}\"\n\n[clients.bob]\ntoken_sha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    )
}

fn client(url: &str, token: &str) -> Mcp {
    let mut c = Mcp::new(url);
    c.bearer = Some(token.to_owned());
    c
}

/// Alice's answered elicitation for a call that `owner` holds: a retry only `owner` can finish.
async fn held_retry(owner: &Gateway) -> Value {
    let elicit = json!({"name": "test_elicitation", "arguments": {"message": "who?"}});
    let caps = json!({"elicitation": {}});
    let first = request(
        &client(&owner.url, ALICE),
        1,
        "tools/call",
        elicit.clone(),
        caps,
    )
    .await
    .message();
    common::modern::answer_input(&first, &elicit, json!({"name": "Ada"}))
}

/// Two replicas with a fleet key; gw-1 advertises the recording relay (sending `host` as the
/// Host, when given) as its hop address.
async fn relayed_replicas(host: Option<&str>) -> (Gateway, Gateway, Arc<Relay>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Relay::default());
    if let Some(h) = host {
        seen.host.set(h.to_owned()).unwrap();
    }
    tokio::spawn(relay(listener, seen.clone()));
    let key = ("PORTCULLIS_TEST_FLEET_KEY", "a shared fleet secret");
    let p = policy();
    let one = Gateway::start_with(
        &p,
        &[
            ("PORTCULLIS_REPLICA", "gw-1"),
            ("PORTCULLIS_REPLICA_URL", relay_url.as_str()),
            key,
        ],
    );
    let two = Gateway::start_with(&p, &[("PORTCULLIS_REPLICA", "gw-2"), key]);
    seen.target.set(one.port()).unwrap();
    (one, two, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_hop_refuses_forgeries_replays_and_direct_calls() {
    let (one, two, seen) = relayed_replicas(None).await;

    let caps = json!({"elicitation": {}});
    let elicit = json!({"name": "test_elicitation", "arguments": {"message": "who?"}});
    let alice1 = client(&one.url, ALICE);
    let alice2 = client(&two.url, ALICE);
    let bob2 = client(&two.url, BOB);
    let start = |id| {
        let (alice1, elicit, caps) = (&alice1, elicit.clone(), caps.clone());
        async move {
            let first = request(alice1, id, "tools/call", elicit.clone(), caps)
                .await
                .message();
            common::modern::answer_input(&first, &elicit, json!({"name": "Ada"}))
        }
    };
    let hops = || seen.seen.lock().unwrap().len();

    // A tampered handle and another client's handle are refused where they land, unforwarded.
    let retry = start(1).await;
    let mut tampered = retry.clone();
    let t = retry["requestState"].as_str().unwrap();
    let mid = t.len() / 3;
    let flipped = if &t[mid..mid + 1] == "A" { "B" } else { "A" };
    tampered["requestState"] = json!(format!("{}{flipped}{}", &t[..mid], &t[mid + 1..]));
    let r = request(&alice2, 2, "tools/call", tampered, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("requestState refused"), "{}", r.body);
    let r = request(&bob2, 3, "tools/call", retry.clone(), caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("another client"), "{}", r.body);
    assert_eq!(hops(), 0, "nothing was forwarded");

    // The genuine retry on gw-2 is forwarded to gw-1 and answered there.
    let r = request(&alice2, 4, "tools/call", retry, caps.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.message()["result"]["content"].is_array(), "{}", r.body);
    assert_eq!(hops(), 1);
    let hop = seen.seen.lock().unwrap()[0].clone();
    assert!(hop.headers.iter().any(|(k, _)| k == HOP), "{hop:?}");

    let http = reqwest::Client::new();
    let direct = |s: &Seen| {
        let (http, s) = (http.clone(), s.clone());
        let port = one.port();
        async move { send(&http, port, "/_fleet/mcp", &s).await }
    };
    let refused = |(status, _, body): (u16, String, Vec<u8>), why: &str| {
        let body = String::from_utf8_lossy(&body).to_string();
        assert_eq!(status, 403, "{why}: {body}");
        body
    };
    // Replayed as it was.
    let body = refused(direct(&hop).await, "replay");
    assert!(body.contains("already used"), "{body}");
    // Altered: another body, or another client's credentials, under the hop's signature.
    let mut other_body = hop.clone();
    let mut v: Value = serde_json::from_slice(&hop.body).unwrap();
    v["id"] = json!(99);
    other_body.body = serde_json::to_vec(&v).unwrap();
    let body = refused(direct(&other_body).await, "altered body");
    assert!(body.contains("does not verify"), "{body}");
    let mut other_client = hop.clone();
    for (k, v) in other_client.headers.iter_mut() {
        if k == "authorization" {
            *v = format!("Bearer {BOB}");
        }
    }
    refused(direct(&other_client).await, "another client");
    // A signature made without the fleet key.
    let mut forged = hop.clone();
    for (k, v) in forged.headers.iter_mut() {
        if k == HOP {
            let (head, _) = v.rsplit_once('.').unwrap();
            *v = format!("{head}.{}", "A".repeat(43));
        }
    }
    refused(direct(&forged).await, "forged signature");
    // A client calling the hop endpoint itself, with its own valid token and a fresh retry.
    let fresh = start(5).await;
    let mut own = hop.clone();
    own.headers.retain(|(k, _)| k != HOP);
    own.body = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": fresh
    }))
    .unwrap();
    let body = refused(direct(&own).await, "no signature");
    assert!(body.contains("no fleet hop signature"), "{body}");
    assert_eq!(hops(), 1, "no refused request went anywhere");
}

/// An owner that answers a hop with an event stream: a progress notification at once, the
/// result only when the test says so (`release`).
async fn streaming_owner(
    listener: tokio::net::TcpListener,
    release: Arc<tokio::sync::Notify>,
    seen: Arc<Relay>,
) {
    let Ok((mut s, _)) = listener.accept().await else {
        return;
    };
    let Some((_, hop)) = read_request(&mut s).await else {
        return;
    };
    seen.seen.lock().unwrap().push(hop.clone());
    let id = serde_json::from_slice::<Value>(&hop.body).unwrap()["id"].clone();
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": "p1", "progress": 1, "message": "first half done"}});
    let result = json!({"jsonrpc": "2.0", "id": id,
        "result": {"content": [{"type": "text", "text": "both halves done"}]}});
    // No length: the stream ends when the owner closes the connection.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s
        .write_all(format!("event: message\ndata: {progress}\n\n").as_bytes())
        .await;
    let _ = s.flush().await;
    release.notified().await;
    let _ = s
        .write_all(format!("event: message\ndata: {result}\n\n").as_bytes())
        .await;
    let _ = s.shutdown().await;
}

/// The owner's answer is relayed as it comes: the client reads the owner's first event while
/// the owner still holds back its result (a buffering hop would show nothing until the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_streamed_answer_reaches_the_client_as_it_comes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let owner_url = format!("http://{}", listener.local_addr().unwrap());
    let key = ("PORTCULLIS_TEST_FLEET_KEY", "a shared fleet secret");
    let p = policy();
    // gw-1 holds the call and advertises the scripted owner as its address.
    let one = Gateway::start_with(
        &p,
        &[
            ("PORTCULLIS_REPLICA", "gw-1"),
            ("PORTCULLIS_REPLICA_URL", owner_url.as_str()),
            key,
        ],
    );
    let two = Gateway::start_with(&p, &[("PORTCULLIS_REPLICA", "gw-2"), key]);
    let release = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Relay::default());
    tokio::spawn(streaming_owner(listener, release.clone(), seen.clone()));

    let caps = json!({"elicitation": {}});
    let retry = held_retry(&one).await;

    let mut req = reqwest::Client::new()
        .post(&two.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {ALICE}"))
        .body(common::modern::body(2, "tools/call", retry, caps));
    for (k, v) in common::modern::headers("tools/call", Some("test_elicitation")) {
        req = req.header(k, v);
    }
    // Bounded: a hop that buffers answers only once the owner's result is in, which here
    // never comes before the client has read the first event.
    let mut resp = tokio::time::timeout(Duration::from_secs(20), req.send())
        .await
        .expect("no answer within 20 s while the owner held back its result: the hop buffered it")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let early =
        common::modern::read_for(&mut resp, "first half done", Duration::from_secs(20)).await;
    assert!(
        early.contains("first half done") && !early.contains("both halves done"),
        "the owner's first event did not arrive before its result: {early:?}"
    );
    release.notify_one();
    let rest =
        common::modern::read_for(&mut resp, "both halves done", Duration::from_secs(20)).await;
    assert!(rest.contains("both halves done"), "{rest:?}");
    assert_eq!(seen.seen.lock().unwrap().len(), 1, "one hop to the owner");
}

/// On Kubernetes a replica advertises its pod's DNS name (`POD.portcullis-peers.NS.svc`), which
/// no `allowed_hosts` list can name for a Deployment's random pod names. A signed hop is served
/// whatever Host it came by; an unsigned request by that name, on the hop path or on `/mcp`,
/// and a hop carrying a web page's Origin, are still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_hop_is_served_under_the_owners_pod_name() {
    const POD: &str = "portcullis-7f9c-x2x1.portcullis-peers.tools.svc:8811";
    let (one, two, seen) = relayed_replicas(Some(POD)).await;

    let caps = json!({"elicitation": {}});
    let retry = held_retry(&one).await;
    let r = request(
        &client(&two.url, ALICE),
        2,
        "tools/call",
        retry,
        caps.clone(),
    )
    .await;
    assert_eq!(
        r.status, 200,
        "the hop under the pod's name was refused: {}",
        r.body
    );
    assert!(r.message()["result"]["content"].is_array(), "{}", r.body);
    assert_eq!(seen.seen.lock().unwrap().len(), 1, "one hop to the owner");

    // The same name without a signature: refused on /mcp (Host) and on the hop path.
    let http = reqwest::Client::new();
    let pod = POD.to_owned();
    let ask = |path: &'static str, origin: Option<&'static str>| {
        let (http, pod, port) = (http.clone(), pod.clone(), one.port());
        async move {
            let mut req = http
                .post(format!("http://127.0.0.1:{port}{path}"))
                .header("host", pod)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("authorization", format!("Bearer {ALICE}"));
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let r = req
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = ask("/mcp", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is not allowed"), "{body}");
    let (status, body) = ask("/_fleet/mcp", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no fleet hop signature"), "{body}");
    let (status, body) = ask("/_fleet/mcp", Some("https://evil.example")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
}
