//! Parsing what the kernel's NFLOG sends: netlink messages of the `nfnetlink_log` subsystem,
//! their attributes (the log prefix names the server), and the start of the logged packet
//! (destination address, protocol, destination port).
//!
//! The packet bytes were written by a sandboxed, possibly hostile server, and the kernel copies
//! only the first bytes of each packet: every read here is bounds-checked and a short or
//! malformed packet yields `None` (or a destination without a port), never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`.
pub const MSG_PACKET: u16 = 4 << 8;
/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG`.
pub const MSG_CONFIG: u16 = (4 << 8) | 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// Attribute types carry two flag bits (nested, network byte order) above the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message: its type and body (after the 16-byte header).
pub struct NlMsg<'a> {
    pub ty: u16,
    pub body: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The messages of one datagram; stops at the first header that does not fit.
pub fn messages(buf: &[u8]) -> Vec<NlMsg<'_>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(rest, 0).map(|l| l as usize) else {
            break;
        };
        let Some(ty) = u16_at(rest, 4) else { break };
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push(NlMsg {
            ty,
            body: &rest[NLMSG_HDRLEN..len],
        });
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    out
}

/// The prefix and packet bytes of one `NFULNL_MSG_PACKET` body (after the netlink header).
pub fn packet_attrs(body: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut prefix = None;
    let mut payload = None;
    let mut rest = body.get(NFGENMSG_LEN..).unwrap_or_default();
    while rest.len() >= 4 {
        let (Some(len), Some(ty)) = (u16_at(rest, 0), u16_at(rest, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || len > rest.len() {
            break;
        }
        let value = &rest[4..len];
        match ty & NLA_TYPE_MASK {
            NFULA_PREFIX => {
                // NUL-terminated in the message.
                prefix = value.split(|b| *b == 0).next();
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    (prefix, payload)
}

/// Where a dropped packet was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub addr: IpAddr,
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// The destination port (TCP, UDP, SCTP, UDP-Lite), when the copy reaches it.
    pub port: Option<u16>,
}

impl Dest {
    /// `tcp`, `udp`, `icmp`, ... or the protocol number.
    pub fn proto_name(&self) -> String {
        match self.proto {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "icmpv6".into(),
            132 => "sctp".into(),
            136 => "udplite".into(),
            n => format!("proto-{n}"),
        }
    }
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// IPv6 extension headers that may precede the transport header (hop-by-hop, routing,
/// destination options); a fragment header or anything else ends the walk without a port.
fn skippable_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 60)
}

/// Bounds the walk over IPv6 extension headers (each can be 2 KiB; the copy is short anyway).
const MAX_EXT_HEADERS: usize = 4;

/// The destination of the packet at the start of `p` (an IPv4 or IPv6 header onwards).
pub fn dest(p: &[u8]) -> Option<Dest> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let proto = *p.get(9)?;
            let a: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            // Only the first fragment (offset 0) carries the transport header.
            let frag_offset = u16::from_be_bytes(p.get(6..8)?.try_into().ok()?) & 0x1fff;
            let port = if has_ports(proto) && frag_offset == 0 {
                port_at(p, ihl)
            } else {
                None
            };
            Some(Dest {
                addr: IpAddr::V4(Ipv4Addr::from(a)),
                proto,
                port,
            })
        }
        6 => {
            let a: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let mut next = *p.get(6)?;
            let mut at = 40usize;
            let mut hops = 0;
            while skippable_ext(next) && hops < MAX_EXT_HEADERS {
                let (Some(&n), Some(&len)) = (p.get(at), p.get(at + 1)) else {
                    break;
                };
                next = n;
                at += (usize::from(len) + 1) * 8;
                hops += 1;
            }
            let port = if has_ports(next) {
                port_at(p, at)
            } else {
                None
            };
            Some(Dest {
                addr: IpAddr::V6(Ipv6Addr::from(a)),
                proto: next,
                port,
            })
        }
        _ => None,
    }
}

/// The destination port of a transport header at `at` (bytes 2..4 for TCP, UDP, SCTP).
fn port_at(p: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(4)?;
    Some(u16::from_be_bytes(p.get(at + 2..end)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(proto: u8, dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 2];
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    fn v6(next: u8, dst: Ipv6Addr, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn ipv4_tcp_udp_and_icmp() {
        let tcp = v4(6, [198, 18, 0, 9], &[0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 0]);
        assert_eq!(
            dest(&tcp),
            Some(Dest {
                addr: "198.18.0.9".parse().unwrap(),
                proto: 6,
                port: Some(443)
            })
        );
        let udp = v4(17, [198, 18, 0, 7], &[0x9c, 0x40, 0, 53]);
        assert_eq!(dest(&udp).unwrap().port, Some(53));
        assert_eq!(dest(&udp).unwrap().proto_name(), "udp");
        let icmp = v4(1, [198, 18, 0, 7], &[8, 0, 0, 0, 0, 0, 0, 0]);
        let d = dest(&icmp).unwrap();
        assert_eq!((d.proto_name().as_str(), d.port), ("icmp", None));
    }

    #[test]
    fn ipv6_with_and_without_extension_headers() {
        let a: Ipv6Addr = "fd00::9".parse().unwrap();
        let tcp = v6(6, a, &[0, 1, 0x1f, 0x90]);
        assert_eq!(dest(&tcp).unwrap().port, Some(8080));
        assert_eq!(dest(&tcp).unwrap().addr, IpAddr::V6(a));
        // A hop-by-hop header (8 bytes) before UDP.
        let mut rest = vec![17, 0, 0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&[0, 1, 0, 53]);
        let udp = v6(0, a, &rest);
        assert_eq!(dest(&udp).unwrap().proto, 17);
        assert_eq!(dest(&udp).unwrap().port, Some(53));
        let icmp6 = v6(58, a, &[128, 0, 0, 0]);
        assert_eq!(dest(&icmp6).unwrap().port, None);
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let tcp = v4(6, [198, 18, 0, 9], &[0x9c, 0x40, 0x01, 0xbb]);
        for n in 0..tcp.len() {
            let d = dest(&tcp[..n]);
            assert!(n >= 20 || d.is_none(), "{n}");
            if n < 24 {
                assert!(d.is_none_or(|d| d.port.is_none()), "{n}");
            }
        }
        let v6p = v6(0, Ipv6Addr::LOCALHOST, &[6, 255]);
        for n in 0..v6p.len() {
            let _ = dest(&v6p[..n]);
        }
        assert_eq!(
            dest(&v6p).unwrap().port,
            None,
            "extension runs past the copy"
        );
        // A header length below the minimum.
        let mut bad = tcp.clone();
        bad[0] = 0x41;
        assert_eq!(dest(&bad), None);
        // A later fragment has no transport header.
        let mut frag = tcp.clone();
        frag[6] = 0x00;
        frag[7] = 0x10;
        assert_eq!(dest(&frag).unwrap().port, None);
        // Deterministic pseudo-random bytes of every length.
        let mut x = 0x1234_5678u32;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = dest(&buf);
            for m in messages(&buf) {
                let _ = packet_attrs(m.body);
            }
            let _ = packet_attrs(&buf);
        }
    }

    #[test]
    fn reads_prefix_and_payload_from_a_packet_message() {
        let payload = v4(17, [198, 18, 0, 7], &[0, 1, 0, 53]);
        let mut body = vec![2, 0, 0, 7]; // nfgenmsg: AF_INET, v0, group 7
        let attr = |ty: u16, v: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            out.extend_from_slice(&ty.to_ne_bytes());
            out.extend_from_slice(v);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        attr(1, &[8, 0, 3, 0], &mut body);
        attr(NFULA_PREFIX, b"pc:web\0", &mut body);
        attr(NFULA_PAYLOAD, &payload, &mut body);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&MSG_PACKET.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        let two = [msg.clone(), msg].concat();
        let ms = messages(&two);
        assert_eq!(ms.len(), 2);
        let (prefix, p) = packet_attrs(ms[1].body);
        assert_eq!(prefix, Some(&b"pc:web"[..]));
        assert_eq!(dest(p.unwrap()).unwrap().port, Some(53));
        // A length that overruns the datagram ends the walk.
        let mut cut = two.clone();
        cut[0] = 0xff;
        assert!(messages(&cut).is_empty());
    }
}
