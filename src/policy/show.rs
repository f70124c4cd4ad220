//! The effective policy, every default filled in, as a human reads it: the gateway, egress,
//! workspace and audit sections here; each server in `show_server.rs`, the clients in
//! `show_clients.rs`, telemetry in `show_telemetry.rs`.

use super::model::*;
use super::units::{format_duration, format_rate, format_size};
use std::fmt::Write;

/// Renders `p` for `portcullis policy show`. Secrets appear only as references, never values.
pub fn render(p: &Policy) -> String {
    let mut o = String::new();
    let g = &p.gateway;
    let naming = |n: Naming| match n {
        Naming::Auto => "auto",
        Naming::Prefix => "prefix",
        Naming::Passthrough => "passthrough",
    };
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(o, "policy {}", p.origin);
    let _ = writeln!(o, "\n[gateway]");
    let _ = writeln!(o, "  listen                {}", g.listen);
    if let Some(a) = g.admin_listen {
        let _ = writeln!(o, "  admin_listen          {a} (/ready, /metrics)");
    }
    let _ = writeln!(
        o,
        "  naming                {} (effective: {})",
        naming(g.naming),
        naming(p.effective_naming())
    );
    let _ = writeln!(
        o,
        "  allowed_origins       loopback{}",
        extra(&g.allowed_origins)
    );
    let _ = writeln!(
        o,
        "  allowed_hosts         loopback{}",
        extra(&g.allowed_hosts)
    );
    let _ = writeln!(
        o,
        "  max_body_bytes        {} ({} bytes)",
        format_size(g.max_body_bytes as u64),
        g.max_body_bytes
    );
    let _ = writeln!(
        o,
        "  max_message_bytes     {} ({} bytes)",
        format_size(g.max_message_bytes as u64),
        g.max_message_bytes
    );
    let _ = writeln!(
        o,
        "  request_timeout       {}",
        format_duration(g.request_timeout)
    );
    let _ = writeln!(
        o,
        "  session_idle_timeout  {}",
        format_duration(g.session_idle_timeout)
    );
    let _ = writeln!(
        o,
        "  unused_session_timeout {}",
        format_duration(g.unused_session_timeout)
    );
    let _ = writeln!(o, "  max_sessions          {}", g.max_sessions);
    let _ = writeln!(o, "  page_size             {}", g.page_size);
    let _ = writeln!(o, "  list_ttl              {}", format_duration(g.list_ttl));
    let _ = writeln!(
        o,
        "  sse_keepalive         {}",
        format_duration(g.sse_keepalive)
    );
    let _ = writeln!(
        o,
        "  sse_poll_interval     {}",
        g.sse_poll_interval
            .map_or_else(|| "off".to_owned(), format_duration)
    );
    let _ = writeln!(o, "  state_dir             {}", g.state_dir.display());
    let _ = writeln!(
        o,
        "  instance              {}",
        g.instance
            .as_deref()
            .unwrap_or("(derived from state_dir at start)")
    );
    if let Some(serial) = g.serial {
        let _ = writeln!(o, "  serial                {serial}");
    }
    let lc = &g.list_changes;
    let _ = writeln!(
        o,
        "  list_changed_interval {}",
        format_duration(lc.interval)
    );
    let _ = writeln!(
        o,
        "  unstable_list_changes more than {} per {}",
        lc.unstable_after,
        format_duration(lc.window)
    );
    let lock = g.lock.as_ref().map_or("none".to_owned(), |l| {
        format!("{} ({})", l.path.display(), l.mode.as_str())
    });
    let _ = writeln!(o, "  lock                  {lock}");
    let _ = writeln!(o, "  require_image_digest  {}", g.require_image_digest);
    let e = &p.egress;
    let _ = writeln!(o, "\n[egress]");
    let _ = writeln!(
        o,
        "  upstream_resolvers    {}",
        if e.upstream_resolvers.is_empty() {
            "(none: sandboxes resolve no names)".to_owned()
        } else {
            e.upstream_resolvers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        o,
        "  pin_ttl_min           {}",
        format_duration(e.pin_ttl_min)
    );
    let _ = writeln!(
        o,
        "  pin_ttl_max           {}",
        format_duration(e.pin_ttl_max)
    );
    let _ = writeln!(o, "  max_addresses_per_name {}", e.max_addresses_per_name);
    let _ = writeln!(
        o,
        "  network_pool          {}/{}",
        e.network_pool.0, e.network_pool.1
    );
    let resolved = crate::egress::mode::resolve(e.mode);
    let _ = writeln!(
        o,
        "  mode                  {} ({})",
        resolved.mode.as_str(),
        resolved.reason
    );
    if resolved.mode == crate::policy::EgressMode::Sidecar {
        let _ = writeln!(
            o,
            "  agent_image           {}",
            e.agent_image
                .as_deref()
                .unwrap_or("(the image of the gateway's own container)")
        );
    }
    let _ = writeln!(
        o,
        "  allow_unconfined_process {}",
        if e.allow_unconfined_process {
            "true (process servers with egress rules run unenforced when not root)"
        } else {
            "false"
        }
    );
    let _ = writeln!(
        o,
        "  dns_rate              {} per server, answered from its cache first",
        rate_text(e.dns_rate)
    );
    if let Some(w) = &p.workspace {
        let allow: Vec<String> = w.allow.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "\n[workspace]  (enforced by the devcontainer kit's egress agent)"
        );
        let allow = if allow.is_empty() {
            "none (default deny)".to_owned()
        } else {
            allow.join(", ")
        };
        let _ = writeln!(o, "  allow                 {allow}");
    }
    if let Some(t) = &p.telemetry {
        super::show_telemetry::lines(&mut o, t);
    }
    for s in p.servers.values() {
        super::show_server::lines(&mut o, p, s);
    }
    super::show_clients::lines(&mut o, p);
    audit(&mut o, &p.audit);
    o
}

fn audit(o: &mut String, a: &Audit) {
    let _ = writeln!(o, "\n[audit]");
    let _ = writeln!(o, "  enabled               {}", a.enabled);
    let _ = writeln!(o, "  dir                   {}", a.dir.display());
    let _ = writeln!(o, "  fsync                 {}", a.fsync.as_str());
    let _ = writeln!(o, "  fail_closed           {}", a.fail_closed);
    let _ = writeln!(
        o,
        "  signing_key           {}",
        a.signing_key.as_ref().map_or_else(
            || format!("{}/signing.key (generated at first start)", a.dir.display()),
            |k| k.display().to_string()
        )
    );
    let _ = writeln!(
        o,
        "  checkpoint_interval   {}",
        format_duration(a.checkpoint_interval)
    );
    let _ = writeln!(o, "  checkpoint_every      {}", a.checkpoint_every);
    let _ = writeln!(
        o,
        "  max_segment_bytes     {}",
        format_size(a.max_segment_bytes)
    );
    let _ = writeln!(
        o,
        "  rotate_interval       {}",
        format_duration(a.rotate_interval)
    );
    let _ = writeln!(o, "  record_arguments      {}", a.record_arguments);
    let _ = writeln!(
        o,
        "  key_epoch             {}",
        a.key_epoch
            .map(format_duration)
            .unwrap_or_else(|| "off (one key for the life of the log)".into())
    );
    match &a.retention {
        None => {
            let _ = writeln!(o, "  retention             none (the log keeps everything)");
        }
        Some(r) => {
            let mut parts = Vec::new();
            if let Some(d) = r.max_age {
                parts.push(format!("max_age {}", format_duration(d)));
            }
            if let Some(b) = r.max_bytes {
                parts.push(format!("max_bytes {}", format_size(b)));
            }
            parts.push(match &r.archive_dir {
                Some(p) => format!("archived to {}", p.display()),
                None => "deleted".to_owned(),
            });
            let _ = writeln!(o, "  retention             {}", parts.join(", "));
        }
    }
    for s in a.sinks.iter().chain(&a.witnesses) {
        let what = match &s.kind {
            SinkKind::Syslog {
                address,
                tls,
                format,
                ..
            } => format!(
                "syslog {address} ({}, {})",
                if *tls { "TLS" } else { "plain TCP" },
                match format {
                    SinkFormat::Json => "json",
                    SinkFormat::Cef => "cef",
                }
            ),
            SinkKind::Http { url, auth, .. } => format!(
                "http {url} ({})",
                match auth {
                    HttpSinkAuth::HecToken(_) => "Splunk HEC",
                    HttpSinkAuth::HmacSecret(_) => "webhook, HMAC-signed",
                    HttpSinkAuth::None => "webhook, unsigned",
                }
            ),
            SinkKind::Journald => "journald".to_string(),
            SinkKind::WitnessDir { path } => format!("directory {}", path.display()),
        };
        let role = if s.witness { "witness" } else { "sink" };
        let _ = writeln!(o, "  {role} {:<16} {what}", s.name);
    }
}

pub(super) fn rate_text(r: Rate) -> String {
    format!("{} (burst {})", format_rate(r.count, r.per), r.burst)
}

fn extra(v: &[String]) -> String {
    v.iter().map(|x| format!(", {x}")).collect()
}

/// Header values are shown unless they look like a literal credential: `show` output gets pasted
/// into tickets, and a policy that (wrongly) holds a token should not spread it further.
pub(super) fn header_for_display(name: &str, value: &str) -> String {
    let n = name.to_ascii_lowercase();
    let sensitive = n == "authorization"
        || n == "cookie"
        || n.contains("token")
        || n.contains("key")
        || n.contains("secret");
    if sensitive && !value.contains("${secret:") {
        "<literal value hidden; use ${secret:NAME}>".to_string()
    } else {
        value.to_string()
    }
}

/// A list of names, or `(none)`.
pub(super) fn list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}
