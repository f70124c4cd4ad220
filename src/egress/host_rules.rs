//! The table of host mode: one per gateway instance (`inet portcullis_<instance>`, see
//! `names.rs`), in the host's namespace, judging every sandbox interface of this instance.
//! Pure, like `ruleset.rs`. Shape (one chain pair per sandboxed server):
//! - `forward` and `input` base chains at priority `filter - 10`, policy accept: they only judge
//!   traffic that touches a sandbox interface **of this instance** (`pc<tag>*`), so the host's
//!   own traffic, Docker's other networks and other instances' sandboxes are left to their own
//!   rules. Because the priority is lower than Docker's, a drop here is final whatever Docker
//!   (or another instance's table) accepts.
//! - Sandbox to sandbox is dropped before anything else; traffic into a sandbox is only allowed
//!   as part of a connection the sandbox opened.
//! - `srv_NAME`: [`super::ruleset::server_chain`].
//! - `in_NAME`: from the sandbox to the host, only DNS (UDP and TCP 53) to the server's resolver
//!   address, then the server's NFLOG rule and a counted drop.
//! - Interfaces with this instance's prefix that no server owns are dropped (a stale bridge
//!   left by a crash must not become an open one).
//! - `postrouting` (type nat, only when a process sandbox exists): a veth sandbox's subnet is
//!   masqueraded behind the host's address, so allowed hosts can answer it. Docker does the same
//!   for its bridges itself. NAT changes no verdict: the filter chains above decide.

use std::net::{IpAddr, Ipv4Addr};

use super::names::Names;
use super::ruleset::{
    counted_drop, in_chain, rule, server_chain, server_drop, Chain, Hook, Match, ServerNet, Table,
    Verdict, L4,
};
use crate::policy::{EgressMode, Policy, Runtime, Server};

/// Builds the table for `servers` (each with its attachment) of the instance whose interfaces
/// start with `prefix` ([`Names::iface_prefix`]). Servers are taken in the order given;
/// callers sort for stable output. `log` is the NFLOG group of the servers' drop logs.
pub fn build(prefix: &str, servers: &[(&Server, &ServerNet)], log: Option<u16>) -> Table {
    let mut t = Table::default();
    let prefix = prefix.to_string();
    let mut forward = vec![
        counted_drop(vec![
            Match::IifPrefix(prefix.clone()),
            Match::OifPrefix(prefix.clone()),
        ]),
        rule(
            vec![
                Match::OifPrefix(prefix.clone()),
                Match::CtEstablishedRelated,
            ],
            Verdict::Accept,
        ),
        counted_drop(vec![Match::OifPrefix(prefix.clone())]),
    ];
    let mut input = Vec::new();
    let mut nat = Vec::new();
    let mut per_server = Vec::new();
    for (server, net) in servers {
        let (sets, srv) = server_chain(server, log);
        t.sets.extend(sets);
        forward.push(rule(
            vec![Match::Iif(net.iface.clone())],
            Verdict::Jump(super::ruleset::srv_chain(&server.name)),
        ));
        input.push(rule(
            vec![Match::Iif(net.iface.clone())],
            Verdict::Jump(in_chain(&server.name)),
        ));
        if let Some((addr, prefix)) = net.masquerade {
            nat.push(rule(
                vec![Match::Saddr(IpAddr::V4(addr), prefix)],
                Verdict::Masquerade,
            ));
        }
        let gw = IpAddr::V4(net.gateway);
        let mut inc = vec![
            rule(vec![Match::CtEstablishedRelated], Verdict::Accept),
            rule(
                vec![Match::Daddr(gw, 32), Match::Proto(L4::Udp, Some(53))],
                Verdict::Accept,
            ),
            rule(
                vec![Match::Daddr(gw, 32), Match::Proto(L4::Tcp, Some(53))],
                Verdict::Accept,
            ),
        ];
        inc.extend(server_drop(&server.name, log));
        per_server.push(srv);
        per_server.push(Chain {
            name: in_chain(&server.name),
            hook: None,
            rules: inc,
            server: Some(server.name.clone()),
        });
    }
    forward.push(counted_drop(vec![Match::IifPrefix(prefix.clone())]));
    input.push(counted_drop(vec![Match::IifPrefix(prefix)]));
    t.chains.push(Chain {
        name: "forward".into(),
        hook: Some(Hook::Forward),
        rules: forward,
        server: None,
    });
    t.chains.push(Chain {
        name: "input".into(),
        hook: Some(Hook::Input),
        rules: input,
        server: None,
    });
    if !nat.is_empty() {
        t.chains.push(Chain {
            name: "postrouting".into(),
            hook: Some(Hook::Postrouting),
            rules: nat,
            server: None,
        });
    }
    t.chains.extend(per_server);
    t
}

/// Whether a server gets a firewalled attachment: a docker or process server with at least one
/// egress rule (process servers only when the gateway runs as root, see `netns.rs`). A docker
/// server without rules has no network at all (`none`), so there is nothing to firewall; a
/// process server without rules is a plain child process on the host's network.
pub fn is_firewalled(server: &Server) -> bool {
    matches!(server.runtime, Runtime::Docker(_) | Runtime::Process(_))
        && !server.egress.allow.is_empty()
}

/// Whether `server`'s rules are programmed in the gateway's own table, and so need
/// `CAP_NET_ADMIN` in the gateway's network namespace: a process server's always (its namespace
/// is joined to the gateway's by a veth pair), a docker server's only in host mode. In sidecar
/// mode (`mode`, as resolved by `egress::mode`) a docker server's egress agent holds its table
/// in the server's own namespace, so a gateway with only such servers needs no capability.
pub fn in_gateway_table(server: &Server, mode: EgressMode) -> bool {
    is_firewalled(server)
        && (matches!(server.runtime, Runtime::Process(_)) || mode == EgressMode::Host)
}

/// Why a gateway whose own table is not in force loses nothing when every server with egress
/// rules is held by its agent (said by `doctor` and at start-up).
pub const AGENTS_HOLD_THE_RULES: &str =
    "no server needs it: in sidecar mode each docker server's egress agent holds its rules";

/// Who needs the gateway's own table, and so `CAP_NET_ADMIN` in its network namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum TableNeed<'a> {
    /// These servers' rules are in it ([`in_gateway_table`]): they cannot start without it.
    Servers(Vec<&'a str>),
    /// Servers declare egress, but each one's rules are in its own egress agent's table.
    AgentsOnly,
    /// No server declares egress.
    Nobody,
}

impl<'a> TableNeed<'a> {
    /// For `policy`, in the egress mode this process resolves.
    pub fn of(policy: &'a Policy) -> Self {
        Self::in_mode(policy, super::mode::resolve(policy.egress.mode).mode)
    }

    fn in_mode(policy: &'a Policy, mode: EgressMode) -> Self {
        let servers: Vec<&str> = policy
            .servers
            .values()
            .filter(|s| in_gateway_table(s, mode))
            .map(|s| s.name.as_str())
            .collect();
        if !servers.is_empty() {
            TableNeed::Servers(servers)
        } else if policy.servers.values().any(is_firewalled) {
            TableNeed::AgentsOnly
        } else {
            TableNeed::Nobody
        }
    }
}

/// Deterministic /29 subnets from the pool, in order: slot `i` is `pool + 8*i`.
pub fn subnet_slot(pool: (Ipv4Addr, u8), slot: u32) -> Option<(Ipv4Addr, u8)> {
    let size = 1u64 << (32 - u32::from(pool.1));
    let offset = u64::from(slot) * 8;
    if offset + 8 > size {
        return None;
    }
    let base = u64::from(u32::from(pool.0)) + offset;
    u32::try_from(base).ok().map(|b| (Ipv4Addr::from(b), 29))
}

/// The host's address in a /29 (the first usable one).
pub fn gateway_of(subnet: (Ipv4Addr, u8)) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.0) + 1)
}

/// The attachments for `firewall plan`: firewalled servers in name order take consecutive
/// slots of the pool. At run time a server takes the first free slot when its first sandbox
/// starts, so the addresses can differ; the rules are the same.
pub fn plan_nets(policy: &Policy, names: &Names) -> Vec<ServerNet> {
    policy
        .servers
        .values()
        .filter(|s| is_firewalled(s))
        .enumerate()
        .filter_map(|(i, s)| {
            let slot = u32::try_from(i).ok()?;
            let subnet = subnet_slot(policy.egress.network_pool, slot)?;
            Some(ServerNet {
                server: s.name.clone(),
                iface: names.iface(&s.name),
                gateway: gateway_of(subnet),
                masquerade: matches!(s.runtime, Runtime::Process(_)).then_some(subnet),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::ruleset::plan;

    #[test]
    fn only_process_servers_and_host_mode_docker_servers_need_the_gateways_table() {
        let policy = |servers: &str| {
            crate::policy::parse(
                &format!("[egress]\nupstream_resolvers = [\"198.18.0.53:53\"]\n{servers}"),
                "<test>",
            )
            .unwrap()
        };
        let docker = policy(
            "[servers.web]\nruntime = \"docker\"\nimage = \"i\"\negress.allow = [\"api.example.test:443\"]\n",
        );
        assert_eq!(
            TableNeed::in_mode(&docker, EgressMode::Host),
            TableNeed::Servers(vec!["web"])
        );
        assert_eq!(
            TableNeed::in_mode(&docker, EgressMode::Sidecar),
            TableNeed::AgentsOnly
        );
        let process = policy(
            "[servers.local]\nruntime = \"process\"\ncommand = \"true\"\negress.allow = [\"api.example.test:443\"]\n",
        );
        assert_eq!(
            TableNeed::in_mode(&process, EgressMode::Sidecar),
            TableNeed::Servers(vec!["local"])
        );
        let none = policy("[servers.web]\nruntime = \"docker\"\nimage = \"i\"\n");
        assert_eq!(
            TableNeed::in_mode(&none, EgressMode::Host),
            TableNeed::Nobody
        );
    }

    #[test]
    fn an_instance_judges_only_its_own_interfaces() {
        let policy = crate::policy::parse(
            "[servers.p]\nruntime = \"process\"\ncommand = \"x\"\negress.allow = [\"10.1.2.0/24:5432\"]\n",
            "<test>",
        )
        .unwrap();
        let names = Names::new(crate::instance::InstanceId::parse("team-a").unwrap());
        let other = Names::new(crate::instance::InstanceId::parse("team-b").unwrap());
        let text = plan(&policy, &names);
        assert!(text.contains("table inet portcullis_team_a {"), "{text}");
        let prefix = format!("\"{}*\"", names.iface_prefix());
        // Every wildcard match is this instance's; another instance's never appears.
        for line in text
            .lines()
            .filter(|l| l.contains('*') && !l.starts_with('#'))
        {
            assert!(line.contains(&prefix), "{line}");
        }
        assert!(!text.contains(&other.iface_prefix()), "{text}");
        assert!(!text.contains("\"pc-*\""), "{text}");
    }

    #[test]
    fn only_veth_sandboxes_are_masqueraded_and_servers_without_rules_get_nothing() {
        let policy = crate::policy::parse(
            r#"
[servers.proc]
runtime = "process"
command = "x"
egress.allow = ["api.example.test:443"]
[servers.box]
runtime = "docker"
image = "i"
egress.allow = ["10.1.2.0/24:5432"]
[servers.quiet]
runtime = "docker"
image = "i"
[servers.plain]
runtime = "process"
command = "x"
"#,
            "<test>",
        )
        .unwrap();
        let inst = Names::default();
        let nets = plan_nets(&policy, &inst);
        let names: Vec<&str> = nets.iter().map(|n| n.server.as_str()).collect();
        assert_eq!(
            names,
            ["box", "proc"],
            "servers without rules are not firewalled"
        );
        assert_eq!(
            nets[0].masquerade, None,
            "Docker masquerades its own bridges"
        );
        assert_eq!(nets[1].masquerade, Some((Ipv4Addr::new(10, 213, 0, 8), 29)));
        let text = plan(&policy, &inst);
        assert!(text.contains(
            "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.213.0.8/29 masquerade\n\t}"
        ), "{text}");
        assert!(!text.contains("quiet") && !text.contains("plain"), "{text}");
        let table = build(
            &inst.iface_prefix(),
            &[(&policy.servers["box"], &nets[0])],
            None,
        );
        assert!(table
            .chains
            .iter()
            .all(|c| c.hook != Some(Hook::Postrouting)));
    }

    #[test]
    fn slots_are_slash_29s_inside_the_pool() {
        let pool = (Ipv4Addr::new(10, 213, 0, 0), 16);
        assert_eq!(
            subnet_slot(pool, 0),
            Some((Ipv4Addr::new(10, 213, 0, 0), 29))
        );
        assert_eq!(
            subnet_slot(pool, 33),
            Some((Ipv4Addr::new(10, 213, 1, 8), 29))
        );
        assert_eq!(subnet_slot(pool, 8192), None);
        assert_eq!(
            gateway_of((Ipv4Addr::new(10, 213, 1, 8), 29)),
            Ipv4Addr::new(10, 213, 1, 9)
        );
    }
}
