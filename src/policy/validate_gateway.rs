//! Validation of `[gateway]`: listeners, naming, origins and hosts, message and session limits,
//! state directory and fleet settings, and how often list changes are announced.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Spanned, Value};

use super::model::*;
use super::raw::*;
use super::validate::{
    parse_secret_ref, Checker, DEFAULT_LISTEN, DEFAULT_LIST_TTL, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_SESSIONS, DEFAULT_PAGE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SERVER_LOG_RATE, DEFAULT_SESSION_IDLE_TIMEOUT, DEFAULT_SSE_KEEPALIVE,
    DEFAULT_UNUSED_SESSION_TIMEOUT,
};

impl Checker<'_> {
    pub(super) fn gateway(&mut self, g: RawGateway) -> (Gateway, usize) {
        let listen = match &g.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 8811)),
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.error(l.span().start, format!("invalid listen address \"{}\"; use IP:PORT, like \"{DEFAULT_LISTEN}\" (host names are not resolved)", l.get_ref()));
                SocketAddr::from(([127, 0, 0, 1], 8811))
            }),
        };
        let admin_listen = g.admin_listen.as_ref().and_then(|a| {
            let text = a.get_ref();
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => Some(addr),
                Ok(_) => {
                    self.error(a.span().start, format!("admin_listen \"{text}\" is not a loopback address; /ready and /metrics name every server, tool and client, so they are served without a token only on loopback (off loopback, reach them through `listen` with a client token)"));
                    None
                }
                Err(_) => {
                    self.error(a.span().start, format!("invalid admin_listen address \"{text}\"; use a loopback IP:PORT, like \"127.0.0.1:9811\""));
                    None
                }
            }
        });
        let session_idle_timeout = self
            .duration(&g.session_idle_timeout, "session_idle_timeout")
            .unwrap_or(DEFAULT_SESSION_IDLE_TIMEOUT);
        let naming_at = g.naming.as_ref().map_or(0, |n| n.span().start);
        let naming = match g.naming.as_ref().map(|n| n.get_ref().as_str()) {
            None | Some("auto") => Naming::Auto,
            Some("prefix") => Naming::Prefix,
            Some("passthrough") => Naming::Passthrough,
            Some(other) => {
                self.error(
                    naming_at,
                    format!(
                        "unknown naming \"{other}\"; use \"auto\", \"prefix\" or \"passthrough\""
                    ),
                );
                Naming::Auto
            }
        };
        for o in g.allowed_origins.iter().flatten() {
            if let Err(e) = check_origin(o.get_ref()) {
                self.error(o.span().start, e);
            }
        }
        for h in g.allowed_hosts.iter().flatten() {
            let s = h.get_ref();
            if s.is_empty()
                || s.contains("://")
                || s.contains('/')
                || s.chars().any(char::is_whitespace)
            {
                self.error(h.span().start, format!("invalid allowed host \"{s}\"; write a Host header value: a host or host:port, like \"gateway.internal:8811\""));
            }
        }
        let max_body_bytes = self
            .size(&g.max_body_bytes, "max_body_bytes")
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_message_bytes = self
            .message_bytes(&g.max_message_bytes)
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        self.state_dir = match &g.state_dir {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.error(
                    p.span().start,
                    "`state_dir` is empty; name a directory, like \"./portcullis-state\"",
                );
                self.resolve(DEFAULT_STATE_DIR)
            }
            Some(p) => self.resolve(p.get_ref()),
            None => self.resolve(DEFAULT_STATE_DIR),
        };
        let instance =
            g.instance
                .as_ref()
                .and_then(|i| match crate::instance::check(i.get_ref()) {
                    Ok(()) => Some(i.get_ref().clone()),
                    Err(e) => {
                        self.error(i.span().start, e);
                        None
                    }
                });
        let fleet_key = g.fleet_key.as_ref().and_then(|v| {
            parse_secret_ref(v.get_ref())
                .map_err(|e| self.error(v.span().start, format!("`fleet_key`: {e}")))
                .ok()
        });
        let fleet_ca = g.fleet_ca.as_ref().and_then(|v| {
            if v.get_ref().trim().is_empty() {
                self.error(v.span().start, "`fleet_ca` is empty; name the PEM file of the CA that signed the replicas' certificates, like \"/run/fleet/ca.pem\"");
                return None;
            }
            // The CA only serves the hop between replicas, which needs the fleet key: alone it
            // would look like it secured something it does not.
            if g.fleet_key.is_none() {
                self.error(v.span().start, "`fleet_ca` applies only with `fleet_key`: it is the CA trusted when one replica forwards a request to another");
            }
            Some(self.resolve(v.get_ref()))
        });
        let gw = Gateway {
            fleet_key,
            fleet_ca,
            listen,
            admin_listen,
            naming,
            allowed_origins: Self::strings(&g.allowed_origins),
            allowed_hosts: Self::strings(&g.allowed_hosts),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
            request_timeout: self
                .duration(&g.request_timeout, "request_timeout")
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            session_idle_timeout,
            server_log_rate: self
                .rate(&g.server_log_rate)
                .unwrap_or(DEFAULT_SERVER_LOG_RATE),
            unused_session_timeout: self
                .duration(&g.unused_session_timeout, "unused_session_timeout")
                .unwrap_or(DEFAULT_UNUSED_SESSION_TIMEOUT)
                .min(session_idle_timeout),
            max_sessions: self
                .count(&g.max_sessions, "max_sessions", (1, 1_000_000))
                .map_or(DEFAULT_MAX_SESSIONS, |n| n as usize),
            page_size: self
                .count(&g.page_size, "page_size", (1, 10_000))
                .map_or(DEFAULT_PAGE_SIZE, |n| n as usize),
            list_ttl: self
                .duration(&g.list_ttl, "list_ttl")
                .unwrap_or(DEFAULT_LIST_TTL),
            sse_keepalive: self
                .duration(&g.sse_keepalive, "sse_keepalive")
                .unwrap_or(DEFAULT_SSE_KEEPALIVE),
            sse_poll_interval: self.duration(&g.sse_poll_interval, "sse_poll_interval"),
            tls: g.tls.as_ref().map(|t| self.tls(t)),
            state_dir: self.state_dir.clone(),
            instance,
            serial: self.count(&g.serial, "serial", (0, i64::MAX as u64)),
            list_changes: self.list_changes(&g),
            lock: self.lock(&g),
            require_image_digest: g
                .require_image_digest
                .as_ref()
                .is_some_and(|r| *r.get_ref()),
        };
        (gw, naming_at)
    }

    fn list_changes(&mut self, g: &RawGateway) -> ListChanges {
        let d = ListChanges::default();
        let mut within = |v: &Option<Spanned<Value>>, key: &str, max: Duration| {
            let at = v.as_ref().map_or(0, |v| v.span().start);
            let got = self.duration(v, key)?;
            if got > max {
                self.error(
                    at,
                    format!("`{key}` is too long; use at most \"{}s\"", max.as_secs()),
                );
                return None;
            }
            Some(got)
        };
        ListChanges {
            interval: within(
                &g.list_changed_interval,
                "list_changed_interval",
                Duration::from_secs(60),
            )
            .unwrap_or(d.interval),
            window: within(
                &g.unstable_window,
                "unstable_window",
                Duration::from_secs(3600),
            )
            .unwrap_or(d.window),
            unstable_after: self
                .count(
                    &g.unstable_list_changes,
                    "unstable_list_changes",
                    (1, 1_000_000),
                )
                .unwrap_or(d.unstable_after),
        }
    }
}

fn check_origin(o: &str) -> Result<(), String> {
    let bad = || {
        format!("invalid allowed origin \"{o}\"; write scheme://host[:port] without a path, like \"https://app.example.com\"")
    };
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty() || rest.contains('/') || rest.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}
