//! The effective policy, every default filled in, as a human reads it.

use super::model::*;
use super::units::{format_duration, format_rate, format_size};
use std::fmt::Write;

fn oauth_lines(o: &mut String, a: &OAuth) {
    let grant = match a.grant() {
        OAuthGrant::ClientCredentials => "client_credentials",
        OAuthGrant::RefreshToken => "refresh_token",
    };
    let secret = |n: &Option<String>| {
        n.as_ref()
            .map_or_else(|| "(none)".to_owned(), |n| format!("${{secret:{n}}}"))
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
    let _ = writeln!(o, "  oauth.grant           {grant}");
    let _ = writeln!(o, "  oauth.token_url       {}", a.token_url);
    let _ = writeln!(o, "  oauth.issuer          {}", opt(&a.issuer));
    let _ = writeln!(o, "  oauth.client_id       {}", a.client_id);
    let _ = writeln!(o, "  oauth.client_secret   {}", secret(&a.client_secret));
    if a.client_secret.is_some() {
        let auth = match a.client_auth {
            ClientAuth::Basic => "basic",
            ClientAuth::Post => "post",
        };
        let _ = writeln!(o, "  oauth.client_auth     {auth}");
    }
    let _ = writeln!(o, "  oauth.refresh_token   {}", secret(&a.refresh_token));
    let _ = writeln!(o, "  oauth.scope           {}", opt(&a.scope));
    let _ = writeln!(o, "  oauth.resource        {}", opt(&a.resource));
    let _ = writeln!(o, "  oauth.audience        {}", opt(&a.audience));
    let _ = writeln!(o, "  oauth.token cache     {}", a.cache_file.display());
}

/// How the gateway reaches a server over HTTP: headers (secrets as references), CAs, OAuth.
fn http_lines(
    o: &mut String,
    headers: &std::collections::BTreeMap<String, String>,
    ca_file: Option<&std::path::Path>,
    oauth: Option<&OAuth>,
) {
    for (k, v) in headers {
        let _ = writeln!(
            o,
            "  header                {k}: {}",
            header_for_display(k, v)
        );
    }
    if let Some(ca) = ca_file {
        let _ = writeln!(o, "  ca_file               {}", ca.display());
    }
    if let Some(a) = oauth {
        oauth_lines(o, a);
    }
}

/// An openapi server: where requests go, with what, and every tool the document makes.
fn openapi_lines(o: &mut String, s: &Server, x: &OpenApiSpec) {
    let _ = writeln!(o, "  runtime               openapi");
    let _ = writeln!(o, "  spec                  {}", x.spec.display());
    let _ = writeln!(o, "  base_url              {}", x.base_url);
    http_lines(o, &x.headers, x.ca_file.as_deref(), x.oauth.as_ref());
    let patterns = |v: &[String], none: &str| {
        if v.is_empty() {
            none.to_owned()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        o,
        "  operations            allow {}; deny {}",
        patterns(&x.operations.allow, "all"),
        patterns(&x.operations.deny, "(none)")
    );
    let _ = writeln!(
        o,
        "  max_response_bytes    {}",
        format_size(x.max_response_bytes)
    );
    let _ = writeln!(
        o,
        "  api                   {} {} ({} tools)",
        x.api.title,
        x.api.version,
        x.api.tools.len()
    );
    for t in &x.api.tools {
        let hidden = if s.tools.permits(&t.name) {
            ""
        } else {
            " (hidden by tools)"
        };
        let _ = writeln!(
            o,
            "  tool                  {} = {} {}{hidden}",
            t.name, t.method, t.path
        );
    }
}

/// Renders `p` for `portcullis policy show`. Secrets appear only as references, never values.
pub fn render(p: &Policy) -> String {
    let mut o = String::new();
    let g = &p.gateway;
    let naming = |n: Naming| match n {
        Naming::Auto => "auto",
        Naming::Prefix => "prefix",
        Naming::Passthrough => "passthrough",
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
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
        let _ = writeln!(o, "\n[servers.{}]", s.name);
        match &s.runtime {
            Runtime::Process(x) => {
                let _ = writeln!(
                    o,
                    "  runtime               process (confined child, see `sandbox`)"
                );
                let _ = writeln!(o, "  command               {}", x.command);
                let _ = writeln!(o, "  args                  {}", quoted(&x.args));
                env_lines(&mut o, &x.env);
                let _ = writeln!(
                    o,
                    "  cwd                   {}",
                    x.cwd
                        .as_ref()
                        .map_or("(gateway's)".to_string(), |c| c.display().to_string())
                );
                let _ = writeln!(
                    o,
                    "  user                  {}{}",
                    x.user,
                    if x.user.uid == 0 {
                        " (ROOT: allow_root = true)"
                    } else {
                        ""
                    }
                );
                mount_lines(&mut o, &x.mounts);
                process_sandbox_lines(&mut o, s, x);
            }
            Runtime::Docker(x) => {
                let _ = writeln!(o, "  runtime               docker");
                let _ = writeln!(o, "  image                 {}", x.image);
                let _ = writeln!(
                    o,
                    "  command               {}",
                    if x.command.is_empty() {
                        "(image default)".to_string()
                    } else {
                        quoted(&x.command)
                    }
                );
                env_lines(&mut o, &x.env);
                let _ = writeln!(
                    o,
                    "  user                  {}",
                    x.user.as_deref().unwrap_or("(image default)")
                );
                if x.mounts.is_empty() {
                    let _ = writeln!(o, "  mounts                (none)");
                }
                mount_lines(&mut o, &x.mounts);
                let _ = writeln!(o, "  pool                  {}", x.pool);
                let _ = writeln!(
                    o,
                    "  limits                memory {}, cpus {}, pids {}",
                    format_size(s.limits.memory_bytes),
                    s.limits.cpus,
                    s.limits.pids
                );
            }
            Runtime::Remote(x) => {
                let _ = writeln!(o, "  runtime               remote");
                let _ = writeln!(o, "  url                   {}", x.url);
                http_lines(&mut o, &x.headers, x.ca_file.as_deref(), x.oauth.as_ref());
            }
            Runtime::OpenApi(x) => openapi_lines(&mut o, s, x),
        }
        // An openapi server's MCP side is the gateway's own: it has no era to show.
        if !matches!(s.runtime, Runtime::OpenApi(_)) {
            let _ = writeln!(o, "  protocol              {}", s.protocol.as_str());
        }
        let lc = match s.lifecycle {
            Lifecycle::Shared => "shared",
            Lifecycle::PerSession => "per-session",
            Lifecycle::PerCall => "per-call",
        };
        let _ = writeln!(o, "  lifecycle             {lc}");
        if !matches!(s.runtime, Runtime::Remote(_)) {
            let egress = if s.egress.allow.is_empty() {
                if matches!(s.runtime, Runtime::Process(_)) {
                    "no rules: the host's network".to_string()
                } else {
                    "none (default deny)".to_string()
                }
            } else {
                s.egress
                    .allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(o, "  egress                {egress}");
            let dns = match s.egress.dns_rate {
                Some(r) => rate_text(r),
                None => format!("{} (from [egress])", rate_text(e.dns_rate)),
            };
            let _ = writeln!(o, "  egress.dns_rate       {dns}");
        }
        for (k, r) in &s.secrets {
            let src = match r {
                SecretRef::Env(n) => format!("env:{n}"),
                SecretRef::File(f) => format!("file:{}", f.display()),
                SecretRef::Dotenv { path, key } => format!("dotenv:{}#{key}", path.display()),
            };
            let _ = writeln!(o, "  secret                {k} <- {src}");
        }
        let rate = s.rate.map_or("unlimited".to_string(), rate_text);
        let _ = writeln!(o, "  rate                  {rate}");
        let _ = writeln!(
            o,
            "  tools                 allow {}; deny {}",
            if s.tools.allow.is_empty() {
                "all".into()
            } else {
                s.tools.allow.join(", ")
            },
            list(&s.tools.deny)
        );
        let _ = writeln!(
            o,
            "  startup_timeout       {}",
            format_duration(s.startup_timeout)
        );
        let _ = writeln!(
            o,
            "  request_timeout       {}",
            format_duration(s.request_timeout.unwrap_or(g.request_timeout))
        );
        let _ = writeln!(o, "  sanitize              {}", s.sanitize.as_str());
        let _ = writeln!(
            o,
            "  max_message_bytes     {} ({} bytes)",
            format_size(s.max_message_bytes as u64),
            s.max_message_bytes
        );
    }
    for c in p.clients.values() {
        let _ = writeln!(o, "\n[clients.{}]", c.name);
        let _ = writeln!(
            o,
            "  token_sha256          {}",
            c.token_sha256
                .as_deref()
                .unwrap_or("(none: cannot authenticate)")
        );
        let _ = writeln!(
            o,
            "  allow                 {}",
            if c.allow.is_empty() {
                let by_rules = c
                    .rules
                    .iter()
                    .any(|r| r.effect == super::model::Effect::Allow);
                if by_rules {
                    "(none here: only what the allow rules below grant)".into()
                } else {
                    "all".into()
                }
            } else {
                c.allow.join(", ")
            }
        );
        let _ = writeln!(o, "  deny                  {}", list(&c.deny));
        for (i, r) in c.rules.iter().enumerate() {
            let _ = writeln!(o, "  rules[{i}]              {}", explain_rule(r, c));
        }
        quota_lines(&mut o, p, &c.name);
    }
    if !p.requires_auth() && !p.clients.contains_key("anonymous") {
        let _ = writeln!(
            o,
            "\n[clients.anonymous]  (implicit: every caller, as no credentials are configured; one shared quota)"
        );
        quota_lines(&mut o, p, "anonymous");
    }
    audit(&mut o, &p.audit);
    o
}

/// A `[[clients.NAME.rules]]` entry in words.
fn explain_rule(r: &super::model::ClientRule, c: &super::model::Client) -> String {
    use super::model::Effect;
    let what = r.patterns.join(", ");
    let mut t = match r.effect {
        Effect::Allow => format!("grants {what}"),
        Effect::Deny => format!("refuses {what}"),
        Effect::Confirm => format!(
            "asks the caller's person to approve {what} (when granted) and waits up to {}s (at most {} of this client's questions wait at once; more are refused)",
            c.confirm_timeout
                .unwrap_or(crate::access::rules::DEFAULT_CONFIRM_TIMEOUT)
                .as_secs(),
            c.max_waiting_approvals
                .unwrap_or(crate::access::rules::DEFAULT_MAX_WAITING_APPROVALS)
        ),
    };
    match &r.when {
        Some(w) => t.push_str(&format!(
            " only when `{}` is true; a call on which it cannot be evaluated is refused",
            w.source()
        )),
        None => t.push_str(" on every call"),
    }
    t
}

/// A client's session quota, session rate and call-slot weight, defaults filled in.
fn quota_lines(o: &mut String, p: &Policy, client: &str) {
    let q = p.client_quotas(client);
    let rate = p
        .clients
        .get(client)
        .and_then(|c| c.rate)
        .map_or("unlimited".to_string(), |r| {
            format!("{} (burst {})", format_rate(r.count, r.per), r.burst)
        });
    let _ = writeln!(o, "  rate                  {rate}");
    let _ = writeln!(
        o,
        "  max_sessions          {}{}",
        q.max_sessions,
        if q.max_sessions_set {
            ""
        } else {
            " (default: 256, at most half of gateway.max_sessions)"
        }
    );
    let r = q.session_rate;
    let _ = writeln!(
        o,
        "  session_rate          {} (burst {})",
        format_rate(r.count, r.per),
        r.burst
    );
    let _ = writeln!(o, "  weight                {}", q.weight);
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

fn rate_text(r: Rate) -> String {
    format!("{} (burst {})", format_rate(r.count, r.per), r.burst)
}

fn quoted(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|a| toml::Value::String(a.clone()).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

fn env_lines(o: &mut String, env: &std::collections::BTreeMap<String, String>) {
    for (k, v) in env {
        let _ = writeln!(o, "  env                   {k}={v}");
    }
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

fn mount_lines(o: &mut String, mounts: &[crate::policy::Mount]) {
    for m in mounts {
        let mode = if m.read_only {
            "read-only"
        } else {
            "READ-WRITE"
        };
        let _ = writeln!(
            o,
            "  mount                 {} -> {} ({mode})",
            m.source.display(),
            m.target.display()
        );
    }
}

/// What a process server can and cannot do (SECURITY.md, "Process servers", says the same and
/// names the tests).
fn process_sandbox_lines(
    o: &mut String,
    s: &crate::policy::Server,
    x: &crate::policy::ProcessSpec,
) {
    let network = if s.egress.allow.is_empty() {
        "the host's network (no egress rules)"
    } else {
        "its own network namespace: only its egress rules, through the gateway's resolver"
    };
    let lines = [
        format!("gateway as root: runs as {} with no capabilities (all five sets empty), no_new_privs and a seccomp filter", x.user),
        "can: read what the host lets its user read, through a read-only view; write only its private /tmp and /dev/shm and read-write mounts".to_string(),
        format!("network: {network}"),
        "cannot: see or signal other processes (own PID namespace), read the audit log and key, the state directory, the policy or other servers' secret files (hidden), create namespaces, mount, ptrace, use bpf, perf, modules or raw sockets".to_string(),
        "gateway not root: the gateway's uid in a user namespace (same view, `user` not applied); if the kernel refuses user namespaces, only no_new_privs, seccomp and closed descriptors".to_string(),
    ];
    for (i, l) in lines.iter().enumerate() {
        let key = if i == 0 { "sandbox" } else { "" };
        let _ = writeln!(o, "  {key:<21} {l}");
    }
}
