//! `portcullis firewall plan`: the rule set a policy would program, as `nft` text, in either
//! egress mode. Pure: the tables are the ones the runtime programs (`host_rules.rs`,
//! `sidecar_rules.rs`), rendered by `ruleset::render`.
//!
//! The mode is the policy's written `[egress] mode`; `auto` is planned as host mode unless the
//! caller asks for sidecar mode, since where the gateway will run (which decides `auto`, see
//! `mode.rs`) is not known where the plan is made.

use std::fmt::Write;

use super::names::Names;
use super::ruleset::{build, plan_nets, render, ServerNet};
use super::sidecar_rules;
use crate::policy::{EgressMode, Policy, Runtime, Server, AGENT_UID};

/// The whole plan of a policy for instance `names` as `nft` text, in the policy's written mode
/// (`auto`: host).
pub fn plan(policy: &Policy, names: &Names) -> String {
    plan_mode(policy, names, policy.egress.mode)
}

/// [`plan`] in `mode` (`auto`: host).
pub fn plan_mode(policy: &Policy, names: &Names, mode: EgressMode) -> String {
    match mode {
        EgressMode::Sidecar => sidecar_plan(policy, names),
        EgressMode::Host | EgressMode::Auto => host_plan(policy, names),
    }
}

/// Host mode: the gateway's one table (the golden files in `firewall/` are this text).
fn host_plan(policy: &Policy, names: &Names) -> String {
    let nets = plan_nets(policy, names);
    let pairs: Vec<(&Server, &ServerNet)> = nets
        .iter()
        .filter_map(|n| policy.servers.get(&n.server).map(|s| (s, n)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Egress rule set for {} (rendered by `portcullis firewall plan`).",
        policy.origin
    );
    let _ = writeln!(
        out,
        "# Programmed through netlink as one atomic batch; pin sets are filled at run time by"
    );
    let _ = writeln!(
        out,
        "# the resolver. Addresses are examples from network_pool {}/{}: at run time a server",
        policy.egress.network_pool.0, policy.egress.network_pool.1
    );
    let _ = writeln!(
        out,
        "# takes the first free /29 when its first sandbox starts. Servers without egress rules"
    );
    let _ = writeln!(
        out,
        "# are not listed: docker ones run with no network, process ones on the host's network."
    );
    let _ = writeln!(
        out,
        "# Instance {}: its table and interface names (`{}*`) are its own; other gateways'",
        names.instance(),
        names.iface_prefix()
    );
    let _ = writeln!(
        out,
        "# tables judge only their own interfaces. Created with flags owner and persist."
    );
    for (s, n) in &pairs {
        let kind = match s.runtime {
            Runtime::Docker(_) => "docker bridge",
            _ => "process netns veth (when running as root)",
        };
        let allow: Vec<String> = s.egress.allow.iter().map(|r| r.to_string()).collect();
        let _ = writeln!(
            out,
            "# server {}: {kind} {}, resolver {}:53, allow [{}]",
            s.name,
            n.iface,
            n.gateway,
            allow.join(", ")
        );
    }
    out.push_str(&render(
        &names.table(),
        &build(&names.iface_prefix(), &pairs, Some(log_group(names))),
    ));
    out
}

/// Sidecar mode: one table per firewalled docker server, programmed by its egress agent in the
/// server's own namespace; process servers keep a table of the gateway's (their namespaces
/// hang off the gateway's own), printed first when there are any.
fn sidecar_plan(policy: &Policy, names: &Names) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Egress rule sets for {} in sidecar mode (rendered by `portcullis firewall plan`).",
        policy.origin
    );
    let _ = writeln!(
        out,
        "# Each docker server with egress rules gets a `portcullis egress-agent` container on a"
    );
    let _ = writeln!(
        out,
        "# network of its own; the agent (uid {AGENT_UID}) programs the table below in that network"
    );
    let _ = writeln!(
        out,
        "# namespace, which the server's container joins with no capabilities. Programmed through"
    );
    let _ = writeln!(
        out,
        "# netlink as one atomic batch, with flags owner and persist; pin sets are filled at run"
    );
    let _ = writeln!(
        out,
        "# time by the agent's resolver on 127.0.0.1:53. Servers without egress rules are not"
    );
    let _ = writeln!(
        out,
        "# listed: docker ones run with no network, process ones on the gateway's network."
    );
    let upstream: Vec<String> = policy
        .egress
        .upstream_resolvers
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "# Upstream resolvers (reached by the agent's own sockets only): {}",
        upstream.join(", ")
    );
    let process: Vec<&Server> = policy
        .servers
        .values()
        .filter(|s| matches!(s.runtime, Runtime::Process(_)) && !s.egress.allow.is_empty())
        .collect();
    if !process.is_empty() {
        let nets: Vec<ServerNet> = plan_nets(policy, names)
            .into_iter()
            .filter(|n| process.iter().any(|s| s.name == n.server))
            .collect();
        let pairs: Vec<(&Server, &ServerNet)> = nets
            .iter()
            .filter_map(|n| policy.servers.get(&n.server).map(|s| (s, n)))
            .collect();
        let _ = writeln!(
            out,
            "\n# Process servers: the gateway's own table, in the gateway's network namespace."
        );
        out.push_str(&render(
            &names.table(),
            &build(&names.iface_prefix(), &pairs, Some(log_group(names))),
        ));
    }
    for s in policy
        .servers
        .values()
        .filter(|s| matches!(s.runtime, Runtime::Docker(_)) && !s.egress.allow.is_empty())
    {
        let allow: Vec<String> = s.egress.allow.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\n# server {}: in the namespace of its egress agent, allow [{}]",
            s.name,
            allow.join(", ")
        );
        out.push_str(&render(
            &names.table(),
            &sidecar_rules::build(
                s,
                AGENT_UID,
                &policy.egress.upstream_resolvers,
                &[],
                Some(log_group(names)),
            ),
        ));
    }
    out
}

/// The NFLOG group the plan shows: the first one the instance tries (a gateway takes the next
/// free one when another socket holds it, and logs which).
fn log_group(names: &Names) -> u16 {
    super::nflog::base_group(names.instance().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[egress]
mode = "sidecar"
upstream_resolvers = ["198.18.0.53:53"]
[servers.web]
runtime = "docker"
image = "i"
egress.allow = ["api.example.test:443"]
[servers.quiet]
runtime = "docker"
image = "i"
[servers.proc]
runtime = "process"
command = "x"
egress.allow = ["10.1.2.0/24:5432"]
"#;

    #[test]
    fn sidecar_mode_plans_one_agent_table_per_docker_server() {
        let policy = crate::policy::parse(POLICY, "<test>").unwrap();
        let names = Names::default();
        let text = plan(&policy, &names);
        assert!(text.contains("in sidecar mode"), "{text}");
        // The agent's table: DNS to the upstream only from the agent's uid, the rest judged by
        // the server's chain.
        assert!(
            text.contains(&format!(
                "meta skuid {AGENT_UID} ip daddr 198.18.0.53 udp dport 53 accept"
            )),
            "{text}"
        );
        assert!(text.contains("# server web: in the namespace of its egress agent"));
        assert!(text.contains("type filter hook output priority filter - 10;"));
        // The process server stays on the gateway's own table; a server without rules has none.
        assert!(text.contains("type filter hook forward priority filter - 10;"));
        assert!(!text.contains("quiet"), "{text}");
        assert_eq!(
            text.matches(&format!("table inet {} {{", names.table()))
                .count(),
            2
        );
        // Host mode is the same policy's other plan.
        let host = plan_mode(&policy, &names, EgressMode::Host);
        assert!(!host.contains("meta skuid"), "{host}");
    }
}
