//! `doctor`'s checks of the policy's servers: that each can be started or reached at all.
//!
//! Without `--start` the checks are static and quick: a process server's command resolves the
//! way the gateway will look it up (its PATH), and a remote server's URL passes the same egress
//! check the gateway applies on every connection (the host is resolved once here). With
//! `--start` every server is started once exactly as the gateway would (sandbox, egress rules,
//! handshake) and its `initialize` result, or why it failed with the tail of its stderr, is
//! reported. Docker images are checked by the Docker section.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Finding, Status};
use crate::policy::{Policy, Runtime, Server};

/// Extra time `--start` waits beyond a server's own `startup_timeout`.
const START_SLACK: Duration = Duration::from_secs(5);

/// The static checks of every server.
pub async fn check(policy: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    for server in policy.servers.values() {
        match &server.runtime {
            Runtime::Process(p) => out.push(process_command(server, &p.command, &p.env)),
            Runtime::Remote(r) => out.push(remote_url(server, &r.url).await),
            Runtime::OpenApi(o) => out.push(remote_url(server, &o.base_url).await),
            Runtime::Docker(_) => {}
        }
    }
    out
}

fn process_command(
    server: &Server,
    command: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Finding {
    let name = &server.name;
    let path = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    match resolve(command, &path) {
        Some(found) => Finding::ok(format!(
            "server {name}: command {command} found ({})",
            found.display()
        )),
        None if command.contains('/') => Finding::problem(
            Status::Fail,
            format!("server {name}: command {command} does not exist or is not executable"),
            format!("fix the path in [servers.{name}] command, or install the program there"),
        ),
        None => Finding::problem(
            Status::Fail,
            format!("server {name}: command {command} is not on the gateway's PATH ({path})"),
            format!(
                "install it (for the reference servers: `pip install {command}` or `npm install -g ...`), or give its absolute path in [servers.{name}] command"
            ),
        ),
    }
}

/// Where `command` is found: as given when it holds a `/`, else on `path`.
fn resolve(command: &str, path: &str) -> Option<PathBuf> {
    if command.contains('/') {
        let p = PathBuf::from(command);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn remote_url(server: &Server, url: &str) -> Finding {
    let name = &server.name;
    let Some((host, port)) = host_port(url) else {
        return Finding::problem(
            Status::Fail,
            format!("server {name}: cannot read a host and port from {url}"),
            format!("write [servers.{name}] url like \"https://mcp.example.com/mcp\""),
        );
    };
    let egress = crate::upstream::http::egress::Egress::new(server.egress.allow.clone());
    match egress.resolve(&host, port).await {
        Ok(addrs) => Finding::ok(format!(
            "server {name}: {host}:{port} resolves to {} and is allowed",
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => Finding::problem(
            Status::Fail,
            format!("server {name}: {e}"),
            format!("add the rule it names to [servers.{name}] egress.allow, or fix the url"),
        ),
    }
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = match url.strip_prefix("https://") {
        Some(r) => (443, r),
        None => (80, url.strip_prefix("http://")?),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((h.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}

/// `--start`: every server started once, as the gateway would, then stopped.
pub async fn start_each(policy: &Policy, scope: &str) -> Vec<Finding> {
    let firewall = crate::sandbox::firewall::Firewall::transient(&policy.egress, "doctor");
    let backends = Arc::new(crate::sandbox::backends::Backends::new(scope, firewall));
    let (runtime, _) = backends.for_policy(policy).await;
    crate::upstream::stderr::set_default_rate(policy.gateway.server_log_rate);
    let starts = policy.servers.values().map(|server| {
        let runtime = runtime.clone();
        async move { start_one(server, runtime).await }
    });
    let out = futures_util::future::join_all(starts).await;
    backends.shutdown().await;
    out
}

async fn start_one(server: &Server, runtime: Arc<dyn crate::sandbox::Runtime>) -> Finding {
    use crate::upstream::{StartOptions, State, Upstream, UpstreamEvent};
    let name = &server.name;
    let (events, mut rx) = tokio::sync::mpsc::channel(64);
    let up = Upstream::start(
        server.clone(),
        runtime,
        events,
        StartOptions {
            restart: false,
            ..StartOptions::default()
        },
    );
    let limit = server.startup_timeout + START_SLACK;
    // The first start's outcome; what the server sends meanwhile is dropped (which also lets
    // its connection read on).
    let outcome = tokio::time::timeout(limit, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                UpstreamEvent::Ready { .. } => return Ok(()),
                UpstreamEvent::Down { reason, .. } => return Err(reason),
                UpstreamEvent::Notification { .. } | UpstreamEvent::Request { .. } => {}
            }
        }
        Err("the supervisor ended without a result".to_owned())
    })
    .await;
    let finding = match outcome {
        Ok(Ok(())) => {
            let info = up.init_info();
            let who = info
                .as_ref()
                .map(|i| {
                    ["name", "version"]
                        .iter()
                        .filter_map(|k| i.server_info.get(*k).and_then(|v| v.as_str()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "the server".to_owned());
            let protocol = info
                .as_ref()
                .map(|i| i.protocol_version.clone())
                .unwrap_or_default();
            let asked = match info.map(|i| i.era) {
                Some(crate::upstream::Era::Modern) => "server/discover",
                _ => "initialize",
            };
            Finding::ok(format!(
                "server {name}: started; {asked} answered by {who} (protocol {protocol})"
            ))
        }
        Ok(Err(reason)) => Finding::problem(
            Status::Fail,
            format!("server {name}: did not start: {reason}"),
            match server.runtime {
                Runtime::Remote(_) => format!(
                    "check [servers.{name}] url, egress.allow and credentials (headers, oauth, secrets)"
                ),
                Runtime::OpenApi(_) => format!(
                    "check [servers.{name}] spec, base_url, egress.allow and credentials (headers, oauth, secrets)"
                ),
                _ => format!(
                    "run its command by hand to see it fail, then fix [servers.{name}] (command, args, env, secrets) or install what it needs"
                ),
            },
        ),
        Err(_) => Finding::problem(
            Status::Fail,
            format!(
                "server {name}: {}",
                crate::upstream::stderr::with_tail(
                    name,
                    &format!("did not finish starting within {}s", limit.as_secs()),
                    5
                )
            ),
            format!("raise [servers.{name}] startup_timeout if it is slow to start, or look at its log"),
        ),
    };
    up.shutdown();
    let mut state = up.watch_state();
    drop(rx);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, State::Stopped)),
    )
    .await;
    finding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_like_the_gateway_does() {
        assert!(resolve("sh", "/nonexistent:/bin:/usr/bin").is_some());
        assert!(resolve("portcullis-no-such-program", "/bin:/usr/bin").is_none());
        assert!(resolve("/bin/sh", "").is_some());
        let plain = tempfile_path();
        assert!(resolve(&plain, "").is_none(), "not executable");
        let _ = std::fs::remove_file(&plain);
    }

    fn tempfile_path() -> String {
        let p = std::env::temp_dir().join(format!("portcullis-doctor-{}", std::process::id()));
        std::fs::write(&p, "not a program").unwrap();
        p.display().to_string()
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("https://mcp.example.com/mcp"),
            Some(("mcp.example.com".into(), 443))
        );
        assert_eq!(
            host_port("http://127.0.0.1:9000/mcp"),
            Some(("127.0.0.1".into(), 9000))
        );
        assert_eq!(host_port("http://[::1]/"), Some(("::1".into(), 80)));
    }
}
