//! The rule set as data: [`Table`] -> `nft` syntax, and the pieces both modes build from.
//!
//! This module is pure. The same [`Table`] value is rendered as text for `portcullis firewall
//! plan` and translated to netlink messages by `nft.rs`, so what the plan shows is what gets
//! programmed. Who builds a table: `host_rules.rs` (host mode: one table of the gateway's for
//! every sandbox interface), `sidecar_rules.rs` (sidecar mode: one table per egress agent, in
//! the server's own namespace); `plan.rs` renders either for `firewall plan`.
//!
//! Every server's own chain is the same in both modes ([`server_chain`]): `srv_NAME` accepts
//! established/related, then the pinned `ip . port` set, then static CIDR rules, then a
//! rate-limited NFLOG rule naming the server (where the gateway has a group, see
//! `nflog/mod.rs`) and a counted drop. Only TCP is ever accepted (see `dns.rs` for why pins are
//! TCP-only).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use crate::policy::{EgressHost, Server};

pub use super::host_rules::{
    build, gateway_of, in_gateway_table, is_firewalled, plan_nets, subnet_slot, TableNeed,
    AGENTS_HOLD_THE_RULES,
};
pub use super::plan::plan;

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
    /// The first packet of a connection (`ct state new`).
    CtNew,
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
    /// Not a verdict: a rate-limited NFLOG statement (`limit rate` then `log group`), after
    /// which the next rule is evaluated (see `nflog/mod.rs`).
    Log {
        group: u16,
        prefix: String,
    },
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

pub(super) fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
    Rule {
        matches,
        counter: false,
        verdict,
    }
}

pub(super) fn counted_drop(matches: Vec<Match>) -> Rule {
    Rule {
        matches,
        counter: true,
        verdict: Verdict::Drop,
    }
}

/// The end of a server's own chain: a rate-limited log naming the server to NFLOG `group`
/// (when the gateway has one), then the counted drop, so counts stay exact whatever the log
/// rate drops.
pub(super) fn server_drop(server: &str, group: Option<u16>) -> Vec<Rule> {
    let mut out = Vec::new();
    if let Some(group) = group {
        out.push(rule(
            vec![],
            Verdict::Log {
                group,
                prefix: super::nflog::prefix(server),
            },
        ));
    }
    out.push(counted_drop(vec![]));
    out
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

/// `server`'s own chain (`srv_NAME`) and the pin sets it looks up, the same in both modes:
/// established/related, the pinned `ip . port` and `ip` sets, the static CIDR rules, then a
/// counted drop (logged to NFLOG `log` first, when given).
pub fn server_chain(server: &Server, log: Option<u16>) -> (Vec<SetDef>, Chain) {
    let name = &server.name;
    let (by_port, any_port) = needs_sets(server);
    let mut sets = Vec::new();
    let mut srv = vec![rule(vec![Match::CtEstablishedRelated], Verdict::Accept)];
    if by_port {
        sets.push(SetDef {
            name: pin_set(name),
            kind: SetKind::AddrPort,
        });
        srv.push(rule(
            vec![
                Match::Proto(L4::Tcp, None),
                Match::DaddrDportIn(pin_set(name)),
            ],
            Verdict::Accept,
        ));
    }
    if any_port {
        sets.push(SetDef {
            name: pin_any_set(name),
            kind: SetKind::Addr,
        });
        srv.push(rule(
            vec![
                Match::Proto(L4::Tcp, None),
                Match::DaddrIn(pin_any_set(name)),
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
    srv.extend(server_drop(name, log));
    let chain = Chain {
        name: srv_chain(name),
        hook: None,
        rules: srv,
        server: Some(name.clone()),
    };
    (sets, chain)
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
            Match::CtNew => parts.push("ct state new".into()),
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
        Verdict::Log { group, prefix } => {
            let rate = super::nflog::RATE;
            format!("limit rate {rate}/second burst {rate} packets log prefix \"{prefix}\" group {group}")
        }
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
}
