//! The pinning resolver: the only DNS server a sandbox can reach.
//!
//! One resolver per server, bound on UDP and TCP port 53 of the server's gateway address. It
//! answers a question only when all of this holds, and otherwise says REFUSED:
//! - opcode QUERY, exactly one question, class IN;
//! - type A or AAAA (everything else, TXT, ANY, MX, SRV, PTR, ..., is refused);
//! - the name is allowed for this server: an exact `name` rule, or a `*.domain` rule, which
//!   matches any name strictly below `domain` at any depth (`a.domain`, `a.b.domain`) and never
//!   `domain` itself. Names compare case-insensitively, without the trailing dot.
//!
//! AAAA questions for allowed names get an empty NOERROR answer (NODATA): sandbox networks are
//! IPv4-only, so an IPv6 address could never be pinned; NODATA makes clients fall back to A at
//! once instead of waiting.
//!
//! An A question is answered from the server's cache when it can be ([`super::dns_cache`]);
//! otherwise, if the server's DNS budget allows ([`super::dns_budget`]; REFUSED when it does
//! not), the resolver asks the policy's upstream resolvers (UDP, in order, 2 s each;
//! [`super::dns_upstream`]) and then ([`super::dns_lookup`] holds this path):
//! - **CNAME chains** are followed inside the upstream answer, up to 8 links. Only the *queried*
//!   name has to be allowed; the names along the chain do not (a CDN alias is an implementation
//!   detail of the allowed service). The addresses at the end of the chain are pinned only for
//!   the queried name's ports, and the client gets a flattened answer (`queried-name A addr`),
//!   so no other name ever appears in what the sandbox sees and caches.
//! - **Address filter**: unspecified, loopback, RFC 1918 private, CGNAT (100.64/10),
//!   link-local (169.254/16, which includes the 169.254.169.254 metadata service), multicast,
//!   reserved (240/4) and broadcast addresses are removed, unless one of the server's CIDR rules
//!   contains the address. If addresses were removed and none is left, the answer is REFUSED
//!   (the policy, not the name, is the reason); an upstream answer with no address at all stays
//!   an empty NOERROR.
//! - At most `max_addresses_per_name` addresses are kept, in upstream order.
//! - **Pin, then answer**: every kept address is added to the server's set for each port of the
//!   matching rules (`ip . port`, TCP only; a rule without a port pins the address for every
//!   TCP port), with timeout = clamp(TTL, pin_ttl_min, pin_ttl_max), where TTL is the smallest
//!   along the chain. The answer is sent only after the kernel acknowledged the elements; if
//!   pinning fails the answer is SERVFAIL (fail closed). The TTL given to the client is at most
//!   the pin's lifetime minus one second, so a client never uses an address from its cache
//!   after its pin ran out; the same holds for the resolver's own cache. A pin is never
//!   shortened by a later answer with a shorter TTL for the same address (`sets::PinCache`).
//! - Upstream NXDOMAIN/SERVFAIL are passed on without records.
//!
//! Pins are TCP only: no allowed name opens UDP (so no QUIC and no DNS to other servers over
//! an allowed address); the only UDP a sandbox can send is DNS to this resolver.
//!
//! Bytes that do not parse as a DNS message are dropped without an answer; nothing here panics
//! on input. Work is bounded: UDP queries in flight and TCP connections are capped by
//! semaphores, TCP connections time out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

pub use super::dns_allow::{is_special, Allow};
use super::dns_budget::Budget;
use super::dns_cache::Cache;
use super::dns_upstream::UpstreamPool;
use super::sets::Pin;
use super::EgressEvent;
use crate::policy::{EgressRule, EgressSettings, Server};

const MAX_CHAIN: usize = 8;
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
const UDP_IN_FLIGHT: usize = 256;
const TCP_CONNS: usize = 32;

/// Pins addresses for one server; implemented by the egress service (netlink worker).
pub trait Pinner: Send + Sync {
    /// `rules` is the allow list the answer was judged under: the worker refuses the pins when
    /// the server's programmed rules are no longer that list (a lookup that was in flight
    /// across a reload must not open a destination the new rules removed).
    fn pin(
        &self,
        server: &str,
        rules: Arc<[EgressRule]>,
        pins: Vec<Pin>,
        timeout: Duration,
    ) -> super::BoxFuture<'_, Result<(), String>>;
}

/// Latency samples (query received -> answer sent), bounded.
#[derive(Debug, Default)]
pub struct Stats {
    /// Whole answers, pins included.
    pub samples: Vec<Duration>,
    /// Just the pin: elements sent to the kernel until its acknowledgement.
    pub pin_samples: Vec<Duration>,
}

pub(crate) const MAX_SAMPLES: usize = 100_000;

pub(crate) struct Ctx {
    pub upstream: UpstreamPool,
    pub server: String,
    /// Swapped in place when the server's rules change (policy reload); a question is judged
    /// against one consistent list.
    pub allow: std::sync::RwLock<Arc<Allow>>,
    pub settings: EgressSettings,
    pub pinner: Arc<dyn Pinner>,
    pub stats: Arc<Mutex<Stats>>,
    pub cache: Cache,
    pub budget: Arc<Budget>,
}

/// Where the budget's refusals are reported, and how often.
pub(crate) struct Reports {
    pub events: mpsc::Sender<EgressEvent>,
    pub every: Duration,
}

/// A running resolver; dropping it stops it.
pub struct Resolver {
    pub addr: SocketAddr,
    ctx: Arc<Ctx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Resolver {
    /// Serves on already bound sockets (bound in the right namespace by the caller).
    pub(crate) fn serve(
        ctx: Ctx,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        reports: Reports,
    ) -> std::io::Result<Resolver> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let addr = udp.local_addr()?;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        let ctx = Arc::new(ctx);
        let u = tokio::spawn(serve_udp(ctx.clone(), udp));
        let t = tokio::spawn(serve_tcp(ctx.clone(), tcp));
        let r = super::dns_budget::spawn_reporter(
            ctx.server.clone(),
            ctx.budget.clone(),
            reports.events,
            reports.every,
        );
        Ok(Resolver {
            addr,
            ctx,
            tasks: vec![u, t, r],
        })
    }

    /// The server's rules change to `server`'s (its pins go with the old table): questions are
    /// judged by the new list from now on, and answers are neither repeated nor kept until
    /// [`Resolver::end_rules_change`]. Called before the new table is programmed, so no
    /// question is judged by the old list while the new table takes over; an answer judged by
    /// the new list before that table is in force fails its pin (the worker compares lists)
    /// and the client asks again.
    pub fn begin_rules_change(&self, server: &Server) {
        self.ctx.cache.begin_change();
        if let Ok(mut a) = self.ctx.allow.write() {
            *a = Arc::new(Allow::of(server));
        }
        self.ctx
            .budget
            .set_rate(server.egress.dns_rate_in(&self.ctx.settings));
    }

    /// The table of the rules given to [`Resolver::begin_rules_change`] is in force (or the
    /// old one stayed and was given back): answers may be kept again, from an empty cache.
    pub fn end_rules_change(&self) {
        self.ctx.cache.end_change();
    }
}

impl Ctx {
    fn allow(&self) -> Arc<Allow> {
        match self.allow.read() {
            Ok(a) => a.clone(),
            // A writer panicked mid-swap: answer by nothing rather than by a half-made list.
            Err(_) => Arc::new(Allow::none()),
        }
    }
}

async fn serve_udp(ctx: Arc<Ctx>, sock: Arc<UdpSocket>) {
    let limit = Arc::new(Semaphore::new(UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let start = Instant::now();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Saturated: dropping the datagram makes the client retry, which is what UDP
            // clients expect under load.
            continue;
        };
        let query = buf[..n].to_vec();
        let ctx = ctx.clone();
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Some(answer) = handle(&ctx, &query).await {
                let _ = sock.send_to(&answer, peer).await;
                ctx.record(start);
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(TCP_CONNS));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_TIMEOUT, async {
                loop {
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let start = Instant::now();
                    let Some(answer) = handle(&ctx, &q).await else {
                        return;
                    };
                    let Ok(alen) = u16::try_from(answer.len()) else {
                        return;
                    };
                    let mut out = alen.to_be_bytes().to_vec();
                    out.extend_from_slice(&answer);
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                    ctx.record(start);
                }
            })
            .await;
            drop(permit);
        });
    }
}

impl Ctx {
    fn record(&self, start: Instant) {
        if let Ok(mut s) = self.stats.lock() {
            if s.samples.len() < MAX_SAMPLES {
                s.samples.push(start.elapsed());
            }
        }
    }
}

pub(crate) fn reply(q: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for query in q.queries() {
        m.add_query(query.clone());
    }
    m
}

/// Answers one query; `None` means drop it (not a DNS query at all).
pub(crate) async fn handle(ctx: &Ctx, bytes: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(bytes).ok()?;
    if q.message_type() != MessageType::Query {
        return None;
    }
    let m = decide(ctx, &q).await;
    m.to_vec().ok()
}

async fn decide(ctx: &Ctx, q: &Message) -> Message {
    // Taken before the rules are read: an answer judged under rules that changed since is
    // not kept.
    let generation = ctx.cache.generation();
    let allow = ctx.allow();
    if let [query] = q.queries() {
        let name = query.name().to_ascii();
        if allow.ports(&name).is_empty() {
            // For the audit log: which names the server asked for and was refused.
            ctx.budget.refuse_name(&name);
        }
    }
    match judge(&allow, q) {
        Judgement::Answer(m) => m,
        Judgement::Resolve { query, ports } => {
            super::dns_lookup::lookup(ctx, &allow, generation, q, query, &ports).await
        }
    }
}

/// What a query gets before anything is asked upstream.
pub(crate) enum Judgement<'q> {
    /// The final answer (REFUSED, or NODATA for AAAA).
    Answer(Message),
    /// An allowed A question: ask upstream, then pin for these ports.
    Resolve {
        query: &'q Query,
        ports: Vec<Option<u16>>,
    },
}

/// Decides what can be decided from the query alone: the opcode, the question, the name rules.
pub(crate) fn judge<'q>(allow: &Allow, q: &'q Message) -> Judgement<'q> {
    if q.op_code() != OpCode::Query || q.queries().len() != 1 {
        return Judgement::Answer(reply(q, ResponseCode::Refused));
    }
    let query = &q.queries()[0];
    if query.query_class() != DNSClass::IN {
        return Judgement::Answer(reply(q, ResponseCode::Refused));
    }
    let name = query.name().to_ascii();
    let ports = allow.ports(&name);
    if ports.is_empty() {
        return Judgement::Answer(reply(q, ResponseCode::Refused));
    }
    match query.query_type() {
        RecordType::A => Judgement::Resolve { query, ports },
        RecordType::AAAA => Judgement::Answer(reply(q, ResponseCode::NoError)),
        _ => Judgement::Answer(reply(q, ResponseCode::Refused)),
    }
}

/// The addresses an upstream answer yields for the queried name, once filtered.
#[derive(Debug)]
pub(crate) struct Resolution {
    /// To pin and to hand out, in upstream order.
    pub addrs: Vec<Ipv4Addr>,
    pub pin_for: Duration,
    /// The TTL the client gets: never longer than the pin lives.
    pub client_ttl: u32,
}

impl Resolution {
    pub(crate) fn pins(&self, ports: &[Option<u16>]) -> Vec<Pin> {
        self.addrs
            .iter()
            .flat_map(|a| ports.iter().map(move |p| Pin { addr: *a, port: *p }))
            .collect()
    }
}

/// Follows the upstream answer's chain for `name` and filters its addresses; `Err` is the
/// response code to answer with instead (upstream's error, or REFUSED when the filter removed
/// every address).
pub(crate) fn resolve(
    allow: &Allow,
    settings: &EgressSettings,
    up: &Message,
    name: &Name,
) -> Result<Resolution, ResponseCode> {
    if up.response_code() != ResponseCode::NoError {
        return Err(up.response_code());
    }
    let (addrs, ttl) = follow_chain(up, name);
    let found = !addrs.is_empty();
    let mut kept: Vec<Ipv4Addr> = Vec::new();
    for a in addrs {
        if allow.address_ok(a) && !kept.contains(&a) {
            kept.push(a);
        }
    }
    kept.truncate(settings.max_addresses_per_name);
    if found && kept.is_empty() {
        return Err(ResponseCode::Refused);
    }
    let pin_for =
        Duration::from_secs(u64::from(ttl)).clamp(settings.pin_ttl_min, settings.pin_ttl_max);
    let client_ttl = ttl.min(u32::try_from(pin_for.as_secs().saturating_sub(1)).unwrap_or(0));
    Ok(Resolution {
        addrs: kept,
        pin_for,
        client_ttl,
    })
}

/// The flattened answer: the queried name with the kept addresses, nothing else.
pub(crate) fn answer(q: &Message, query: &Query, r: &Resolution) -> Message {
    let mut m = reply(q, ResponseCode::NoError);
    for a in &r.addrs {
        m.add_answer(Record::from_rdata(
            query.name().clone(),
            r.client_ttl,
            RData::A(A(*a)),
        ));
    }
    m
}

/// The A addresses at the end of the CNAME chain starting at `name`, and the smallest TTL seen.
fn follow_chain(up: &Message, name: &Name) -> (Vec<Ipv4Addr>, u32) {
    let mut current = name.to_lowercase();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CHAIN {
        let mut addrs = Vec::new();
        let mut next = None;
        for r in up.answers() {
            if r.name().to_lowercase() != current {
                continue;
            }
            match r.data() {
                RData::A(A(a)) => {
                    addrs.push(*a);
                    ttl = ttl.min(r.ttl());
                }
                RData::CNAME(c) if next.is_none() => {
                    next = Some((c.0.to_lowercase(), r.ttl()));
                }
                _ => {}
            }
        }
        if !addrs.is_empty() {
            return (addrs, ttl);
        }
        match next {
            Some((n, t)) => {
                ttl = ttl.min(t);
                current = n;
            }
            None => break,
        }
    }
    (Vec::new(), if ttl == u32::MAX { 0 } else { ttl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_followed_and_bounded() {
        let mut m = Message::new();
        let n = |s: &str| Name::from_ascii(s).unwrap();
        m.add_answer(Record::from_rdata(
            n("a.example.test."),
            60,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(n("b.cdn.test."))),
        ));
        m.add_answer(Record::from_rdata(
            n("b.cdn.test."),
            30,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 10))),
        ));
        let (addrs, ttl) = follow_chain(&m, &n("a.example.test."));
        assert_eq!(addrs, vec![Ipv4Addr::new(198, 18, 0, 10)]);
        assert_eq!(ttl, 30);
        // A loop ends without addresses.
        let mut l = Message::new();
        l.add_answer(Record::from_rdata(
            n("x.test."),
            5,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(n("y.test."))),
        ));
        l.add_answer(Record::from_rdata(
            n("y.test."),
            5,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(n("x.test."))),
        ));
        assert!(follow_chain(&l, &n("x.test.")).0.is_empty());
    }
}
