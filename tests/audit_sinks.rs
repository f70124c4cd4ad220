//! SIEM sinks against real receivers on 127.0.0.1: rsyslogd (plain TCP and TLS via gtls) and an
//! HTTP receiver (Splunk HEC / HMAC webhook). Each receiver is stopped mid-stream and restarted:
//! every record arrives, duplicates only as the same `(log_id, seq)`.

mod audit_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_support::receiver::Receiver;
use audit_support::*;
use portcullis::audit::sinks::{SinkOptions, Sinks};
use portcullis::audit::{AuditLog, Seq};
use portcullis::policy::{AuditSink, HttpSinkAuth, SecretRef, SinkFormat, SinkKind};

fn opts() -> SinkOptions {
    SinkOptions {
        poll: Duration::from_millis(50),
        batch_records: 40,
        batch_bytes: 64 << 10,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        confirm_after: Duration::from_millis(600),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("receiver on port {port} did not come up");
}

/// Appends `n` records in small bursts, calling `mid` once after `n/2`.
async fn append_stream(log: &AuditLog, n: u64, mut mid: impl FnMut()) -> Vec<Seq> {
    let mut seqs = Vec::new();
    for i in 0..n {
        seqs.push(log.append(event(i)).await.expect("append"));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if i == n / 2 {
            mid();
        }
    }
    seqs
}

/// Every seq 0..=last present; duplicates are byte-identical copies of one record.
fn check_delivery(got: &[(String, u64, String)], last: u64) {
    let mut by_key: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (id, seq, body) in got {
        by_key
            .entry((id.clone(), *seq))
            .or_default()
            .insert(body.clone());
    }
    let seqs: BTreeSet<u64> = by_key.keys().map(|(_, s)| *s).collect();
    let missing: Vec<u64> = (0..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    for (k, bodies) in &by_key {
        assert_eq!(
            bodies.len(),
            1,
            "different payloads under one dedupe key {k:?}"
        );
    }
    let logs: BTreeSet<&String> = by_key.keys().map(|(id, _)| id).collect();
    assert_eq!(logs.len(), 1);
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(done(), "timed out waiting for {what}");
}

// ---------------------------------------------------------------- rsyslogd

struct Rsyslog {
    conf: PathBuf,
    pid: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.pid);
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rsyslogd_available() -> bool {
    let ok = Command::new("rsyslogd")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "rsyslogd is missing: `apt-get install rsyslog rsyslog-gnutls` (tests/setup/install-deps.sh)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPING: {msg} !!!!!!!!\n");
    }
    ok
}

/// Writes an rsyslog config that listens on `port` (TLS when `tls` holds CA/cert/key) and
/// writes `%structured-data% %msg%` lines to `out`.
fn rsyslog_conf(dir: &Path, port: u16, out: &Path, tls: Option<(&Path, &Path, &Path)>) -> Rsyslog {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let mut c = format!(
        "global(workDirectory=\"{}\" maxMessageSize=\"64k\")\n",
        work.display()
    );
    match tls {
        Some((ca, cert, key)) => {
            c.push_str(&format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n",
                ca.display(), cert.display(), key.display()
            ));
            c.push_str("module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n");
        }
        None => c.push_str("module(load=\"imtcp\")\n"),
    }
    c.push_str(&format!(
        "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n"
    ));
    c.push_str("template(name=\"sdmsg\" type=\"string\" string=\"%structured-data% %msg%\\n\")\n");
    c.push_str(&format!(
        "action(type=\"omfile\" file=\"{}\" template=\"sdmsg\" flushOnTXEnd=\"on\" asyncWriting=\"off\")\n",
        out.display()
    ));
    let conf = dir.join("rsyslog.conf");
    std::fs::write(&conf, c).expect("write conf");
    Rsyslog {
        conf,
        pid: dir.join("rsyslog.pid"),
        child: None,
    }
}

fn parse_rsyslog_out(out: &Path) -> Vec<(String, u64, String)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut got = Vec::new();
    for line in text.lines() {
        let Some(i) = line.find("] ") else { continue };
        let body = line[i + 2..].trim();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        // The structured data carries the same dedupe key as the body.
        let sd = &line[..i];
        let seq = v["seq"].as_u64().expect("seq");
        assert!(sd.contains(&format!("seq=\"{seq}\"")), "{line}");
        got.push((
            v["log_id"].as_str().unwrap_or("").to_string(),
            seq,
            body.to_string(),
        ));
    }
    got
}

fn syslog_round_trip(tls: bool) {
    if !rsyslogd_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let out = tmp.path().join("received.log");
    let certs = tls.then(|| make_certs(tmp.path()));
    let mut rs = rsyslog_conf(
        tmp.path(),
        port,
        &out,
        certs
            .as_ref()
            .map(|c| (c.0.as_path(), c.1.as_path(), c.2.as_path())),
    );
    rs.start();
    wait_port(port);
    let dir = tmp.path().join("log");
    let cfg = config(&dir);
    let sink = AuditSink {
        name: "siem".into(),
        kind: SinkKind::Syslog {
            address: format!("127.0.0.1:{port}"),
            tls,
            ca_file: certs.as_ref().map(|c| c.0.clone()),
            server_name: Some("localhost".into()),
            format: SinkFormat::Json,
        },
        witness: false,
    };
    let rs = Arc::new(Mutex::new(rs));
    let rt = rt();
    let last = rt.block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        let sinks = Sinks::start(&dir, &[sink], opts()).expect("sinks");
        let r2 = rs.clone();
        let seqs = append_stream(&log, 300, move || {
            let mut g = r2.lock().expect("lock");
            g.stop();
            // Records keep being appended while the receiver is down.
            std::thread::sleep(Duration::from_millis(300));
        })
        .await;
        // Down for a while longer, with appends still succeeding.
        for i in 0..50 {
            log.append(event(1000 + i))
                .await
                .expect("append while receiver down");
        }
        {
            let mut g = rs.lock().expect("lock");
            g.start();
        }
        wait_port(port);
        log.shutdown().await.expect("shutdown");
        let last = *seqs.iter().max().expect("seqs") + 50 + 1; // + final checkpoint
        let out2 = out.clone();
        tokio::task::spawn_blocking(move || {
            wait_for(
                || {
                    let got = parse_rsyslog_out(&out2);
                    let s: BTreeSet<u64> = got.iter().map(|g| g.1).collect();
                    (0..=last).all(|i| s.contains(&i))
                },
                "rsyslogd to receive every record",
            )
        })
        .await
        .expect("wait");
        sinks.stop(Duration::from_secs(5)).await;
        last
    });
    rs.lock().expect("lock").stop();
    let got = parse_rsyslog_out(&out);
    check_delivery(&got, last);
    let cursor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cursors/siem.json")).expect("cursor file"))
            .expect("cursor json");
    assert!(cursor["last_seq"].as_u64().is_some());
}

#[test]
fn syslog_tcp_to_rsyslogd_survives_a_receiver_restart() {
    syslog_round_trip(false);
}

#[test]
fn syslog_tls_to_rsyslogd_survives_a_receiver_restart() {
    syslog_round_trip(true);
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=portcullis test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let _ = (ca_key, csr);
    (ca, cert, key)
}

fn http_round_trip(hec: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let secret_file = tmp.path().join("secret");
    let secret = "hmac-or-hec-secret-value-123";
    std::fs::write(&secret_file, secret).expect("secret");
    let dir = tmp.path().join("log");
    let cfg = config(&dir);
    let rt = rt();
    let (got, last) = rt.block_on(async {
        let mut rx = Receiver {
            port: 0,
            got: Arc::default(),
            task: None,
        };
        rx.start().await;
        let sref = SecretRef::File(secret_file.clone());
        let sink = AuditSink {
            name: "hook".into(),
            kind: SinkKind::Http {
                url: format!("http://127.0.0.1:{}/services/collector/event", rx.port),
                auth: if hec {
                    HttpSinkAuth::HecToken(sref)
                } else {
                    HttpSinkAuth::HmacSecret(sref)
                },
                ca_file: None,
            },
            witness: false,
        };
        let log = AuditLog::open(&cfg, None).expect("open");
        let sinks = Sinks::start(&dir, &[sink], opts()).expect("sinks");
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut seqs = Vec::new();
        for i in 0..300u64 {
            seqs.push(log.append(event(i)).await.expect("append"));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if i == 150 {
                rx.lock().await.stop();
            }
            if i == 250 {
                rx.lock().await.start().await;
            }
        }
        log.shutdown().await.expect("shutdown");
        let last = *seqs.iter().max().expect("max") + 1;
        let got = rx.lock().await.got.clone();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let have: BTreeSet<u64> = decode(&got.lock().expect("lock").bodies, hec, secret)
                .iter()
                .map(|g| g.1)
                .collect();
            if (0..=last).all(|s| have.contains(&s)) || Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sinks.stop(Duration::from_secs(5)).await;
        rx.lock().await.stop();
        let bodies = std::mem::take(&mut got.lock().expect("lock").bodies);
        (bodies, last)
    });
    let items = decode(&got, hec, secret);
    check_delivery(&items, last);
}

/// Checks auth on every request and returns `(log_id, seq, record)` of every event received.
fn decode(
    bodies: &[(http::HeaderMap, Vec<u8>)],
    hec: bool,
    secret: &str,
) -> Vec<(String, u64, String)> {
    use hmac::Mac;
    let mut out = Vec::new();
    for (h, body) in bodies {
        if hec {
            assert_eq!(h["authorization"], format!("Splunk {secret}"));
            let stream =
                serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
            for ev in stream {
                let ev = ev.expect("HEC event");
                assert!(ev["time"].is_number());
                let r = &ev["event"];
                out.push((
                    r["log_id"].as_str().unwrap_or("").into(),
                    r["seq"].as_u64().expect("seq"),
                    r.to_string(),
                ));
            }
        } else {
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("mac");
            mac.update(body);
            let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(h["x-portcullis-signature"], want.as_str());
            for l in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let r: serde_json::Value = serde_json::from_slice(l).expect("record");
                out.push((
                    r["log_id"].as_str().unwrap_or("").into(),
                    r["seq"].as_u64().expect("seq"),
                    String::from_utf8_lossy(l).into_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn splunk_hec_survives_a_receiver_restart() {
    http_round_trip(true);
}

#[test]
fn hmac_webhook_survives_a_receiver_restart() {
    http_round_trip(false);
}

/// The SIEM as a witness: what rsyslog stored (JSON and CEF bodies alike) becomes a witness
/// file with `audit witness-import`, and `audit verify --witness` finds a cut tail with it.
#[test]
fn what_rsyslog_stored_is_a_witness_that_finds_a_cut_tail() {
    if !rsyslogd_available() {
        return;
    }
    for format in [SinkFormat::Json, SinkFormat::Cef] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = tmp.path().join("received.log");
        let mut rs = rsyslog_conf(tmp.path(), port, &out, None);
        rs.start();
        wait_port(port);
        let dir = tmp.path().join("log");
        let mut cfg = config(&dir);
        cfg.key_epoch = Some(Duration::from_secs(1));
        let sink = AuditSink {
            name: "siem".into(),
            kind: SinkKind::Syslog {
                address: format!("127.0.0.1:{port}"),
                tls: false,
                ca_file: None,
                server_name: None,
                format,
            },
            witness: false,
        };
        let last = rt().block_on(async {
            let log = AuditLog::open(&cfg, None).expect("open");
            let sinks = Sinks::start(&dir, &[sink], opts()).expect("sinks");
            let seqs = append_stream(&log, 200, || {
                std::thread::sleep(Duration::from_millis(1200))
            })
            .await;
            log.shutdown().await.expect("shutdown");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            sinks.stop(Duration::from_secs(3)).await;
            seqs.last().copied().unwrap_or(0)
        });
        wait_for(
            || {
                std::fs::read_to_string(&out)
                    .unwrap_or_default()
                    .contains(&format!(":{}", last + 1))
                    || std::fs::read_to_string(&out)
                        .unwrap_or_default()
                        .contains(&format!("seq=\"{}\"", last + 1))
            },
            "the final checkpoint at the receiver",
        );
        rs.stop();
        let witness = tmp.path().join("witness.jsonl");
        let imported = std::process::Command::new(bin())
            .args(["audit", "witness-import", "--out"])
            .arg(&witness)
            .arg(&out)
            .output()
            .expect("witness-import");
        assert!(
            imported.status.success(),
            "{format:?}: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        let pk = portcullis::audit::keys::pub_path(&dir.join("signing.key"));
        let verify = |dir: &Path| {
            portcullis(
                &[
                    "audit",
                    "verify",
                    "--pubkey",
                    &pk.display().to_string(),
                    "--witness",
                    &witness.display().to_string(),
                ],
                dir,
            )
        };
        let ok = verify(&dir);
        assert_eq!(ok.code, 0, "{format:?}: {}{}", ok.stdout, ok.stderr);
        let seg = segment(&dir, 1);
        let all = lines(&seg);
        write_lines(&seg, &all[..all.len() - 60]);
        let cut = verify(&dir);
        assert_eq!(
            cut.code, 1,
            "{format:?}: cut tail not found: {}",
            cut.stdout
        );
        assert!(
            cut.stderr.contains("lacks the seal"),
            "{format:?}: {}",
            cut.stderr
        );
    }
}
