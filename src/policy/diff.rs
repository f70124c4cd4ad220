//! What changes between the running policy and a newly loaded one, for hot reload.
//!
//! Servers are sorted into three groups: added, removed, and changed. A change is either one
//! that needs the server's instances replaced (`restart`: how it runs, what it may reach, which
//! secrets it gets) or one the router applies in place (`reconfigure`: tool filter, quotas,
//! timeouts). Settings the running listener, audit log or egress worker were built from cannot
//! change live: [`keep_running`] puts the running values back into the new policy and names them,
//! so that the rest of the new file still applies and the operator learns a restart is due.

use super::model::{Policy, Server};

/// The difference between two validated policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyDiff {
    pub servers: ServerChanges,
    /// Clients added, removed or changed in any way (credentials, quota, allow/deny).
    pub clients: Vec<String>,
    /// Clients whose open sessions must end: removed, or their credentials changed (a rotated
    /// token revokes what the old one opened). `anonymous` when authentication became required.
    pub revoked: Vec<String>,
    /// `[auth]` changed (JWT settings, advertised metadata).
    pub auth: bool,
    /// Router settings of `[gateway]` that apply live (`request_timeout`, `page_size`, `naming`,
    /// the pacing of list changes).
    pub gateway: Vec<&'static str>,
}

/// How the set of servers changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Servers whose instances are replaced, with the keys that differ.
    pub restarted: Vec<(String, Vec<&'static str>)>,
    /// Servers whose routing settings change in place, with the keys that differ.
    pub reconfigured: Vec<(String, Vec<&'static str>)>,
}

impl ServerChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.restarted.is_empty()
            && self.reconfigured.is_empty()
    }

    /// Adds `server` to the restarted ones (for a reason the policies cannot show, such as a
    /// rotated secret value), unless it is new, gone or already restarting.
    pub fn restart(&mut self, server: &str, why: &'static str) {
        if self.added.iter().any(|s| s == server) || self.removed.iter().any(|s| s == server) {
            return;
        }
        match self.restarted.iter_mut().find(|(s, _)| s == server) {
            Some((_, keys)) => {
                if !keys.contains(&why) {
                    keys.push(why);
                }
            }
            None => {
                self.restarted.push((server.to_owned(), vec![why]));
                self.restarted.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
    }
}

impl PolicyDiff {
    /// Whether applying the new policy changes nothing that runs.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
            && self.clients.is_empty()
            && self.revoked.is_empty()
            && !self.auth
            && self.gateway.is_empty()
    }
}

/// Compares `old` (running) with `new` (just loaded and validated).
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let mut servers = ServerChanges::default();
    for (name, n) in &new.servers {
        match old.servers.get(name) {
            None => servers.added.push(name.clone()),
            Some(o) => {
                let restart = restart_keys(o, n);
                if !restart.is_empty() {
                    servers.restarted.push((name.clone(), restart));
                } else {
                    let live = live_keys(o, n);
                    if !live.is_empty() {
                        servers.reconfigured.push((name.clone(), live));
                    }
                }
            }
        }
    }
    servers.removed = old
        .servers
        .keys()
        .filter(|n| !new.servers.contains_key(*n))
        .cloned()
        .collect();

    let mut clients: Vec<String> = new
        .clients
        .iter()
        .filter(|(n, c)| old.clients.get(*n) != Some(c))
        .map(|(n, _)| n.clone())
        .collect();
    let mut revoked: Vec<String> = Vec::new();
    for (name, o) in &old.clients {
        match new.clients.get(name) {
            None => {
                clients.push(name.clone());
                revoked.push(name.clone());
            }
            Some(n) => {
                let jwt_changed = o.jwt_subject.is_some() && old.auth.jwt != new.auth.jwt;
                if o.token_sha256 != n.token_sha256 || o.jwt_subject != n.jwt_subject || jwt_changed
                {
                    revoked.push(name.clone());
                }
            }
        }
    }
    if !old.requires_auth() && new.requires_auth() && !revoked.iter().any(|c| c == "anonymous") {
        revoked.push("anonymous".to_owned());
    }
    clients.sort();
    revoked.sort();

    let mut gateway = Vec::new();
    if old.gateway.request_timeout != new.gateway.request_timeout {
        gateway.push("gateway.request_timeout");
    }
    if old.gateway.page_size != new.gateway.page_size {
        gateway.push("gateway.page_size");
    }
    if old.gateway.list_ttl != new.gateway.list_ttl {
        gateway.push("gateway.list_ttl");
    }
    if old.effective_naming() != new.effective_naming() {
        gateway.push("gateway.naming");
    }
    let (o, n) = (&old.gateway.list_changes, &new.gateway.list_changes);
    if o.interval != n.interval {
        gateway.push("gateway.list_changed_interval");
    }
    if (o.unstable_after, o.window) != (n.unstable_after, n.window) {
        gateway.push("gateway.unstable_list_changes");
    }
    if old.gateway.lock != new.gateway.lock {
        gateway.push("gateway.lock");
    }
    PolicyDiff {
        servers,
        clients,
        revoked,
        auth: old.auth != new.auth,
        gateway,
    }
}

/// The names of the listed fields that differ between `$o` and `$n`.
macro_rules! differing {
    ($o:expr, $n:expr; $($field:ident),* $(,)?) => {{
        let mut keys: Vec<&'static str> = Vec::new();
        $(
            if $o.$field != $n.$field {
                keys.push(stringify!($field));
            }
        )*
        keys
    }};
}

/// Keys of a server whose change needs new instances: what runs, how, with what.
fn restart_keys(o: &Server, n: &Server) -> Vec<&'static str> {
    use super::Runtime::{Docker, OpenApi, Process, Remote};
    let mut keys = Vec::new();
    if o.runtime != n.runtime {
        keys.push(match (&o.runtime, &n.runtime) {
            (Docker(_), Docker(_)) => "docker",
            (Process(_), Process(_)) => "process",
            (Remote(_), Remote(_)) => "remote",
            (OpenApi(_), OpenApi(_)) => "openapi",
            _ => "runtime",
        });
    }
    // `sanitize`: a new instance lists again, so its definitions are judged under the new mode.
    keys.extend(differing!(
        o, n; lifecycle, egress, limits, secrets, startup_timeout, max_message_bytes, protocol,
        sanitize
    ));
    if keys == ["egress"] && egress_in_place(o, n) {
        keys.clear();
    }
    keys
}

/// Whether `o`'s egress rules can become `n`'s without new instances: only the allow list of
/// a sandboxed server changes, and it has rules before and after (moving between "no rules"
/// and "rules" changes the instance's network, and the DNS budget lives in its resolver).
/// The runtimes then re-program the running table or egress agent (`reload::apply`).
fn egress_in_place(o: &Server, n: &Server) -> bool {
    use super::Runtime::{Docker, Process};
    matches!(n.runtime, Docker(_) | Process(_))
        && o.egress.dns_rate == n.egress.dns_rate
        && !o.egress.allow.is_empty()
        && !n.egress.allow.is_empty()
}

/// Keys of a server the router and the rate limiter apply without touching its instances, and
/// `egress` when only its allow list changed (see [`egress_in_place`]).
fn live_keys(o: &Server, n: &Server) -> Vec<&'static str> {
    let mut keys =
        differing!(o, n; tools, rate, tool_rates, max_in_flight, queue_timeout, request_timeout);
    if o.egress != n.egress {
        keys.push("egress");
    }
    keys
}

impl ServerChanges {
    /// Servers whose egress rules change in place (their instances keep running).
    pub fn egress_in_place(&self) -> impl Iterator<Item = &str> {
        self.reconfigured
            .iter()
            .filter(|(_, keys)| keys.contains(&"egress"))
            .map(|(name, _)| name.as_str())
    }
}

/// Puts the running values of settings that cannot change live back into `new` and returns the
/// keys whose values differed: the listener (`gateway.*` except the router's settings), `[audit]`
/// and `[egress]`. They take effect at the next start of the gateway.
pub fn keep_running(new: &mut Policy, running: &Policy) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let (g, r) = (&mut new.gateway, &running.gateway);
    macro_rules! keep {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if g.$field != r.$field {
                kept.push($key);
                g.$field.clone_from(&r.$field);
            }
        )*};
    }
    keep!(
        listen => "gateway.listen",
        admin_listen => "gateway.admin_listen",
        tls => "gateway.tls",
        allowed_origins => "gateway.allowed_origins",
        allowed_hosts => "gateway.allowed_hosts",
        max_body_bytes => "gateway.max_body_bytes",
        max_message_bytes => "gateway.max_message_bytes",
        session_idle_timeout => "gateway.session_idle_timeout",
        unused_session_timeout => "gateway.unused_session_timeout",
        max_sessions => "gateway.max_sessions",
        sse_keepalive => "gateway.sse_keepalive",
        sse_poll_interval => "gateway.sse_poll_interval",
        instance => "gateway.instance",
    );
    if new.audit != running.audit {
        kept.push("audit");
        new.audit = running.audit.clone();
    }
    if new.egress != running.egress {
        kept.push("egress");
        new.egress = running.egress.clone();
    }
    // The workspace's agent gets its rules when it connects; sending changed ones to a
    // connected agent is not wired yet, so a change waits for a restart rather than being
    // reported as applied.
    if new.workspace != running.workspace {
        kept.push("workspace");
        new.workspace.clone_from(&running.workspace);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    const BASE: &str = r#"
[gateway]
naming = "prefix"

[servers.a]
runtime = "process"
command = "a"

[servers.b]
runtime = "process"
command = "b"
tools = { deny = ["x"] }

[clients.alice]
token_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
allow = ["a__*"]
"#;

    fn p(src: &str) -> Policy {
        parse(src, "p.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn identical_policies_differ_in_nothing() {
        assert!(diff(&p(BASE), &p(BASE)).is_empty());
    }

    #[test]
    fn servers_are_added_removed_restarted_or_reconfigured() {
        let new = BASE
            .replace("command = \"a\"", "command = \"a\"\nargs = [\"-v\"]")
            .replace("tools = { deny = [\"x\"] }", "tools = { deny = [\"y\"] }")
            + "\n[servers.c]\nruntime = \"process\"\ncommand = \"c\"\n";
        let d = diff(&p(BASE), &p(&new));
        assert_eq!(d.servers.added, vec!["c"]);
        assert!(d.servers.removed.is_empty());
        assert_eq!(d.servers.restarted, vec![("a".to_owned(), vec!["process"])]);
        assert_eq!(
            d.servers.reconfigured,
            vec![("b".to_owned(), vec!["tools"])]
        );

        let without_b = BASE.replace(
            "[servers.b]\nruntime = \"process\"\ncommand = \"b\"\ntools = { deny = [\"x\"] }\n",
            "",
        );
        let d = diff(&p(BASE), &p(&without_b));
        assert_eq!(d.servers.removed, vec!["b"]);
    }

    #[test]
    fn egress_secrets_and_limits_restart_but_quotas_do_not() {
        let new = BASE.replace(
            "command = \"b\"",
            "command = \"b\"\negress.allow = [\"api.example.test:443\"]\nsecrets = { K = \"env:K\" }\nrate = { quota = \"5/min\" }",
        );
        let d = diff(&p(BASE), &p(&new));
        assert_eq!(
            d.servers.restarted,
            vec![("b".to_owned(), vec!["egress", "secrets"])]
        );
        // Only the allow list of a server that has rules before and after: in place.
        let allowed = |rules: &str| {
            BASE.replace(
                "command = \"b\"",
                &format!("command = \"b\"\negress.allow = [{rules}]"),
            )
        };
        let d = diff(
            &p(&allowed("\"api.example.test:443\"")),
            &p(&allowed("\"other.example.test:443\"")),
        );
        assert!(d.servers.restarted.is_empty(), "{d:?}");
        assert_eq!(
            d.servers.reconfigured,
            vec![("b".to_owned(), vec!["egress"])]
        );
        assert_eq!(d.servers.egress_in_place().collect::<Vec<_>>(), vec!["b"]);
        // With another restart key, the new instances bring the new rules.
        let with_args = allowed("\"other.example.test:443\"")
            .replace("command = \"b\"", "command = \"b\"\nargs = [\"-v\"]");
        let d = diff(&p(&allowed("\"api.example.test:443\"")), &p(&with_args));
        assert_eq!(
            d.servers.restarted,
            vec![("b".to_owned(), vec!["process", "egress"])]
        );
        assert!(d.servers.egress_in_place().next().is_none());
        let quota_only = BASE.replace(
            "command = \"b\"",
            "command = \"b\"\nrate = { quota = \"5/min\" }",
        );
        let d = diff(&p(BASE), &p(&quota_only));
        assert!(d.servers.restarted.is_empty());
        assert_eq!(d.servers.reconfigured, vec![("b".to_owned(), vec!["rate"])]);
    }

    #[test]
    fn a_rotated_token_or_a_removed_client_revokes_its_sessions() {
        let rules_only = BASE.replace("allow = [\"a__*\"]", "allow = [\"a__echo\"]");
        let d = diff(&p(BASE), &p(&rules_only));
        assert_eq!(d.clients, vec!["alice"]);
        assert!(d.revoked.is_empty(), "a rule change keeps sessions open");

        let rotated = BASE.replace("1111111111", "2222222222");
        let d = diff(&p(BASE), &p(&rotated));
        assert_eq!(d.revoked, vec!["alice"]);

        let open = "[servers.a]\nruntime = \"process\"\ncommand = \"a\"\n";
        let d = diff(&p(open), &p(BASE));
        assert_eq!(d.revoked, vec!["anonymous"], "auth turned on");
        let d = diff(&p(BASE), &p(open));
        assert_eq!(d.revoked, vec!["alice"]);
    }

    #[test]
    fn auto_naming_flips_with_the_server_count() {
        let one = "[servers.a]\nruntime = \"process\"\ncommand = \"a\"\n";
        let two = format!("{one}[servers.b]\nruntime = \"process\"\ncommand = \"b\"\n");
        let d = diff(&p(one), &p(&two));
        assert_eq!(d.gateway, vec!["gateway.naming"]);
    }

    #[test]
    fn listener_audit_and_egress_settings_keep_their_running_values() {
        let running = p(BASE);
        let mut new = p(&BASE.replace(
            "naming = \"prefix\"",
            "naming = \"prefix\"\nlisten = \"127.0.0.1:9999\"\npage_size = 5\n[audit]\nfsync = \"always\"",
        ));
        let kept = keep_running(&mut new, &running);
        assert_eq!(kept, vec!["gateway.listen", "audit"]);
        assert_eq!(new.gateway.listen, running.gateway.listen);
        assert_eq!(new.audit, running.audit);
        assert_eq!(new.gateway.page_size, 5, "router settings still apply");
        assert_eq!(diff(&running, &new).gateway, vec!["gateway.page_size"]);
    }
}
