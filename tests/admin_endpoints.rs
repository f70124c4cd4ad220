//! `/ready` and `/metrics` name every server, tool and client: open on a loopback listener,
//! behind a client token on any other, or moved to `gateway.admin_listen` (loopback only).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{http_get, token_hash, Gateway};
use http::{header, Request, StatusCode};
use http_body_util::Full;
use portcullis::access::Access;
use portcullis::downstream::InProcess;
use portcullis::router::audit_trail::AuditTrail;
use portcullis::router::Router;
use portcullis::sandbox::firewall::Firewall;
use portcullis::sandbox::process::ProcessRuntime;
use portcullis::sandbox::Runtimes;

const TOKEN: &str = "pcs_metrics-reader-token-4444444444444444444";

fn clients() -> String {
    format!(
        "\n[clients.ops]\ntoken_sha256 = \"{}\"\n",
        token_hash(TOKEN)
    )
}

async fn get(gw: &InProcess, path: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::get(path).header(header::HOST, "127.0.0.1:8811");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    gw.handle(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .status()
}

/// The request handler of a gateway whose listener is not loopback, without binding it: the
/// rule depends on the configured address, and this test opens no port to the network.
#[tokio::test]
async fn off_loopback_they_need_a_client_token() {
    let text = format!(
        "[gateway]\nlisten = \"0.0.0.0:8811\"\n\n[gateway.tls]\ncert = \"unused.pem\"\nkey = \"unused.key\"\n{}",
        clients()
    );
    let policy = portcullis::policy::parse(&text, "public.toml").unwrap();
    let access = Arc::new(Access::from_policy(&policy).unwrap());
    let runtimes = Runtimes {
        process: Arc::new(ProcessRuntime::new(Firewall::new(&policy.egress))),
        docker: None,
    };
    let trail = AuditTrail::default();
    let router = Router::start(&policy, Arc::new(runtimes), access.clone(), trail.clone());
    let gw = InProcess::new(&policy.gateway, router, access, trail);
    for path in ["/ready", "/metrics"] {
        assert_eq!(
            get(&gw, path, None).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            get(&gw, path, Some("pcs_wrong")).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(get(&gw, path, Some(TOKEN)).await, StatusCode::OK, "{path}");
    }
    assert_eq!(
        get(&gw, "/health", None).await,
        StatusCode::OK,
        "liveness says nothing"
    );
}

#[test]
fn on_loopback_they_stay_open() {
    let gw = Gateway::start(&(common::fixture_policy() + &clients()));
    for path in ["/ready", "/metrics"] {
        let (status, body) = http_get(&format!("{}{path}", gw.base)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
}

fn free_loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn admin_listen_takes_them_off_the_main_listener() {
    let port = free_loopback_port();
    let policy = common::fixture_policy().replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{port}\"\n"),
    ) + &clients();
    let gw = Gateway::spawn(&policy, &[]);
    let admin = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_get(&format!("{admin}/ready")).map_or(true, |(s, _)| s != 200) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, body) = http_get(&format!("{admin}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("portcullis_"), "{body}");
    for path in ["/ready", "/metrics"] {
        let (status, body) = http_get(&format!("{}{path}", gw.base)).unwrap();
        assert_eq!(status, 404, "{path}");
        assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    }
    assert_eq!(http_get(&format!("{}/health", gw.base)).unwrap().0, 200);
    assert_eq!(
        http_get(&format!("{admin}/mcp")).unwrap().0,
        404,
        "admin serves no MCP"
    );
}

#[test]
fn admin_listen_off_loopback_is_refused() {
    let err = portcullis::policy::parse("[gateway]\nadmin_listen = \"0.0.0.0:9811\"\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.toml:2:16") && err.contains("not a loopback address"),
        "{err}"
    );
}
