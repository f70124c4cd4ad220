//! The hop between replicas over TLS: replicas on loopback with `[gateway.tls]` (a certificate
//! for 127.0.0.1 from a CA this test makes with openssl) advertise `https://` URLs; a held
//! retry that lands on another replica is forwarded to its owner over TLS trusting
//! `[gateway] fleet_ca`, and fails closed (502 with the reason, nothing sent in clear) when
//! the owner's certificate is not trusted or the owner does not speak TLS.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::client::Raw;
use common::modern::{self, sha};
use common::Gateway;
use serde_json::{json, Value};

const ALICE: &str = "alice-token-0123456789";
const KEY: (&str, &str) = ("PORTCULLIS_TEST_FLEET_KEY", "a shared fleet secret");

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

/// A CA `{name}-ca.pem` and, when `leaf`, a certificate `{name}.pem`/`{name}.key` for
/// 127.0.0.1 signed by it, in `dir`.
fn make_ca(dir: &Path, name: &str, leaf: bool) {
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let subj = format!("/CN=test fleet CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days", "2", "-subj", &subj, "-keyout", &ca_key, "-out", &ca,
    ]);
    openssl(dir, &args);
    if !leaf {
        return;
    }
    let (csr, key, pem) = (
        format!("{name}.csr"),
        format!("{name}.key"),
        format!("{name}.pem"),
    );
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr]);
    openssl(dir, &args);
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
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &pem,
        ],
    );
}

/// A replica's policy: TLS listener with the fleet's certificate, the fleet key, and
/// `fleet_ca` when given.
fn policy(dir: &Path, fleet_ca: Option<&str>) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    let ca = fleet_ca
        .map(|f| format!("fleet_ca = \"{}\"\n", d(f)))
        .unwrap_or_default();
    common::fixture_policy().replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!(
            "listen = \"127.0.0.1:0\"\nfleet_key = \"env:{}\"\n{ca}\n[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            KEY.0,
            d("fleet.pem"),
            d("fleet.key")
        ),
    ) + &format!("\n[clients.alice]\ntoken_sha256 = \"{}\"\n", sha(ALICE))
}

/// A conforming 2026-07-28 request to `url` over TLS trusting `ca` (reqwest here is built
/// without TLS; curl is what the other TLS listener tests use).
fn request(url: &str, ca: &Path, id: u64, method: &str, params: Value) -> Raw {
    let caps = json!({"elicitation": {}});
    let name = params["name"].as_str().map(str::to_owned);
    let body = modern::body(id, method, params, caps);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-X", "POST", "--cacert"])
        .arg(ca)
        .args(["-o", "-", "-w", "\n%{http_code} %{content_type}"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", "accept: application/json, text/event-stream"])
        .args(["-H", &format!("authorization: Bearer {ALICE}")]);
    for (k, v) in modern::headers(method, name.as_deref()) {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.args(["-d", &body]).arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = ct.trim().parse() {
        headers.insert("content-type", v);
    }
    Raw {
        status: code.trim().parse().unwrap_or(0),
        headers,
        body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Starts an elicitation on `url` and returns the retry that answers it (its `requestState`
/// names the replica that holds the call).
fn held_retry(url: &str, ca: &Path, id: u64) -> Value {
    let elicit = json!({"name": "test_elicitation", "arguments": {"message": "who?"}});
    let first = request(url, ca, id, "tools/call", elicit.clone());
    assert_eq!(first.status, 200, "{}", first.body);
    modern::answer_input(&first.message(), &elicit, json!({"name": "Ada"}))
}

/// A TCP listener that records whatever a client sends first, then hangs up: what a hop to
/// it would have put on the wire.
fn sniffer() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    (port, seen)
}

#[test]
fn a_held_retry_reaches_its_owner_over_tls_and_an_untrusted_owner_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_ca(dir, "fleet", true);
    make_ca(dir, "other", false);
    let ca = dir.join("fleet-ca.pem");
    let trusting = policy(dir, Some("fleet-ca.pem"));

    let one = Gateway::start_with(&trusting, &[("PORTCULLIS_REPLICA", "gw-1"), KEY]);
    let two = Gateway::start_with(&trusting, &[("PORTCULLIS_REPLICA", "gw-2"), KEY]);
    assert!(one.url.starts_with("https://"), "{}", one.url);

    // The retry lands on gw-2; gw-1 holds the call and answers it over the TLS hop.
    let retry = held_retry(&one.url, &ca, 1);
    let r = request(&two.url, &ca, 2, "tools/call", retry);
    assert_eq!(r.status, 200, "forwarded over TLS: {}", r.body);
    let m = r.message();
    assert!(m["result"]["content"].is_array(), "{m}");
    assert!(modern::text(&m).contains("Ada"), "{m}");

    // A replica trusting another CA refuses the owner's certificate: 502 naming the fix.
    let wrong = Gateway::start_with(
        &policy(dir, Some("other-ca.pem")),
        &[("PORTCULLIS_REPLICA", "gw-3"), KEY],
    );
    let retry = held_retry(&one.url, &ca, 3);
    let r = request(&wrong.url, &ca, 4, "tools/call", retry.clone());
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("gw-1"), "names the owner: {}", r.body);
    assert!(
        r.body.contains("certificate") && r.body.contains("fleet_ca"),
        "says why and what to fix: {}",
        r.body
    );
    // Without fleet_ca only the system's roots are trusted: refused too, with the hint.
    let system = Gateway::start_with(&policy(dir, None), &[("PORTCULLIS_REPLICA", "gw-4"), KEY]);
    let r = request(&system.url, &ca, 5, "tools/call", retry.clone());
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("[gateway] fleet_ca"), "{}", r.body);
    // The call refused elsewhere is still held at its owner, which answers it directly.
    let r = request(&one.url, &ca, 6, "tools/call", retry);
    assert_eq!(r.status, 200, "{}", r.body);

    // An owner advertising https:// that does not speak TLS: the hop's first bytes are a TLS
    // handshake, never the request, and the client gets 502.
    let (port, seen) = sniffer();
    let url = format!("https://127.0.0.1:{port}");
    let owner = Gateway::start_with(
        &trusting,
        &[
            ("PORTCULLIS_REPLICA", "gw-5"),
            ("PORTCULLIS_REPLICA_URL", url.as_str()),
            KEY,
        ],
    );
    let retry = held_retry(&owner.url, &ca, 7);
    let r = request(&two.url, &ca, 8, "tools/call", retry);
    assert_eq!(r.status, 502, "{}", r.body);
    let bytes = seen.lock().unwrap().clone();
    assert!(!bytes.is_empty(), "the hop was attempted");
    assert_eq!(bytes[0], 0x16, "a TLS handshake record first: {bytes:02x?}");
    let clear = String::from_utf8_lossy(&bytes);
    assert!(
        !clear.contains("POST") && !clear.contains(ALICE) && !clear.contains("requestState"),
        "nothing of the request in clear: {clear}"
    );
}

#[test]
fn a_fleet_ca_that_cannot_be_read_stops_the_replica_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_ca(dir, "fleet", true);
    std::fs::write(dir.join("empty.pem"), "no certificate here\n").unwrap();
    let p = dir.join("policy.toml");
    let text = policy(dir, Some("empty.pem"))
        .replace("{fixture}", &common::fixture_bin().display().to_string());
    std::fs::write(&p, text).unwrap();
    let out = Command::new(common::gateway_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&p)
        .env(KEY.0, KEY.1)
        .env("PORTCULLIS_REPLICA", "gw-1")
        .env("PORTCULLIS_STATE_DIR", dir.join("state"))
        .output()
        .expect("run portcullis serve");
    assert!(!out.status.success(), "must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fleet_ca") && err.contains("empty.pem"),
        "names the key and the file: {err}"
    );
}
