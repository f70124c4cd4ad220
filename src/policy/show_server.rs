//! One `[servers.NAME]` section of `portcullis policy show`: how the server runs (process,
//! docker, remote, openapi), its egress, secrets (as references, never values), limits and
//! timeouts, defaults filled in.

use std::fmt::Write;

use super::model::*;
use super::show::{header_for_display, list, rate_text};
use super::units::{format_duration, format_size};

/// The section of server `s` of policy `p`.
pub(super) fn lines(o: &mut String, p: &Policy, s: &Server) {
    let g = &p.gateway;
    let e = &p.egress;
    let _ = writeln!(o, "\n[servers.{}]", s.name);
    match &s.runtime {
        Runtime::Process(x) => {
            let _ = writeln!(
                o,
                "  runtime               process (confined child, see `sandbox`)"
            );
            let _ = writeln!(o, "  command               {}", x.command);
            let _ = writeln!(o, "  args                  {}", quoted(&x.args));
            env_lines(o, &x.env);
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
            mount_lines(o, &x.mounts);
            process_sandbox_lines(o, s, x);
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
            env_lines(o, &x.env);
            let _ = writeln!(
                o,
                "  user                  {}",
                x.user.as_deref().unwrap_or("(image default)")
            );
            if x.mounts.is_empty() {
                let _ = writeln!(o, "  mounts                (none)");
            }
            mount_lines(o, &x.mounts);
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
            http_lines(o, &x.headers, x.ca_file.as_deref(), x.oauth.as_ref());
        }
        Runtime::OpenApi(x) => openapi_lines(o, s, x),
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
