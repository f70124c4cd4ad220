//! A bound listener (the MCP listener, or the admin one): accepting connections, TLS, the
//! connection cap and header/body deadlines, serving each connection through [`super::route`],
//! and the idle-session sweep. The request handling itself is `mod.rs`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{
    fleet_hop, ready, route, session, streamable, tls, Admin, Role, ServeError, Shared,
    HEADER_TIMEOUT, MAX_CONNECTIONS,
};
use crate::access::Access;
use crate::policy::Gateway;
use crate::router::audit_trail::AuditTrail;
use crate::router::Router;

/// A bound listener, ready to serve.
pub struct Listener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    unused_timeout: Duration,
    /// When set, only loopback and these peers may connect (see [`Listener::only_from`]).
    peers: Option<Vec<IpAddr>>,
}

impl Listener {
    pub async fn bind(
        gateway: &Gateway,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> Result<Listener, ServeError> {
        let tls = gateway.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(gateway.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: gateway.listen,
                hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (is another Portcullis already running? change gateway.listen or pass --listen)"
                } else {
                    ""
                },
                source,
            })?;
        let hop_client =
            fleet_hop::client(gateway).map_err(|e| ServeError::FleetCa(e.to_string()))?;
        let advertised = advertised_url(&listener, tls.is_some());
        Ok(Listener {
            listener,
            shared: Arc::new(Shared::new(
                gateway,
                router,
                access,
                audit,
                tls.is_some(),
                advertised,
                hop_client,
            )),
            idle_timeout: gateway.session_idle_timeout,
            unused_timeout: gateway.unused_session_timeout,
            tls,
            peers: None,
        })
    }

    /// Binds `gateway.admin_listen` (validated to be loopback), which serves `/health`,
    /// `/ready` and `/metrics` without a token and nothing else.
    pub async fn bind_admin(
        gateway: &Gateway,
        addr: SocketAddr,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> Result<Listener, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr,
                hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (change gateway.admin_listen)"
                } else {
                    ""
                },
                source,
            })?;
        let mut shared = Shared::local(gateway, router, access, audit);
        shared.role = Role::Admin;
        shared.admin = Admin::Open;
        Ok(Listener {
            listener,
            shared: Arc::new(shared),
            idle_timeout: gateway.session_idle_timeout,
            unused_timeout: gateway.unused_session_timeout,
            tls: None,
            peers: None,
        })
    }

    /// Accepts connections only from loopback and `peers`; any other peer is disconnected before
    /// a byte is read. For a listener whose only legitimate way in is a port the engine publishes
    /// on the host's loopback (`serve --published-on-host-loopback`).
    pub fn only_from(mut self, peers: Vec<IpAddr>) -> Listener {
        self.peers = Some(peers);
        self
    }

    fn admits(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        match &self.peers {
            None => true,
            Some(list) => peer.is_loopback() || list.contains(&peer),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that ends sessions from outside the listener, for as long as it serves.
    pub fn sessions(&self) -> SessionControl {
        SessionControl(self.shared.clone())
    }

    /// Serves until `shutdown` resolves, then closes every session.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared.clone();
        let sweeper = tokio::spawn(sweep_idle(
            shared.clone(),
            self.idle_timeout,
            self.unused_timeout,
        ));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            if !self.admits(peer.ip()) {
                tracing::warn!(%peer, "connection refused: only the host's loopback may reach this listener (it is published on the host's loopback only)");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(shared, stream, peer).await,
                    Some(acceptor) => {
                        // A client that never finishes the handshake must not hold a slot.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_connection(shared, s, peer).await,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
        sweeper.abort();
        // Drain: no new connections (the socket closes), calls in flight get their answers.
        drop(self.listener);
        shared.router.drain();
        shared
            .bridge
            .end_all("the gateway is shutting down; the call was waiting for the client's input")
            .await;
        ready::drain(&shared.router).await;
        shared.close_all_sessions().await;
    }
}

/// Where the other replicas reach this one with forwarded requests: `--replica-url`, or this
/// listener when its address is definite (a wildcard bind says nothing the others can dial).
fn advertised_url(listener: &TcpListener, tls: bool) -> Option<String> {
    if let Some(u) = crate::fleet::replica::url() {
        return Some(u.to_owned());
    }
    let addr = listener.local_addr().ok()?;
    if addr.ip().is_unspecified() {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{addr}"))
}

/// Ends client sessions on behalf of a policy reload that revoked their clients.
#[derive(Clone)]
pub struct SessionControl(Arc<Shared>);

impl SessionControl {
    /// Closes every open session of the named clients (their streams end; a request on one is
    /// answered 404, as for any unknown session); returns how many were closed.
    pub async fn close_clients(&self, clients: &[String]) -> usize {
        if clients.is_empty() {
            return 0;
        }
        let ids = self
            .0
            .sessions
            .remove_where(|s| clients.iter().any(|c| **c == *s.identity.client));
        for id in &ids {
            self.0.router.close_session(id).await;
        }
        ids.len()
    }
}

async fn serve_connection<I>(shared: Arc<Shared>, io: I, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn sweep_idle(shared: Arc<Shared>, limit: Duration, unused: Duration) {
    let period = (limit.min(unused) / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        shared.access.limits.sweep();
        shared.audit_ended_bursts(false).await;
        for (id, why) in shared.sessions.expire(limit, unused) {
            let why = match why {
                session::Expiry::Idle => "session expired after being idle",
                session::Expiry::Unused => {
                    "session expired after being used only for initialize and lists"
                }
            };
            tracing::info!(session = %streamable::short(&id), "{why}");
            shared.router.close_session(&id).await;
        }
    }
}
