//! Where sandbox subnets come from: /29 slots of `[egress] network_pool`, skipping every slot
//! that an address on any interface of the network namespace already sits in (another
//! gateway's sandboxes, a Docker network, a VPN), so gateways sharing a namespace and a pool
//! never hand out the same subnet or bind their resolvers to the same address.
//!
//! Two gateways picking at the same moment are kept apart by [`PoolLock`]: an allocation holds
//! it until its interface carries the address. The routing table is only advice:
//! `policy check` and `doctor` warn when the pool overlaps a route that exists
//! ([`overlapping_routes`]).

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::names::IFACE_MARK;
use super::ruleset;

/// One IPv4 address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAddr {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// The IPv4 addresses of every interface in the namespace at `netns` (`None`: this one).
pub fn interface_addrs(netns: Option<&Path>) -> io::Result<Vec<IfaceAddr>> {
    super::netns::in_netns(netns, || {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                continue;
            };
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            out.push(IfaceAddr {
                iface: ifa.interface_name.clone(),
                addr: addr.ip(),
                prefix,
            });
        }
        Ok(out)
    })
}

fn contains(net: (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(net.1)).unwrap_or(0);
    u32::from(net.0) & mask == u32::from(addr) & mask
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1);
    contains((a.0, p), b.0)
}

/// Why no slot was free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// Slots this gateway holds.
    pub ours: usize,
    /// Addresses of other interfaces that sit in the pool.
    pub taken: Vec<IfaceAddr>,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} used by this gateway's sandboxes", self.ours)?;
        if let Some(first) = self.taken.first() {
            write!(
                f,
                ", {} taken by other interfaces of this network namespace (e.g. {} {}/{})",
                self.taken.len(),
                first.iface,
                first.addr,
                first.prefix
            )?;
        }
        Ok(())
    }
}

/// The first slot of `pool` that this gateway does not hold (`ours`) and that no address in
/// `present` sits in.
pub fn first_free(
    pool: (Ipv4Addr, u8),
    ours: &BTreeSet<u32>,
    present: &[IfaceAddr],
) -> Result<u32, Exhausted> {
    let in_pool: Vec<&IfaceAddr> = present.iter().filter(|a| contains(pool, a.addr)).collect();
    let mut slot = 0u32;
    while let Some(subnet) = ruleset::subnet_slot(pool, slot) {
        if !ours.contains(&slot) && !in_pool.iter().any(|a| contains(subnet, a.addr)) {
            return Ok(slot);
        }
        slot += 1;
    }
    Err(Exhausted {
        ours: ours.len(),
        taken: in_pool.into_iter().cloned().collect(),
    })
}

/// One IPv4 route of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.dest, self.prefix, self.iface)
    }
}

/// The routes of this network namespace that overlap `pool`, when a server of `policy` gets
/// a subnet from it at all; said as a warning for `policy check` and `doctor`.
pub fn pool_warning(policy: &crate::policy::Policy) -> Option<String> {
    if !policy.servers.values().any(ruleset::is_firewalled) {
        return None;
    }
    let pool = policy.egress.network_pool;
    let hits = overlapping_routes(pool, &host_routes().ok()?);
    if hits.is_empty() {
        return None;
    }
    let list: Vec<String> = hits.iter().map(Route::to_string).collect();
    Some(format!(
        "[egress] network_pool {}/{} overlaps routes of this network namespace ({}): sandbox subnets are carved from the pool (addresses in use are skipped), so traffic meant for that range could be routed to a sandbox instead; choose a pool that no route here uses",
        pool.0,
        pool.1,
        list.join(", ")
    ))
}

/// Parses `/proc/net/route` (addresses are hex in host byte order of network-order values).
pub fn parse_routes(text: &str) -> Vec<Route> {
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_le_bytes);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = Ipv4Addr::from(word(f.get(1)?)?);
            let mask = u32::from(Ipv4Addr::from(word(f.get(7)?)?));
            Some(Route {
                iface: (*f.first()?).to_owned(),
                dest,
                prefix: mask.count_ones() as u8,
            })
        })
        .collect()
}

/// The routes of this process's network namespace.
pub fn host_routes() -> io::Result<Vec<Route>> {
    Ok(parse_routes(&std::fs::read_to_string("/proc/net/route")?))
}

/// Routes that overlap `pool`, other than default routes and sandbox interfaces' own routes
/// (`pc…`, which are carved from pools).
pub fn overlapping_routes(pool: (Ipv4Addr, u8), routes: &[Route]) -> Vec<Route> {
    routes
        .iter()
        .filter(|r| r.prefix > 0 && !r.iface.starts_with(IFACE_MARK))
        .filter(|r| overlaps(pool, (r.dest, r.prefix)))
        .cloned()
        .collect()
}

/// Serializes subnet allocation among the gateways of this host: held from choosing a slot
/// until the slot's interface carries its address. An exclusive `flock` on
/// `/run/portcullis/pool.lock`, freed by the kernel if the holder dies. Without a writable
/// `/run` (not root) there is nothing to share a namespace with, and allocation goes on
/// unserialized.
pub struct PoolLock {
    _file: Option<nix::fcntl::Flock<std::fs::File>>,
}

const POOL_LOCK: &str = "/run/portcullis/pool.lock";
/// How long an allocation waits for another gateway's.
const POOL_LOCK_WAIT: Duration = Duration::from_secs(120);

impl PoolLock {
    pub async fn acquire() -> io::Result<PoolLock> {
        let path = Path::new(POOL_LOCK);
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            });
        let Ok(mut file) = opened else {
            return Ok(PoolLock { _file: None });
        };
        let deadline = Instant::now() + POOL_LOCK_WAIT;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(f) => return Ok(PoolLock { _file: Some(f) }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((_, e)) => {
                    return Err(io::Error::other(format!(
                        "cannot take {POOL_LOCK} (another gateway allocating sandbox subnets for over {}s?): {e}",
                        POOL_LOCK_WAIT.as_secs()
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(iface: &str, addr: [u8; 4], prefix: u8) -> IfaceAddr {
        IfaceAddr {
            iface: iface.into(),
            addr: addr.into(),
            prefix,
        }
    }

    #[test]
    fn slots_with_an_address_on_any_interface_are_skipped() {
        let pool = (Ipv4Addr::new(10, 216, 0, 0), 24);
        let none = BTreeSet::new();
        assert_eq!(first_free(pool, &none, &[]), Ok(0));
        // Another gateway's sandbox in slot 0 (its gateway .1), a Docker network in slot 2.
        let present = [
            at("lo", [127, 0, 0, 1], 8),
            at("eth0", [10, 0, 0, 5], 8),
            at("pcaaaaa11111111", [10, 216, 0, 1], 29),
            at("br-x", [10, 216, 0, 17], 29),
        ];
        assert_eq!(first_free(pool, &none, &present), Ok(1));
        assert_eq!(first_free(pool, &BTreeSet::from([1]), &present), Ok(3));
    }

    #[test]
    fn a_full_pool_says_what_fills_it() {
        let pool = (Ipv4Addr::new(10, 216, 0, 0), 28);
        let present = [at("pcbbbbb22222222", [10, 216, 0, 9], 29)];
        let e = first_free(pool, &BTreeSet::from([0]), &present).unwrap_err();
        assert_eq!(e.ours, 1);
        let text = e.to_string();
        assert!(
            text.contains("1 used by this gateway")
                && text.contains("1 taken by other interfaces")
                && text.contains("pcbbbbb22222222 10.216.0.9/29"),
            "{text}"
        );
    }

    #[test]
    fn routes_overlapping_the_pool_are_found() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
            pcaaaaa11111111\t0000D50A\t00000000\t0001\t0\t0\t0\tF8FFFFFF\t0\t0\t0\n";
        let routes = parse_routes(text);
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[1].dest, Ipv4Addr::new(172, 17, 0, 0));
        assert_eq!(routes[1].prefix, 16);
        let pool = (Ipv4Addr::new(10, 213, 0, 0), 16);
        let hits = overlapping_routes(pool, &routes);
        // The VPN's 10/8 overlaps; the default route and the sandbox's own /29 do not count.
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].iface, "tun0");
        assert!(overlapping_routes((Ipv4Addr::new(192, 168, 9, 0), 24), &routes).is_empty());
    }
}
