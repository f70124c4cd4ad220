//! A draining replica (SIGTERM) opens no new session, not even on a connection that was open
//! before the drain began (a load balancer keeps connections to its backends alive): it answers
//! 503 with `Retry-After` and closes, so the session opens on another replica.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::client::{Mcp, LATEST};
use common::Gateway;
use serde_json::json;

/// Sends one HTTP/1.1 request on `s` (kept alive) and returns the status line and the rest.
fn exchange(s: &mut TcpStream, port: u16, head: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{head} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    // Enough of the answer to judge it: the head and a first piece of the body.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before an answer");
        got.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(100));
    s.set_nonblocking(true).unwrap();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    s.set_nonblocking(false).unwrap();
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_opens_no_session_on_a_connection_open_before() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut gw = Gateway::start(&common::fixture_policy());
    let port = gw.port();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}
    }})
    .to_string();
    // Two connections opened before the drain; each opens a session while the replica serves.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, text) = exchange(&mut kept, port, "POST /mcp", &init);
    assert_eq!(status, 200, "{text}");
    // A call in flight keeps the draining replica alive while the connections are tried.
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let pending = tokio::spawn(async move { c.call_tool("slow", json!({"ms": 2500})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(gw.pid() as i32), Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, text) = exchange(&mut kept, port, "POST /mcp", &init);
    assert_eq!(status, 503, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{text}");
    assert!(lower.contains("connection: close"), "{text}");
    assert!(text.contains("shutting down"), "{text}");
    let (status, text) = exchange(&mut sse, port, "GET /sse", "");
    assert_eq!(status, 503, "legacy SSE too: {text}");

    let r = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the call in flight was answered")
        .unwrap();
    assert_eq!(common::client::tool_text(&r), "done", "{r}");
    let status = gw.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
