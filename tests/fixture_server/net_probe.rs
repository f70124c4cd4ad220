//! `net_probe`: one network attempt from inside the server's sandbox, reported as text, so the
//! egress tests can drive bypass attempts through `tools/call`.
//!
//! Operations (argument `op`):
//! - `tcp`: connect to `target` (`ip:port`) and read the 2-byte banner the test's services send:
//!   `connected banner=ok` or `failed: ...`;
//! - `udp`: send a datagram to `target` and wait for the echo: `echo` or `failed: ...`;
//! - `dns`: ask `server` (`ip:port`, or `system` for the first nameserver in /etc/resolv.conf)
//!   for `name`/`qtype` (A, AAAA, TXT, ANY, MX) over UDP, or TCP with `tcp: true`:
//!   `rcode=NOERROR a=198.18.0.10,...` or `failed: ...`;
//! - `resolve_connect`: resolve `name` through the system resolver and connect to the first
//!   address on `port` at once: `connected ip=... banner=ok`, `rcode=REFUSED a=` or `failed: ...`.
//!
//! Everything is bounded by `timeout_ms` (default 1500). It never panics on input: bad
//! arguments come back as `failed: ...`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;

pub fn run(args: &Value) -> String {
    match probe(args) {
        Ok(s) => s,
        Err(e) => format!("failed: {e}"),
    }
}

fn arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument `{key}`"))
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("bad address `{s}`: {e}"))
}

fn probe(args: &Value) -> Result<String, String> {
    let timeout = Duration::from_millis(
        args.get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(1500)
            .clamp(100, 10_000),
    );
    match arg(args, "op")? {
        "tcp" => tcp(addr(arg(args, "target")?)?, timeout).map(|b| format!("connected banner={b}")),
        "udp" => udp(addr(arg(args, "target")?)?, timeout),
        // A hostile server's flood: one datagram to each of `count` ports (from `first_port`)
        // of `ip`, without waiting for anything.
        "udp_spray" => {
            let ip: IpAddr = arg(args, "ip")?
                .parse()
                .map_err(|e| format!("bad ip: {e}"))?;
            let num = |k: &str| {
                args.get(k)
                    .and_then(Value::as_u64)
                    .ok_or(format!("missing {k}"))
            };
            let first = num("first_port")?.clamp(1, 65535) as u16;
            let count = num("count")?.min(20_000) as u16;
            udp_spray(ip, first, count)
        }
        "dns" => {
            let server = match arg(args, "server")? {
                "system" => system_resolver()?,
                s => addr(s)?,
            };
            let qtype = record_type(args.get("qtype").and_then(Value::as_str).unwrap_or("A"))?;
            let over_tcp = args.get("tcp").and_then(Value::as_bool).unwrap_or(false);
            let m = dns(server, arg(args, "name")?, qtype, over_tcp, timeout)?;
            Ok(describe(&m))
        }
        "resolve_connect" => {
            let port = args
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("missing port")?;
            let m = dns(
                system_resolver()?,
                arg(args, "name")?,
                RecordType::A,
                false,
                timeout,
            )?;
            let Some(ip) = a_records(&m).into_iter().next() else {
                return Ok(describe(&m));
            };
            let banner = tcp(SocketAddr::from((ip, port)), timeout)?;
            Ok(format!("connected ip={ip} banner={banner}"))
        }
        other => Err(format!("unknown op `{other}`")),
    }
}

fn tcp(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut c = TcpStream::connect_timeout(&target, timeout).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 2];
    c.read_exact(&mut b)
        .map_err(|e| format!("no banner: {e}"))?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn udp(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.send_to(b"ping", target).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    s.recv_from(&mut buf).map_err(|e| e.to_string())?;
    Ok("echo".to_owned())
}

fn udp_spray(ip: IpAddr, first: u16, count: u16) -> Result<String, String> {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let mut sent = 0u32;
    for i in 0..count {
        let Some(port) = first.checked_add(i) else {
            break;
        };
        // A dropped datagram may still report EPERM: the attempt is what counts.
        let _ = s.send_to(b"x", SocketAddr::from((ip, port)));
        sent += 1;
    }
    Ok(format!("sent {sent}"))
}

fn system_resolver() -> Result<SocketAddr, String> {
    let conf =
        std::fs::read_to_string("/etc/resolv.conf").map_err(|e| format!("resolv.conf: {e}"))?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::from((ip, 53)))
        .ok_or_else(|| "no nameserver in /etc/resolv.conf".to_owned())
}

fn record_type(s: &str) -> Result<RecordType, String> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "TXT" => RecordType::TXT,
        "ANY" => RecordType::ANY,
        "MX" => RecordType::MX,
        other => return Err(format!("unsupported qtype `{other}`")),
    })
}

fn dns(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    over_tcp: bool,
    timeout: Duration,
) -> Result<Message, String> {
    let mut id = [0u8; 2];
    getrandom::getrandom(&mut id).map_err(|e| e.to_string())?;
    let mut q = Message::new();
    q.set_id(u16::from_ne_bytes(id))
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    q.add_query(Query::query(
        Name::from_ascii(&fqdn).map_err(|e| e.to_string())?,
        qtype,
    ));
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let answer = if over_tcp {
        let mut c = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
        c.write_all(&len.to_be_bytes())
            .and_then(|()| c.write_all(&bytes))
            .map_err(|e| e.to_string())?;
        let mut l = [0u8; 2];
        c.read_exact(&mut l).map_err(|e| e.to_string())?;
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(l))];
        c.read_exact(&mut r).map_err(|e| e.to_string())?;
        r
    } else {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.send_to(&bytes, server).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        buf
    };
    Message::from_vec(&answer).map_err(|e| format!("not a DNS answer: {e}"))
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn describe(m: &Message) -> String {
    let a: Vec<String> = a_records(m).iter().map(|a| a.to_string()).collect();
    format!(
        "rcode={} a={} answers={}",
        format!("{:?}", m.response_code()).to_ascii_uppercase(),
        a.join(","),
        m.answers().len()
    )
}
