//! The rule set as data: policy -> [`Table`] -> `nft` syntax.
//!
//! This module is pure. The same [`Table`] value is rendered as text for `portcullis firewall
//! plan` and translated to netlink messages by `nft.rs`, so what the plan shows is what gets
//! programmed.
//!
//! One table per gateway instance (`inet portcullis_<instance>`, see `names.rs`). Shape (one
//! chain pair per sandboxed server):
//! - `forward` and `input` base chains at priority `filter - 10`, policy accept: they only judge
//!   traffic that touches a sandbox interface **of this instance** (`pc<tag>*`), so the host's
//!   own traffic, Docker's other networks and other instances' sandboxes are left to their own
//!   rules. Because the priority is lower than Docker's, a drop here is final whatever Docker
//!   (or another instance's table) accepts.
//! - Sandbox to sandbox is dropped before anything else; traffic into a sandbox is only allowed
//!   as part of a connection the sandbox opened.
//! - `srv_NAME`: established/related, then the pinned `ip . port` set, then static CIDR rules,
//!   then a counted drop. Only TCP is ever accepted (see `dns.rs` for why pins are TCP-only).
//! - `in_NAME`: from the sandbox to the host, only DNS (UDP and TCP 53) to the server's resolver
//!   address, then a counted drop.
//! - Interfaces with this instance's prefix that no server owns are dropped (a stale bridge
//!   left by a crash must not become an open one).
//! - `postrouting` (type nat, only when a process sandbox exists): a veth sandbox's subnet is
//!   masqueraded behind the host's address, so allowed hosts can answer it. Docker does the same
//!   for its bridges itself. NAT changes no verdict: the filter chains above decide.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use super::names::Names;
use crate::policy::{EgressHost, Policy, Runtime, Server};

/// Lower than Docker's `filter` (0), so our verdicts come first.
pub const PRIORITY: i32 = -10;
/// The standard source-NAT priority (`srcnat`).
pub const NAT_PRIORITY: i32 = 100;

/// Chain and set names: server names are `[A-Za-z0-9-]`, and `-` is not valid in an unquoted
/// nft identifier; `_` never occurs in a server name, so the mapping is one-to-one.
pub fn ident(server: &str) -> String {
    server.replace('-', "_")
}

pub fn pin_set(server: &str) -> String {
    format!("pin_{}", ident(server))
}

/// The set for names allowed on every port (`host` without `:port`): keyed by address only.
pub fn pin_any_set(server: &str) -> String {
    format!("pinany_{}", ident(server))
}

pub fn srv_chain(server: &str) -> String {
    format!("srv_{}", ident(server))
}

pub fn in_chain(server: &str) -> String {
    format!("in_{}", ident(server))
}

/// Where one server's sandbox attaches on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNet {
    pub server: String,
    /// Host-side interface (bridge for docker, veth for a process namespace).
    pub iface: String,
    /// The host's address on that interface; the resolver listens here.
    pub gateway: Ipv4Addr,
    /// The sandbox subnet to masquerade (veth sandboxes; Docker masquerades its bridges).
    pub masquerade: Option<(Ipv4Addr, u8)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Forward,
    Input,
    /// Source NAT (a `nat` chain).
    Postrouting,
    /// Locally generated traffic (sidecar mode: the agent's namespace is the sandbox's).
    Output,
    /// Destination NAT of locally generated traffic, just before Docker's own (sidecar mode:
    /// Docker's embedded resolver address is sent to the agent's resolver).
    OutputNat,
}

/// One before Docker's `dstnat` (-100) output chain: the first NAT mapping of a connection
/// is the one that sticks.
pub const OUTPUT_NAT_PRIORITY: i32 = -101;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKind {
    /// `ipv4_addr . inet_service`
    AddrPort,
    /// `ipv4_addr`
    Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub name: String,
    pub kind: SetKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }
    fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// One condition of a rule. Conditions are ANDed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Iif(String),
    Oif(String),
    /// The owner (uid) of the sending socket; only meaningful on output.
    SkUid(u32),
    IifPrefix(String),
    OifPrefix(String),
    CtEstablishedRelated,
    /// Destination inside an address range (the family is implied by the address).
    Daddr(IpAddr, u8),
    /// Source inside an address range.
    Saddr(IpAddr, u8),
    /// The transport protocol, optionally with a destination port.
    Proto(L4, Option<u16>),
    /// `ip daddr . tcp dport @set`
    DaddrDportIn(String),
    /// `ip daddr @set` (TCP only, checked by a preceding `Proto`)
    DaddrIn(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    /// Source NAT to the outgoing interface's address (nat chains only).
    Masquerade,
    /// Destination NAT to this IPv4 address and port (nat chains only).
    Dnat(Ipv4Addr, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
    /// The server this chain belongs to, for denial counters.
    pub server: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub sets: Vec<SetDef>,
    pub chains: Vec<Chain>,
}

fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
    Rule {
        matches,
        counter: false,
        verdict,
    }
}

fn counted_drop(matches: Vec<Match>) -> Rule {
    Rule {
        matches,
        counter: true,
        verdict: Verdict::Drop,
    }
}

/// Which sets a server needs, from its name rules.
pub fn needs_sets(server: &Server) -> (bool, bool) {
    let mut by_port = false;
    let mut any_port = false;
    for r in &server.egress.allow {
        if matches!(r.host, EgressHost::Name(_) | EgressHost::Wildcard(_)) {
            match r.port {
                Some(_) => by_port = true,
                None => any_port = true,
            }
        }
    }
    (by_port, any_port)
}

/// Builds the table for `servers` (each with its attachment) of the instance whose interfaces
/// start with `prefix` ([`Names::iface_prefix`]). Servers are taken in the order given;
/// callers sort for stable output.
pub fn build(prefix: &str, servers: &[(&Server, &ServerNet)]) -> Table {
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
        let (by_port, any_port) = needs_sets(server);
        let mut srv = vec![rule(vec![Match::CtEstablishedRelated], Verdict::Accept)];
        if by_port {
            t.sets.push(SetDef {
                name: pin_set(&server.name),
                kind: SetKind::AddrPort,
            });
            srv.push(rule(
                vec![
                    Match::Proto(L4::Tcp, None),
                    Match::DaddrDportIn(pin_set(&server.name)),
                ],
                Verdict::Accept,
            ));
        }
        if any_port {
            t.sets.push(SetDef {
                name: pin_any_set(&server.name),
                kind: SetKind::Addr,
            });
            srv.push(rule(
                vec![
                    Match::Proto(L4::Tcp, None),
                    Match::DaddrIn(pin_any_set(&server.name)),
                ],
                Verdict::Accept,
            ));
        }
        for r in &server.egress.allow {
            if let EgressHost::Cidr { addr, prefix } = r.host {
                srv.push(rule(
                    vec![Match::Daddr(addr, prefix), Match::Proto(L4::Tcp, r.port)],
                    Verdict::Accept,
                ));
            }
        }
        srv.push(counted_drop(vec![]));
        forward.push(rule(
            vec![Match::Iif(net.iface.clone())],
            Verdict::Jump(srv_chain(&server.name)),
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
        let inc = vec![
            rule(vec![Match::CtEstablishedRelated], Verdict::Accept),
            rule(
                vec![Match::Daddr(gw, 32), Match::Proto(L4::Udp, Some(53))],
                Verdict::Accept,
            ),
            rule(
                vec![Match::Daddr(gw, 32), Match::Proto(L4::Tcp, Some(53))],
                Verdict::Accept,
            ),
            counted_drop(vec![]),
        ];
        per_server.push(Chain {
            name: srv_chain(&server.name),
            hook: None,
            rules: srv,
            server: Some(server.name.clone()),
        });
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

/// The whole plan of a policy for instance `names` as `nft` text.
pub fn plan(policy: &Policy, names: &Names) -> String {
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
        &build(&names.iface_prefix(), &pairs),
    ));
    out
}

/// `nft -f` syntax for the table named `table`.
pub fn render(table: &str, t: &Table) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "table inet {table} {{");
    for s in &t.sets {
        let ty = match s.kind {
            SetKind::AddrPort => "ipv4_addr . inet_service",
            SetKind::Addr => "ipv4_addr",
        };
        let _ = writeln!(
            o,
            "\tset {} {{\n\t\ttype {ty}\n\t\tflags timeout\n\t}}\n",
            s.name
        );
    }
    for (i, c) in t.chains.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        let _ = writeln!(o, "\tchain {} {{", c.name);
        if let Some(h) = c.hook {
            let line = match h {
                Hook::Forward | Hook::Input => {
                    let hook = if h == Hook::Forward {
                        "forward"
                    } else {
                        "input"
                    };
                    format!(
                        "type filter hook {hook} priority filter - {}; policy accept;",
                        -PRIORITY
                    )
                }
                Hook::Postrouting => {
                    "type nat hook postrouting priority srcnat; policy accept;".to_string()
                }
                Hook::Output => format!(
                    "type filter hook output priority filter - {}; policy accept;",
                    -PRIORITY
                ),
                Hook::OutputNat => format!(
                    "type nat hook output priority dstnat - {}; policy accept;",
                    -100 - OUTPUT_NAT_PRIORITY
                ),
            };
            let _ = writeln!(o, "\t\t{line}");
        }
        for r in &c.rules {
            let _ = writeln!(o, "\t\t{}", render_rule(r));
        }
        let _ = writeln!(o, "\t}}");
    }
    let _ = writeln!(o, "}}");
    o
}

fn render_rule(r: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < r.matches.len() {
        let m = &r.matches[i];
        match m {
            Match::Iif(n) => parts.push(format!("iifname \"{n}\"")),
            Match::Oif(n) => parts.push(format!("oifname \"{n}\"")),
            Match::SkUid(u) => parts.push(format!("meta skuid {u}")),
            Match::IifPrefix(p) => parts.push(format!("iifname \"{p}*\"")),
            Match::OifPrefix(p) => parts.push(format!("oifname \"{p}*\"")),
            Match::CtEstablishedRelated => parts.push("ct state established,related".into()),
            Match::Daddr(IpAddr::V4(a), 32) => parts.push(format!("ip daddr {a}")),
            Match::Daddr(IpAddr::V4(a), p) => parts.push(format!("ip daddr {a}/{p}")),
            Match::Daddr(IpAddr::V6(a), 128) => parts.push(format!("ip6 daddr {a}")),
            Match::Daddr(IpAddr::V6(a), p) => parts.push(format!("ip6 daddr {a}/{p}")),
            Match::Saddr(IpAddr::V4(a), 32) => parts.push(format!("ip saddr {a}")),
            Match::Saddr(IpAddr::V4(a), p) => parts.push(format!("ip saddr {a}/{p}")),
            Match::Saddr(IpAddr::V6(a), 128) => parts.push(format!("ip6 saddr {a}")),
            Match::Saddr(IpAddr::V6(a), p) => parts.push(format!("ip6 saddr {a}/{p}")),
            Match::Proto(l4, Some(port)) => parts.push(format!("{} dport {port}", l4.name())),
            Match::Proto(l4, None) => {
                // A bare protocol followed by a set lookup reads better folded into it.
                match r.matches.get(i + 1) {
                    Some(Match::DaddrDportIn(set)) => {
                        parts.push(format!("ip daddr . {} dport @{set}", l4.name()));
                        i += 1;
                    }
                    Some(Match::DaddrIn(set)) => {
                        parts.push(format!("meta l4proto {} ip daddr @{set}", l4.name()));
                        i += 1;
                    }
                    _ => parts.push(format!("meta l4proto {}", l4.name())),
                }
            }
            Match::DaddrDportIn(set) => parts.push(format!("ip daddr . tcp dport @{set}")),
            Match::DaddrIn(set) => parts.push(format!("ip daddr @{set}")),
        }
        i += 1;
    }
    if r.counter {
        parts.push("counter".into());
    }
    parts.push(match &r.verdict {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Masquerade => "masquerade".into(),
        Verdict::Dnat(a, p) => format!("dnat ip to {a}:{p}"),
    });
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_map_dashes() {
        assert_eq!(ident("my-server"), "my_server");
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
        let table = build(&inst.iface_prefix(), &[(&policy.servers["box"], &nets[0])]);
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
