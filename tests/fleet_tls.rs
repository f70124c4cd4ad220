//! Shared quotas over TLS: a real redis-server with only a `tls-port`, its certificate signed by
//! a CA this test makes with openssl; the gateway reaches it as `rediss://` trusting that CA
//! (`store_ca`), and refuses it (store error) when it trusts only the system roots.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::client::{Mcp, LATEST};
use common::fleet::{free_port, tool, wait_port, Proc};
use common::Gateway;
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test redis CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "redis.pem",
        ],
    );
}

fn policy(port: u16, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|p| format!("store_ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[limits]
store = "rediss://127.0.0.1:{port}/0"
{ca}store_timeout = "1s"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
rate = {{ quota = "2/min", burst = 2 }}
"#
    )
}

async fn codes(gw: &Gateway, calls: usize) -> Vec<Option<i64>> {
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let mut out = Vec::new();
    for _ in 0..calls {
        let r = c.call_tool("echo", json!({"text": "x"})).await;
        out.push(r["error"]["code"].as_i64());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_shared_through_a_tls_only_redis_trusting_its_ca() {
    let Some(redis_bin) = tool("redis-server") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    make_certs(tmp.path());
    let port = free_port();
    let d = |f: &str| tmp.path().join(f).display().to_string();
    let _redis = Proc(
        Command::new(redis_bin)
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                &d("redis.pem"),
                "--tls-key-file",
                &d("redis.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &d("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server with TLS"),
    );
    wait_port(port, "redis-server (TLS)");

    // Trusting the test CA: the quota (2) is counted in Redis; the third call is limited.
    let gw = Gateway::start(&policy(port, Some(&tmp.path().join("ca.pem"))));
    assert_eq!(codes(&gw, 3).await, vec![None, None, Some(-32014)]);
    let log = gw.stderr();
    assert!(!log.contains("QUOTA STORE DOWN"), "{log}");
    // A second gateway shares the count: its first call is already over the quota.
    let second = Gateway::start(&policy(port, Some(&tmp.path().join("ca.pem"))));
    let r = codes(&second, 1).await;
    assert_eq!(r, vec![Some(-32014)], "the quota is shared over TLS");

    // Trusting only the system roots, the same store is refused: calls get the store error.
    // (/ready is 503 for it, rightly: spawned without waiting for ready.)
    let untrusted = Gateway::spawn(&policy(port, None), &[]);
    let mut c = Mcp::new(&untrusted.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("echo", json!({"text": "x"})).await;
    assert_eq!(r["error"]["code"], -32014, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("unavailable"),
        "a store error, not a quota: {r}"
    );
}
