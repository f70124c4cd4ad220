//! Helpers of the sidecar-mode tests (`egress_sidecar.rs`) that reach into a server's own
//! network namespace or another's: a service in there, an ICMP echo from there, a container's
//! address; and the gateway's environment for a test's Docker scope.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use portcullis::sandbox::docker::DockerRuntime;
use serde_json::json;

use super::client::Mcp;
use super::netlab;

/// The `docker run` options of an egress agent's container that no gateway starts (standalone,
/// the devcontainer kit): root only until the agent drops to its own uid keeping NET_ADMIN and
/// NET_BIND_SERVICE (SETUID and SETGID serve only that switch), no other capability.
pub const AGENT_PRIVILEGES: [&str; 12] = [
    "--user",
    "0:0",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "NET_BIND_SERVICE",
    "--cap-add",
    "SETUID",
    "--cap-add",
    "SETGID",
];

/// A TCP service answering `ok` on `addr` inside the namespace at `path` (another sandbox's,
/// say): the listener is made in there, then served from a thread of the test.
pub fn listen_in(path: &Path, addr: SocketAddr) {
    use std::io::Write;
    let l = netlab::run_in(path, move || std::net::TcpListener::bind(addr)).expect("bind");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"ok");
        }
    });
}

/// One ICMP echo to `ip` from the namespace at `path` (the test's own with `None`): `true` when
/// its reply came within a second. A raw socket of the test (root), so no `ping` is needed and
/// the packet takes the namespace's own output path, as a server's would.
pub fn icmp_echo(path: Option<&Path>, ip: Ipv4Addr) -> bool {
    let ping = move || {
        use nix::sys::socket::{
            recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag,
            SockProtocol, SockType, SockaddrIn,
        };
        use std::os::fd::AsRawFd;
        let Ok(fd) = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        ) else {
            return false;
        };
        let _ = setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 200_000),
        );
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(7);
        let mut pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'p', b'c', b'l', b's'];
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        let sum = !pkt
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .fold(0u32, |s, w| {
                let s = s + w;
                (s & 0xffff) + (s >> 16)
            }) as u16;
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
        if sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty()).is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let Ok((n, from)) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) else {
                continue;
            };
            // The raw socket sees every ICMP packet of the namespace: only the echo reply
            // (type 0) from `ip` with our identifier counts.
            let ihl = usize::from(buf[0] & 0xf) * 4;
            if n >= ihl + 8
                && from.map(|f| f.ip()) == Some(ip)
                && buf[ihl] == 0
                && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
            {
                return true;
            }
        }
        false
    };
    match path {
        Some(p) => netlab::run_in(p, ping),
        None => ping(),
    }
}

/// The address of a container on its (only) network and that network's gateway.
pub async fn addr_of(rt: &DockerRuntime, id: &str) -> (String, String) {
    let ep = rt
        .api()
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.into_values().next())
        .expect("a network");
    (
        ep.ip_address.expect("an address"),
        ep.gateway.expect("a gateway"),
    )
}

/// The gateway's environment for a test's scope: its Docker scope and instance.
pub fn scope_env(scope: &str) -> [(&'static str, &str); 2] {
    [
        ("PORTCULLIS_DOCKER_SCOPE", scope),
        ("PORTCULLIS_INSTANCE", scope),
    ]
}

/// The fixture's process id inside its container: the same one means the same instance.
pub async fn server_pid(c: &mut Mcp, server: &str) -> String {
    let r = c.call_tool(&format!("{server}__pid"), json!({})).await;
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A connection to `to` made from inside the namespace at `path`, its banner read; kept open
/// by the caller (a probe call cannot hold one).
pub fn tcp_hold(path: &Path, to: SocketAddr) -> Option<TcpStream> {
    netlab::run_in(path, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(700)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).ok()?;
        Some(s)
    })
}

/// One datagram from the test's own namespace (the host) to `to`: `true` when it echoes.
pub fn udp_echoes(to: SocketAddr) -> bool {
    std::net::UdpSocket::bind("0.0.0.0:0").is_ok_and(|s| {
        let mut b = [0u8; 8];
        s.set_read_timeout(Some(Duration::from_millis(700))).is_ok()
            && s.send_to(b"ping", to).is_ok()
            && s.recv_from(&mut b).is_ok()
    })
}

/// The probe that resolves `name` through the server's resolver and connects to port 443 of
/// its first address the instant the answer is in.
pub fn resolve_connect(name: &str) -> serde_json::Value {
    json!({"op": "resolve_connect", "name": name, "port": 443, "timeout_ms": 2000})
}
