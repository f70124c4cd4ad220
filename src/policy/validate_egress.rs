//! Validation of egress: the gateway-wide `[egress]` settings (upstream resolvers, pin
//! lifetimes, the network pool, the DNS budget) and a server's `egress` table (its rules and its
//! own DNS budget).

use std::net::SocketAddr;

use toml::{Spanned, Value};

use super::egress::parse_egress;
use super::model::{Egress, EgressMode, EgressSettings, Rate};
use super::raw::{RawEgress, RawEgressSettings};
use super::validate::Checker;

/// An IPv4 network for sandbox subnets: `a.b.c.d/n` with no host bits and room for /29s.
fn parse_v4_pool(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or("write an IPv4 network like \"10.213.0.0/16\"")?;
    let addr: std::net::Ipv4Addr = a.parse().map_err(|_| "not an IPv4 address".to_string())?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|n| (8..=28).contains(n))
        .ok_or("the prefix length must be 8 to 28 (each server takes a /29)")?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(addr) & !mask != 0 {
        return Err("host bits are set".into());
    }
    Ok((addr, prefix))
}

impl Checker<'_> {
    pub(super) fn egress_settings(&mut self, e: RawEgressSettings) -> EgressSettings {
        let d = EgressSettings::default();
        let mut upstream_resolvers = Vec::new();
        for r in e.upstream_resolvers.iter().flatten() {
            match r.get_ref().parse::<SocketAddr>() {
                Ok(a) => upstream_resolvers.push(a),
                Err(_) => self.error(
                    r.span().start,
                    format!(
                        "invalid upstream resolver \"{}\"; use IP:PORT, like \"10.0.0.2:53\" (host names are not resolved)",
                        r.get_ref()
                    ),
                ),
            }
        }
        let pin_ttl_min = self
            .duration(&e.pin_ttl_min, "pin_ttl_min")
            .unwrap_or(d.pin_ttl_min);
        let pin_ttl_max = self
            .duration(&e.pin_ttl_max, "pin_ttl_max")
            .unwrap_or(d.pin_ttl_max);
        if pin_ttl_min > pin_ttl_max {
            let at = e
                .pin_ttl_min
                .as_ref()
                .or(e.pin_ttl_max.as_ref())
                .map_or(0, |v| v.span().start);
            self.error(
                at,
                format!("`pin_ttl_min` ({pin_ttl_min:?}) is longer than `pin_ttl_max` ({pin_ttl_max:?}); the floor must not exceed the cap"),
            );
        }
        if pin_ttl_min.is_zero() {
            if let Some(v) = &e.pin_ttl_min {
                self.error(v.span().start, "`pin_ttl_min` must be at least 1s: a pin that expires at once would refuse the connection its answer was for");
            }
        }
        let max_addresses_per_name = self
            .count(&e.max_addresses_per_name, "max_addresses_per_name", (1, 64))
            .map_or(d.max_addresses_per_name, |n| n as usize);
        let network_pool = match &e.network_pool {
            None => d.network_pool,
            Some(p) => match parse_v4_pool(p.get_ref()) {
                Ok(pool) => pool,
                Err(why) => {
                    self.error(
                        p.span().start,
                        format!("invalid `network_pool` \"{}\": {why}", p.get_ref()),
                    );
                    d.network_pool
                }
            },
        };
        let mode = match &e.mode {
            None => EgressMode::Auto,
            Some(m) => match m.get_ref().as_str() {
                "host" => EgressMode::Host,
                "sidecar" => EgressMode::Sidecar,
                "auto" => EgressMode::Auto,
                other => {
                    self.error(
                        m.span().start,
                        format!("invalid `mode` \"{other}\"; use \"host\" (the gateway shares the host's network namespace), \"sidecar\" (an egress agent container per server network) or \"auto\""),
                    );
                    EgressMode::Auto
                }
            },
        };
        let agent_image = e.agent_image.as_ref().map(|i| i.get_ref().clone());
        if let Some(i) = &e.agent_image {
            if i.get_ref().trim().is_empty() {
                self.error(i.span().start, "`agent_image` is empty; name the gateway's image (e.g. \"portcullis:latest\") or leave it out to use the image of the gateway's own container");
            }
        }
        EgressSettings {
            mode,
            agent_image,
            upstream_resolvers,
            pin_ttl_min,
            pin_ttl_max,
            max_addresses_per_name,
            network_pool,
            allow_unconfined_process: e
                .allow_unconfined_process
                .unwrap_or(d.allow_unconfined_process),
            dns_rate: self.dns_rate(&e.dns_rate, "dns_rate").unwrap_or(d.dns_rate),
        }
    }

    /// A server's `egress` table; `runtime` is the server's runtime as written.
    pub(super) fn server_egress(
        &mut self,
        server: &str,
        runtime: &str,
        raw: Option<&RawEgress>,
    ) -> Egress {
        let mut egress = Egress::default();
        let Some(raw) = raw else {
            return egress;
        };
        for r in raw.allow.iter().flatten() {
            match parse_egress(r.get_ref()) {
                Ok(rule) => egress.allow.push(rule),
                Err(e) => self.error(r.span().start, e),
            }
        }
        // A remote or openapi server has no sandbox resolver: the gateway resolves its names
        // for itself, so a budget there would limit nothing.
        if let (Some(v), "remote" | "openapi") = (&raw.dns_rate, runtime) {
            self.error(
                self.key_at(v.span().start, "dns_rate"),
                format!("`egress.dns_rate` budgets the DNS questions of a sandbox (runtime = \"docker\" or \"process\"); [servers.{server}] is \"{runtime}\", whose names the gateway resolves for itself, so remove it"),
            );
            return egress;
        }
        egress.dns_rate = self.dns_rate(&raw.dns_rate, "egress.dns_rate");
        egress
    }

    /// A DNS budget: a rate like any other, but never zero (a server that must resolve nothing
    /// needs no name rules, and a zero budget would only look like a broken resolver).
    fn dns_rate(&mut self, v: &Option<Spanned<Value>>, key: &str) -> Option<Rate> {
        let written = v.as_ref()?;
        let quota = match written.get_ref() {
            Value::String(s) => Some(s.as_str()),
            Value::Table(t) => t.get("quota").and_then(Value::as_str),
            _ => None,
        };
        if let Some(q) = quota {
            if q.split_once('/')
                .is_some_and(|(n, _)| n.trim().parse::<u64>() == Ok(0))
            {
                self.error(
                    written.span().start,
                    format!("`{key}` = \"{q}\" allows no DNS question at all; write a budget like \"50/s\" (a server that must resolve nothing needs no name rules in egress.allow)"),
                );
                return None;
            }
        }
        self.rate_for(v, key)
    }
}
