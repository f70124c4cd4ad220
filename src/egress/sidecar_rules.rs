//! The rule set of sidecar mode: one server's table inside the network namespace that the
//! egress agent owns and the server's container joins (`network_mode: container:<agent>`).
//!
//! Pure, like `ruleset.rs`, and built from the same pieces, so `firewall plan` and the
//! programmed table agree. In this namespace there is no bridge to key on: the sandbox's
//! traffic is the namespace's own, so the table judges the `output` and `input` hooks:
//! - `dns` (nat, output, just before Docker's own): questions to Docker's embedded resolver
//!   (`127.0.0.11:53`, what `/etc/resolv.conf` names on a user-defined network) go to the
//!   agent's resolver on `127.0.0.1:53` instead, so Docker's resolver, which would forward to
//!   anything, is never reached.
//! - `output`: loopback only to the resolver (and replies on loopback); DNS to the policy's
//!   upstream resolvers only from sockets of the agent's uid (`meta skuid`): the server runs as
//!   another uid (policy check and the runtime refuse the agent's) and has no capabilities to
//!   change its uid; everything else goes to `srv_NAME`: established, the pinned `ip . port`
//!   sets, the static CIDR rules, the NFLOG rule (the agent's own group), a counted drop.
//! - `input`: established/related, loopback to the resolver, then `in_NAME`: the NFLOG rule and
//!   a counted drop (its "destination" is the server's own address and the port tried).
//!   Nothing outside can open a connection to the server or its agent, except new TCP
//!   connections to the ports of `accept_tcp` (standalone mode only, `--accept-tcp`: on
//!   Kubernetes the gateway reaches the server over the network; a gateway-driven agent talks
//!   to its server over the container's stdio and never opens a port).
//!
//! The chain names of one server are those of the host table (`srv_NAME`, `in_NAME`), so the
//! denial counters and the read-back watch work the same in both modes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::ruleset::{
    in_chain, rule, server_chain, server_drop, srv_chain, Chain, Hook, Match, Rule, Table, Verdict,
    L4,
};
use crate::policy::Server;

/// Where the agent's resolver listens, in the shared namespace.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Docker's embedded resolver, which `/etc/resolv.conf` names on user-defined networks.
pub const DOCKER_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Both transports of DNS to `addr` (port `port`), with `first` before the address match.
fn dns_pair(first: &[Match], addr: Ipv4Addr, port: u16, verdict: Verdict) -> [Rule; 2] {
    [L4::Udp, L4::Tcp].map(|l4| {
        let mut m = first.to_vec();
        m.push(Match::Daddr(IpAddr::V4(addr), 32));
        m.push(Match::Proto(l4, Some(port)));
        rule(m, verdict.clone())
    })
}

/// The table of `server` in its agent's namespace; `agent_uid` owns the agent's sockets,
/// `upstream` are the policy's resolvers, `accept_tcp` the ports open to new inbound TCP and
/// `log` the agent's NFLOG group for drop logs.
pub fn build(
    server: &Server,
    agent_uid: u32,
    upstream: &[SocketAddr],
    accept_tcp: &[u16],
    log: Option<u16>,
) -> Table {
    let mut t = Table::default();
    let name = &server.name;
    let (sets, srv) = server_chain(server, log);
    t.sets = sets;

    let lo_out = [Match::Oif("lo".into())];
    let mut output = vec![rule(
        vec![Match::Oif("lo".into()), Match::CtEstablishedRelated],
        Verdict::Accept,
    )];
    output.extend(dns_pair(&lo_out, RESOLVER, 53, Verdict::Accept));
    for up in upstream {
        if let IpAddr::V4(a) = up.ip() {
            output.extend(dns_pair(
                &[Match::SkUid(agent_uid)],
                a,
                up.port(),
                Verdict::Accept,
            ));
        }
    }
    output.push(rule(vec![], Verdict::Jump(srv_chain(name))));

    let mut input = vec![rule(vec![Match::CtEstablishedRelated], Verdict::Accept)];
    input.extend(dns_pair(
        &[Match::Iif("lo".into())],
        RESOLVER,
        53,
        Verdict::Accept,
    ));
    for port in accept_tcp {
        input.push(rule(
            vec![Match::CtNew, Match::Proto(L4::Tcp, Some(*port))],
            Verdict::Accept,
        ));
    }
    input.push(rule(vec![], Verdict::Jump(in_chain(name))));

    t.chains.push(Chain {
        name: "dns".into(),
        hook: Some(Hook::OutputNat),
        rules: dns_pair(&[], DOCKER_DNS, 53, Verdict::Dnat(RESOLVER, 53)).to_vec(),
        server: None,
    });
    t.chains.push(Chain {
        name: "output".into(),
        hook: Some(Hook::Output),
        rules: output,
        server: None,
    });
    t.chains.push(Chain {
        name: "input".into(),
        hook: Some(Hook::Input),
        rules: input,
        server: None,
    });
    t.chains.push(srv);
    t.chains.push(Chain {
        name: in_chain(name),
        hook: None,
        rules: server_drop(name, log),
        server: Some(name.clone()),
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::ruleset::render;

    #[test]
    fn only_the_agent_reaches_the_upstream_resolvers_and_the_rest_is_dropped() {
        let policy = crate::policy::parse(
            r#"
[egress]
upstream_resolvers = ["198.18.0.53:53"]
[servers.web]
runtime = "docker"
image = "i"
egress.allow = ["api.example.test:443", "10.1.2.0/24:5432"]
"#,
            "<test>",
        )
        .unwrap();
        let s = &policy.servers["web"];
        let text = render(
            "portcullis",
            &build(s, 65533, &policy.egress.upstream_resolvers, &[], Some(7)),
        );
        for line in [
            "type nat hook output priority dstnat - 1; policy accept;",
            "ip daddr 127.0.0.11 udp dport 53 dnat ip to 127.0.0.1:53",
            "type filter hook output priority filter - 10; policy accept;",
            "oifname \"lo\" ip daddr 127.0.0.1 tcp dport 53 accept",
            "meta skuid 65533 ip daddr 198.18.0.53 udp dport 53 accept",
            "meta skuid 65533 ip daddr 198.18.0.53 tcp dport 53 accept",
            "jump srv_web",
            "ip daddr . tcp dport @pin_web accept",
            "ip daddr 10.1.2.0/24 tcp dport 5432 accept",
            "iifname \"lo\" ip daddr 127.0.0.1 udp dport 53 accept",
            "jump in_web",
            "limit rate 20/second burst 20 packets log prefix \"pc:web\" group 7",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        // No rule lets anything but the agent's uid talk DNS to the upstream.
        let upstream_rules: Vec<&str> =
            text.lines().filter(|l| l.contains("198.18.0.53")).collect();
        assert!(upstream_rules
            .iter()
            .all(|l| l.contains("meta skuid 65533")));
        // Both per-server chains end in a counted drop.
        for chain in ["srv_web", "in_web"] {
            let body = text.split(&format!("chain {chain} {{")).nth(1).unwrap();
            let last = body
                .lines()
                .take_while(|l| !l.contains('}'))
                .last()
                .unwrap();
            assert_eq!(last.trim(), "counter drop", "{chain}");
        }
        assert!(!text.contains("ct state new"), "no port is open by default");
    }

    #[test]
    fn accepted_ports_open_only_new_tcp_before_the_inbound_drop() {
        let policy = crate::policy::parse(
            "[servers.web]\nruntime = \"process\"\ncommand = \"true\"\n",
            "<test>",
        )
        .unwrap();
        let text = render(
            "portcullis",
            &build(&policy.servers["web"], 65533, &[], &[8000, 9000], Some(7)),
        );
        let input = text.split("chain input {").nth(1).unwrap();
        let input: Vec<&str> = input.lines().take_while(|l| !l.contains('}')).collect();
        let at = |needle: &str| input.iter().position(|l| l.contains(needle)).unwrap();
        assert!(at("ct state new tcp dport 8000 accept") < at("jump in_web"));
        assert!(at("ct state new tcp dport 9000 accept") < at("jump in_web"));
        assert!(at("ct state established,related accept") < at("tcp dport 8000"));
        // Output is unchanged: an open port lets nothing out.
        let output = text.split("chain output {").nth(1).unwrap();
        assert!(!output.split('}').next().unwrap().contains("8000"));
        // No UDP, and nothing in the server's own chains.
        assert!(!text.contains("udp dport 8000"));
    }
}
