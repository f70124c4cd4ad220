//! A small OAuth 2.1 authorization server on 127.0.0.1 for the remote-OAuth tests.
//!
//! It issues opaque tokens on `POST /token` (client_credentials and refresh_token grants, client
//! authentication by HTTP Basic or form fields, refresh-token rotation) and answers RFC 7662
//! introspection on `POST /introspect`, which the protected test MCP server asks for every
//! request. The test reads and changes its state directly: revoke every access token, change
//! the client secret, see every token request it received and every token it issued.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// One request to `/token`, as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub grant_type: String,
    pub form: BTreeMap<String, String>,
    /// Client credentials came in an `Authorization: Basic` header.
    pub basic: bool,
    /// Over the TLS listener.
    pub tls: bool,
    pub status: u16,
}

pub struct State {
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of new access tokens.
    pub expires_in: u64,
    /// Issue a new refresh token on every refresh (and forget the old one).
    pub rotate_refresh: bool,
    /// Introspection calls every token inactive (a resource server that refuses everything).
    pub refuse_all: bool,
    access: HashMap<String, Instant>,
    refresh: HashSet<String>,
    pub requests: Vec<TokenRequest>,
    /// What `/.well-known/oauth-authorization-server` answers, with any path issuer appended
    /// (404 while `None`).
    pub metadata: Option<Value>,
    /// How many times that document was asked for.
    pub metadata_requests: usize,
    /// Every access and refresh token handed out (and every refresh token registered).
    pub issued: Vec<String>,
}

impl State {
    /// Makes `token` a valid refresh token (one the operator got out of band).
    pub fn add_refresh_token(&mut self, token: &str) {
        self.refresh.insert(token.to_owned());
        self.issued.push(token.to_owned());
    }

    pub fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }

    /// The refresh tokens the server accepts now.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        self.refresh.iter().cloned().collect()
    }

    fn active(&self, token: &str) -> bool {
        !self.refuse_all
            && self
                .access
                .get(token)
                .is_some_and(|exp| Instant::now() < *exp)
    }
}

pub struct AuthServer {
    state: Arc<Mutex<State>>,
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuthServer {
    /// Starts the server: a plain listener always (introspection is asked over it), and a TLS
    /// one with `tls = Some((cert, key))`.
    pub fn start(client_id: &str, client_secret: &str, tls: Option<(&Path, &Path)>) -> AuthServer {
        let state = Arc::new(Mutex::new(State {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            expires_in: 3600,
            rotate_refresh: true,
            refuse_all: false,
            access: HashMap::new(),
            refresh: HashSet::new(),
            requests: Vec::new(),
            metadata: None,
            metadata_requests: 0,
            issued: Vec::new(),
        }));
        let acceptor = tls.map(|(cert, key)| tls_acceptor(cert, key));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let secure = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let tls_addr = acceptor.as_ref().map(|_| secure.local_addr().unwrap());
        plain.set_nonblocking(true).unwrap();
        secure.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let plain = tokio::net::TcpListener::from_std(plain).unwrap();
                let secure = tokio::net::TcpListener::from_std(secure).unwrap();
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        Ok((s, _)) = plain.accept() => {
                            tokio::spawn(serve(TokioIo::new(s), st.clone(), false));
                        }
                        Ok((s, _)) = secure.accept(), if acceptor.is_some() => {
                            let Some(acc) = acceptor.clone() else { continue };
                            let st = st.clone();
                            tokio::spawn(async move {
                                // A client that rejects our certificate ends the handshake.
                                if let Ok(t) = acc.accept(s).await {
                                    serve(TokioIo::new(t), st, true).await;
                                }
                            });
                        }
                        _ = stopped.changed() => break,
                    }
                }
            });
        });
        AuthServer {
            state,
            plain: plain_addr,
            tls: tls_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn port(&self) -> u16 {
        self.plain.port()
    }

    pub fn tls_port(&self) -> u16 {
        self.tls.expect("started without TLS").port()
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.plain)
    }

    pub fn tls_token_url(&self) -> String {
        format!("https://{}/token", self.tls.expect("started without TLS"))
    }

    /// The issuer identifier this server would have: its own origin.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.plain)
    }

    pub fn introspect_url(&self) -> String {
        format!("http://{}/introspect", self.plain)
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.with(|s| s.requests.clone())
    }

    pub fn issued(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn serve<I>(io: I, state: Arc<Mutex<State>>, tls: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &state, tls).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    r
}

async fn handle(req: Request<Incoming>, state: &Mutex<State>, tls: bool) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(i, s)| (form_decode(i), form_decode(s)))
        });
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let form = parse_form(&String::from_utf8_lossy(&body));
    let mut st = state.lock().unwrap();
    match path.as_str() {
        "/introspect" => {
            let active = form.get("token").is_some_and(|t| st.active(t));
            reply(200, json!({ "active": active }))
        }
        "/token" => {
            let (status, answer) = token(&mut st, &form, basic.clone());
            st.requests.push(TokenRequest {
                grant_type: form.get("grant_type").cloned().unwrap_or_default(),
                form,
                basic: basic.is_some(),
                tls,
                status,
            });
            reply(status, answer)
        }
        p if p.starts_with("/.well-known/oauth-authorization-server") => {
            st.metadata_requests += 1;
            match &st.metadata {
                Some(m) => reply(200, m.clone()),
                None => reply(404, json!({"error": "not_found"})),
            }
        }
        _ => reply(404, json!({"error": "not_found"})),
    }
}

fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

fn token(
    st: &mut State,
    form: &BTreeMap<String, String>,
    basic: Option<(String, String)>,
) -> (u16, Value) {
    let (id, secret) = match basic {
        Some((i, s)) => (Some(i), Some(s)),
        None => (
            form.get("client_id").cloned(),
            form.get("client_secret").cloned(),
        ),
    };
    if id.as_deref() != Some(st.client_id.as_str())
        || secret.as_deref() != Some(st.client_secret.as_str())
    {
        return (
            401,
            json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        );
    }
    let mut answer = serde_json::Map::new();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            if !st.refresh.contains(&presented) {
                return (
                    400,
                    json!({"error": "invalid_grant", "error_description": "unknown or used refresh token"}),
                );
            }
            if st.rotate_refresh {
                st.refresh.remove(&presented);
                let next = new_token("rt");
                st.refresh.insert(next.clone());
                st.issued.push(next.clone());
                answer.insert("refresh_token".into(), json!(next));
            }
        }
        _ => return (400, json!({"error": "unsupported_grant_type"})),
    }
    let access = new_token("at");
    st.access.insert(
        access.clone(),
        Instant::now() + Duration::from_secs(st.expires_in),
    );
    st.issued.push(access.clone());
    answer.insert("access_token".into(), json!(access));
    answer.insert("token_type".into(), json!("Bearer"));
    answer.insert("expires_in".into(), json!(st.expires_in));
    (200, Value::Object(answer))
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A private CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`) in `dir`, made with the openssl CLI. Returns (ca, cert, key).
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=portcullis-oauth-test-ca -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign");
    // OpenSSL 3 signs with the CA directly in `req -x509 -CA`.
    openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -keyout server.key -out server.pem -CA ca.pem -CAkey ca.key -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=CA:FALSE -addext extendedKeyUsage=serverAuth");
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
