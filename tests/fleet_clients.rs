//! Real SDK clients through HAProxy in front of three replicas: the Python SDK in legacy mode
//! (tests/python/clients/fleet_legacy.py) and rmcp keep their sessions for their whole life;
//! killing the Python client's replica makes its session answer 404, the client opens a new one
//! and goes on, and rmcp's session on another replica is not disturbed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::fleet::{free_port, haproxy, tool, Proc};
use common::{fixture_policy, peer, repo_root, Gateway};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::json;

fn sessions(gws: &[Gateway]) -> Vec<u64> {
    gws.iter()
        .map(|g| match common::http_get(&format!("{}/health", g.base)) {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).unwrap()
                ["sessions"]
                .as_u64()
                .unwrap(),
            _ => 0,
        })
        .collect()
}

/// The replica whose session count grew between `before` and `after`.
fn grew(before: &[u64], after: &[u64]) -> usize {
    let grown: Vec<usize> = (0..before.len())
        .filter(|&i| after[i] > before[i])
        .collect();
    assert_eq!(grown.len(), 1, "one new session: {before:?} -> {after:?}");
    grown[0]
}

async fn echo(c: &rmcp::service::RunningService<rmcp::RoleClient, ()>, text: &str) -> String {
    let r = c
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"text": text}).as_object().cloned().unwrap()),
        )
        .await
        .expect("rmcp tools/call");
    serde_json::to_value(&r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rmcp_sessions_survive_haproxy_and_a_replica_dying() {
    let Some(haproxy_bin) = tool("haproxy") else {
        return;
    };
    let Some(python) = peer("venv/bin/python") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut gws: Vec<Gateway> = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .map(|n| Gateway::start_with(&fixture_policy(), &[("PORTCULLIS_REPLICA", n)]))
        .collect();
    let lb_port = free_port();
    let ports: Vec<u16> = gws.iter().map(Gateway::port).collect();
    let _lb = haproxy(&haproxy_bin, lb_port, &ports, tmp.path());
    let url = format!("http://127.0.0.1:{lb_port}/mcp");

    // The Python client: its session lands on one replica.
    let before = sessions(&gws);
    let mut py = Proc(
        Command::new(&python)
            .arg(repo_root().join("tests/python/clients/fleet_legacy.py"))
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python client"),
    );
    let mut to_py = py.0.stdin.take().unwrap();
    let (tx, from_py) = mpsc::channel::<String>();
    let out = py.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |rx: &mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the Python client answered")
    };
    let line = next(&from_py);
    assert!(line.starts_with("session 2025-"), "{line}");
    let py_replica = grew(&before, &sessions(&gws));
    writeln!(to_py, "call").unwrap();
    assert_eq!(next(&from_py), "ok py-1");

    // rmcp sessions until one lives on another replica than the Python client's.
    let mut rmcp_clients = Vec::new();
    let other = loop {
        let before = sessions(&gws);
        let c =
            ().serve(StreamableHttpClientTransport::from_uri(url.as_str()))
                .await
                .expect("rmcp connects through HAProxy");
        let at = grew(&before, &sessions(&gws));
        assert_eq!(echo(&c, "rmcp-0").await, "rmcp-0");
        rmcp_clients.push((at, c));
        if at != py_replica {
            break rmcp_clients.len() - 1;
        }
        assert!(
            rmcp_clients.len() < 4,
            "round robin reached another replica"
        );
    };
    for i in 1..=5 {
        let (_, c) = &rmcp_clients[other];
        assert_eq!(echo(c, &format!("rmcp-{i}")).await, format!("rmcp-{i}"));
        writeln!(to_py, "call").unwrap();
        assert_eq!(next(&from_py), format!("ok py-{}", i + 1));
    }

    // The Python client's replica dies: its session is gone (404), it opens a new one elsewhere.
    gws[py_replica].kill9();
    writeln!(to_py, "call").unwrap();
    let lost = next(&from_py);
    assert!(lost.starts_with("lost "), "{lost}");
    // The number depends on whether the SDK noticed the loss before or after reading the line.
    let recovered = next(&from_py);
    assert!(recovered.starts_with("recovered py-"), "{recovered}");
    let line = next(&from_py);
    assert!(line.starts_with("session "), "a fresh session: {line}");
    writeln!(to_py, "call").unwrap();
    let ok = next(&from_py);
    assert!(ok.starts_with("ok py-"), "{ok}");

    // rmcp on the surviving replica kept its session: no re-initialize, same answers.
    let (at, c) = &rmcp_clients[other];
    let before = sessions(&gws)[*at];
    assert_eq!(echo(c, "rmcp-after").await, "rmcp-after");
    assert_eq!(sessions(&gws)[*at], before, "the same session served it");
    writeln!(to_py, "quit").unwrap();
    drop(to_py);
    for (_, c) in rmcp_clients {
        c.cancel().await.ok();
    }
}
