//! Trace export over TLS (`https://` endpoints, OTLP/HTTP and gRPC) to collectors the test runs
//! on loopback with a CA it makes: spans arrive when `ca_file` names that CA; with another CA,
//! or none (the system's store), or a collector that does not speak TLS, nothing is sent (not
//! in clear either), the failure is logged with the reason, and calls go on as before.

mod common;
mod otlp_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Gateway;
use otlp_support::{make_certs, traced_echo, Collector, Proto};

const TOKEN: &str = "Bearer otlp-tls-secret-Hn4q";

fn policy(endpoint: &str, proto: Proto, ca_file: Option<&Path>) -> String {
    let protocol = match proto {
        Proto::Http => "http/protobuf",
        Proto::Grpc => "grpc",
    };
    let ca = ca_file
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[telemetry]
endpoint = "{endpoint}"
protocol = "{protocol}"
timeout = "2s"
headers = {{ Authorization = "env:TELEMETRY_TLS_TOKEN" }}
{ca}
[servers.fixture]
runtime = "process"
command = "{{fixture}}"
"#
    )
}

fn start(policy: &str) -> Gateway {
    Gateway::start_with(policy, &[("TELEMETRY_TLS_TOKEN", TOKEN)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_that_ca_file_trusts_over_https_and_grpc() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(pki.path(), "collector");
    for (proto, trace) in [
        (Proto::Http, "1af7651916cd43dd8448eb211c80319c"),
        (Proto::Grpc, "2af7651916cd43dd8448eb211c80319c"),
    ] {
        let col = Collector::start_with(proto, Some((&cert, &key))).await;
        assert!(col.url.starts_with("https://"));
        let gw = start(&policy(&col.url, proto, Some(&ca)));
        traced_echo(&gw.url, trace).await;
        let span = col
            .wait_span(trace, "mcp tools/call", Duration::from_secs(20))
            .await;
        assert!(
            span.is_some(),
            "{proto:?}: no span over TLS; gateway log:\n{}",
            gw.stderr()
        );
        let g = col.got.lock().unwrap();
        assert!(
            !g.authorization.is_empty() && g.authorization.iter().all(|a| a == TOKEN),
            "{proto:?}: the header secret did not arrive"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_plain_collector_gets_nothing_and_the_failure_is_logged() {
    let pki = tempfile::tempdir().unwrap();
    let (_, cert, key) = make_certs(pki.path(), "collector");
    let (other_ca, _, _) = make_certs(pki.path(), "other");
    for proto in [Proto::Http, Proto::Grpc] {
        // (what, collector, ca_file, what the log must say)
        let cases = [
            (
                "another CA in ca_file",
                Collector::start_with(proto, Some((&cert, &key))).await,
                Some(other_ca.as_path()),
                "does not chain to the CAs in [telemetry] ca_file",
            ),
            (
                "the system's store",
                Collector::start_with(proto, Some((&cert, &key))).await,
                None,
                "name that CA's PEM file in [telemetry] ca_file",
            ),
            (
                "a collector in clear behind an https endpoint",
                Collector::start(proto).await,
                Some(other_ca.as_path()),
                "TLS with the collector `127.0.0.1` failed",
            ),
        ];
        for (what, col, ca, says) in cases {
            // The https URL of whatever listens there, TLS or not.
            let url = col.url.replacen("http://", "https://", 1);
            let gw = start(&policy(&url, proto, ca));
            let started = Instant::now();
            for _ in 0..5 {
                traced_echo(&gw.url, "3af7651916cd43dd8448eb211c80319c").await;
            }
            // Export is off the call path: five calls do not wait out five export timeouts (2 s).
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{proto:?}, {what}: calls took {:?}",
                started.elapsed()
            );
            gw.wait_for_log(
                "trace export to the collector failed",
                1,
                Duration::from_secs(20),
            );
            gw.wait_for_log(says, 1, Duration::from_secs(5));
            let g = col.got.lock().unwrap();
            assert!(g.connections > 0, "{proto:?}, {what}: never tried");
            assert!(
                g.bodies.is_empty() && g.authorization.is_empty(),
                "{proto:?}, {what}: the collector received a request"
            );
        }
    }
}
