//! OTLP collectors on loopback for the telemetry tests: OTLP/HTTP and gRPC, in clear or over
//! TLS with a test CA, decoding what the gateway sends with `opentelemetry-proto`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

pub const HTTP_PATH: &str = "/v1/traces";
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Default)]
pub struct Received {
    pub spans: Vec<Span>,
    pub bodies: Vec<u8>,
    pub authorization: Vec<String>,
    /// Connections accepted (TCP), whether or not a request followed.
    pub connections: usize,
}

/// Reads one export request (`path` checked, the protobuf after `skip` framing bytes) into
/// `got`.
pub async fn receive(
    got: &Mutex<Received>,
    req: hyper::Request<hyper::body::Incoming>,
    path: &str,
    skip: usize,
) {
    assert_eq!(req.uri().path(), path);
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let export = ExportTraceServiceRequest::decode(&body[skip..]).unwrap();
    let mut g = got.lock().unwrap();
    g.bodies.extend_from_slice(&body);
    g.authorization.extend(auth);
    for rs in export.resource_spans {
        for ss in rs.scope_spans {
            g.spans.extend(ss.spans);
        }
    }
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Any::StringValue(v) => Some(v.clone()),
            Any::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Http,
    Grpc,
}

/// A running collector: its URL and what it received.
pub struct Collector {
    pub url: String,
    pub got: Arc<Mutex<Received>>,
}

impl Collector {
    /// A collector in clear on loopback.
    pub async fn start(proto: Proto) -> Collector {
        Collector::start_with(proto, None).await
    }

    /// A collector on loopback, over TLS with `cert`/`key` when given (then the URL is https).
    pub async fn start_with(proto: Proto, tls: Option<(&Path, &Path)>) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(c, k)| tls_acceptor(c, k, proto));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let got = Arc::new(Mutex::new(Received::default()));
        let keep = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                keep.lock().unwrap().connections += 1;
                let (got, acceptor) = (keep.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            // A client that does not trust us ends the handshake: nothing more.
                            if let Ok(s) = a.accept(stream).await {
                                serve(hyper_util::rt::TokioIo::new(s), got, proto).await;
                            }
                        }
                        None => serve(hyper_util::rt::TokioIo::new(stream), got, proto).await,
                    }
                });
            }
        });
        Collector {
            url: format!("{scheme}://{addr}"),
            got,
        }
    }

    /// The spans of `trace` (hex) received so far.
    pub fn spans_of(&self, trace: &str) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == trace)
            .cloned()
            .collect()
    }

    /// Waits (bounded) for a span named `name` in `trace`.
    pub async fn wait_span(&self, trace: &str, name: &str, limit: Duration) -> Option<Span> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.spans_of(trace).into_iter().find(|s| s.name == name) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn serve<I>(io: I, got: Arc<Mutex<Received>>, proto: Proto)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let got = got.clone();
        async move {
            type Body = http_body_util::Either<
                Full<bytes::Bytes>,
                StreamBody<
                    futures_util::stream::Iter<
                        std::vec::IntoIter<Result<Frame<bytes::Bytes>, std::convert::Infallible>>,
                    >,
                >,
            >;
            let resp: hyper::Response<Body> = match proto {
                Proto::Http => {
                    receive(&got, req, HTTP_PATH, 0).await;
                    hyper::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(http_body_util::Either::Left(Full::new(bytes::Bytes::new())))
                        .unwrap()
                }
                Proto::Grpc => {
                    // gRPC framing: a compressed flag (0) and a 4-byte length first; the answer
                    // is an empty message and `grpc-status: 0`.
                    receive(&got, req, GRPC_PATH, 5).await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = vec![
                        Ok(Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(http_body_util::Either::Right(StreamBody::new(
                            futures_util::stream::iter(frames),
                        )))
                        .unwrap()
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = match proto {
        Proto::Http => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
        }
        Proto::Grpc => {
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        }
    };
}

/// One `echo` call through the gateway at `url` carrying trace `trace` in `_meta`; the call
/// itself must work whatever becomes of the spans.
pub async fn traced_echo(url: &str, trace: &str) {
    use crate::common::client::{tool_text, Mcp, LATEST};
    let mut c = Mcp::new(url);
    c.initialize(LATEST).await;
    let r = c
        .request(
            "tools/call",
            serde_json::json!({"name": "echo", "arguments": {"text": "traced"},
                   "_meta": {"traceparent": format!("00-{trace}-b7ad6b7169203331-01")}}),
        )
        .await;
    assert_eq!(tool_text(&r), "traced");
}

/// A collector that accepts connections and never answers.
pub async fn silent_collector() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

fn tls_acceptor(cert: &Path, key: &Path, proto: Proto) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = match proto {
        Proto::Http => vec![b"http/1.1".to_vec()],
        Proto::Grpc => vec![b"h2".to_vec()],
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A test CA (`NAME-ca.pem`) and a certificate it signed for 127.0.0.1 / localhost
/// (`NAME.pem`, `NAME.key`), made with the openssl CLI in `dir`. Returns (ca, cert, key).
pub fn make_certs(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let f = |suffix: &str| format!("{name}{suffix}");
    std::fs::write(
        dir.join(f(".ext")),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
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
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_key, ca) = (f("-ca.key"), f("-ca.pem"));
    let (key, csr, cert, ext) = (f(".key"), f(".csr"), f(".pem"), f(".ext"));
    let (ca_key_s, ca_s) = (ca_key.as_str(), ca.as_str());
    let (key_s, csr_s, cert_s, ext_s) = (key.as_str(), csr.as_str(), cert.as_str(), ext.as_str());
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        ca_key_s,
        "-out",
        ca_s,
        "-days",
        "2",
        "-subj",
        "/CN=portcullis otlp test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", key_s, "-out", csr_s, "-subj", "/CN=localhost"]);
    run(&args);
    run(&[
        "x509",
        "-req",
        "-in",
        csr_s,
        "-CA",
        ca_s,
        "-CAkey",
        ca_key_s,
        "-CAcreateserial",
        "-out",
        cert_s,
        "-days",
        "2",
        "-extfile",
        ext_s,
    ]);
    (dir.join(ca), dir.join(cert), dir.join(key))
}
