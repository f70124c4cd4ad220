//! `[telemetry]` on reload: after SIGHUP, spans go to the new collector (another protocol, too)
//! and no longer to the old one; removing the section stops them; a reload whose header secret
//! cannot be read is rejected and the tracer in force stays; the audit record names the new
//! endpoint, never a header value.

mod common;
mod otlp_support;

use std::time::Duration;

use common::{audit_records, Gateway};
use otlp_support::{traced_echo, Collector, Proto};
use serde_json::Value;

const TOKEN: &str = "Bearer otlp-reload-secret-8Jt2";
const A: &str = "a1f7651916cd43dd8448eb211c80319c";
const B: &str = "b1f7651916cd43dd8448eb211c80319c";
const C: &str = "c1f7651916cd43dd8448eb211c80319c";
const D: &str = "d1f7651916cd43dd8448eb211c80319c";

fn policy(telemetry: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

{telemetry}

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
"#
    )
}

fn section(endpoint: &str, protocol: &str, header_env: &str) -> String {
    format!(
        "[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\ntimeout = \"1s\"\nheaders = {{ Authorization = \"env:{header_env}\" }}\n"
    )
}

fn reload(gw: &Gateway, policy: &str, times: usize, says: &str) {
    gw.write_policy(policy);
    gw.sighup();
    gw.wait_for_log(says, times, Duration::from_secs(30));
}

fn reload_details(gw: &Gateway) -> Vec<(String, Value)> {
    audit_records(&gw.dir().join("portcullis-audit"))
        .into_iter()
        .filter(|r| r["kind"] == "policy_reload")
        .map(|r| {
            let d = serde_json::from_str(r["detail"].as_str().unwrap()).unwrap();
            (r["outcome"].as_str().unwrap().to_owned(), d)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_spans_to_the_new_collector_and_can_stop_them() {
    let old = Collector::start(Proto::Http).await;
    let new = Collector::start(Proto::Grpc).await;
    let wait = Duration::from_secs(20);
    let gw = Gateway::start_with(
        &policy(&section(&old.url, "http/protobuf", "RELOAD_TOKEN")),
        &[("RELOAD_TOKEN", TOKEN), ("PORTCULLIS_NO_WATCH", "true")],
    );
    traced_echo(&gw.url, A).await;
    assert!(old.wait_span(A, "mcp tools/call", wait).await.is_some());

    // To another collector, over gRPC.
    reload(
        &gw,
        &policy(&section(&new.url, "grpc", "RELOAD_TOKEN")),
        1,
        "policy reloaded",
    );
    traced_echo(&gw.url, B).await;
    assert!(
        new.wait_span(B, "mcp tools/call", wait).await.is_some(),
        "no span at the new collector after the reload; log:\n{}",
        gw.stderr()
    );
    assert!(
        old.spans_of(B).is_empty(),
        "the old collector still gets spans"
    );
    assert!(new
        .got
        .lock()
        .unwrap()
        .authorization
        .iter()
        .all(|a| a == TOKEN));

    // A header secret that cannot be read: rejected, the new collector stays in force.
    reload(
        &gw,
        &policy(&section(&old.url, "http/protobuf", "RELOAD_TOKEN_UNSET")),
        1,
        "policy reload rejected",
    );
    traced_echo(&gw.url, C).await;
    assert!(new.wait_span(C, "mcp tools/call", wait).await.is_some());
    assert!(old.spans_of(C).is_empty());

    // Without [telemetry]: no spans anywhere.
    reload(&gw, &policy(""), 2, "policy reloaded");
    traced_echo(&gw.url, D).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(old.spans_of(D).is_empty() && new.spans_of(D).is_empty());

    let details = reload_details(&gw);
    let outcomes: Vec<&str> = details.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["ok", "rejected", "ok"], "{details:?}");
    assert_eq!(details[0].1["telemetry"]["endpoint"], new.url.as_str());
    assert!(details[1].1["error"]
        .as_str()
        .unwrap()
        .contains("[telemetry]"));
    assert!(details[2].1["telemetry"].is_object(), "{details:?}");
    assert_eq!(details[2].1["telemetry"]["endpoint"], Value::Null);
    let text = serde_json::to_string(&details).unwrap();
    assert!(!text.contains(TOKEN), "a header value was audited");
}
