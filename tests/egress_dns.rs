//! A hostile sandbox against the pinning resolver, through the real gateway: a Docker server
//! floods its resolver (the same name again and again; distinct names under a wildcard rule)
//! while a neighbouring server keeps resolving, connecting and answering calls; and the
//! resolver's cache never hands out an answer that outlives its pin. Privileged (root, dockerd,
//! `ip`, `nft`): the lab is `common::hostlab`.
//!
//! The flood is sent from inside the flooding server's container network namespace
//! (`/proc/PID/ns/net`), so it takes exactly the way the server's own process would take. What
//! reaches the upstream resolvers is counted at the test's own DNS server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::hostlab::{
    await_record, await_tools, container_addr, container_netns, names_of, policy, probe, server,
    setup, tcp, Leftovers, Setup,
};
use common::netlab::{self, a_records, Flood};
use common::{audit_records, http_get, Cases, Gateway};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use portcullis::egress::{ruleset, Names};
use serde_json::{json, Value};

/// `[egress] dns_rate` when the policy says nothing: 50 a second, bursts of 100.
const RATE: f64 = 50.0;
const BURST: f64 = 100.0;

/// The most a budget of RATE/BURST lets through in `elapsed`, with a little room for the
/// flood's last questions arriving after its clock stopped.
fn budget_bound(elapsed: Duration) -> usize {
    (BURST + RATE * (elapsed.as_secs_f64() + 0.5)).ceil() as usize
}

/// The value of a `/metrics` series whose line contains every one of `parts`.
fn metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

async fn flood(
    netns: &Path,
    resolver: SocketAddr,
    name: impl Fn(usize) -> String + Send + 'static,
) -> Flood {
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        netlab::flood(&netns, resolver, name, 2000, 20_000, Duration::from_secs(3))
    })
    .await
    .expect("flood")
}

/// The lab's gateway as the test's own instance (table, interfaces and namespaces named from
/// the scope), with the leftovers of a killed run cleaned up after it.
fn start(policy: &str, scope: &str) -> (Leftovers, Gateway) {
    let leftovers = Leftovers(names_of(scope), Vec::new());
    let gw = Gateway::start_with(
        policy,
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope),
            ("PORTCULLIS_INSTANCE", scope),
        ],
    );
    (leftovers, gw)
}

/// What `resolve_connect` to the neighbour's allowed name asks of the neighbour.
fn connect_api() -> Value {
    json!({"op": "resolve_connect", "name": "api.example.test", "port": 443})
}

/// Floods `resolver` from `netns` with `name(i)` while the neighbour `b` resolves, connects
/// and answers a call every 250 ms; checks that every round of the neighbour worked.
async fn flood_beside_neighbour(
    c: &mut Mcp,
    b: &str,
    netns: &Path,
    resolver: SocketAddr,
    name: impl Fn(usize) -> String + Send + 'static,
    r: &mut Cases,
    what: &str,
) -> Flood {
    let flooding = tokio::spawn({
        let ns = netns.to_path_buf();
        async move { flood(&ns, resolver, name).await }
    });
    let mut neighbour = Vec::new();
    while !flooding.is_finished() {
        let out = probe(c, b, connect_api()).await;
        let echo = c
            .call_tool(&format!("{b}__echo"), json!({"text": "still here"}))
            .await;
        neighbour.push((out, echo["result"]["content"][0]["text"].clone()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ok = neighbour
        .iter()
        .filter(|(o, e)| o.starts_with("connected") && *e == "still here")
        .count();
    r.check(
        &format!("{what}: the neighbour resolves, connects and answers every call meanwhile"),
        ok == neighbour.len() && ok >= 3,
        &format!("{ok}/{} rounds ok; {neighbour:?}", neighbour.len()),
    );
    flooding.await.unwrap()
}

/// Refusals of `server` over its DNS budget so far, from `/metrics`.
fn over_budget(gw: &Gateway, server: &str) -> f64 {
    let (_, m) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    metric(
        &m,
        "portcullis_egress_dns_questions_total",
        &[server, "over_budget"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dns_flood_from_one_sandbox_is_capped_upstream_while_its_neighbour_keeps_working() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone,
        _audit_dir,
        audit,
        tag,
    }) = setup("egressdns").await
    else {
        return;
    };
    let a = format!("fa{tag}");
    let b = format!("fb{tag}");
    let servers = [
        server(&a, "docker", &["short.example.test:443"]),
        server(&b, "docker", &["api.example.test:443"]),
    ];
    let (_leftovers, gw) = start(&policy(&lab, &audit, &servers.concat()), &scope.name);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b]).await;
    let mut r = Cases(Vec::new());
    let (_, a_gw) = container_addr(&rt, &scope.name, &a).await;
    let resolver = SocketAddr::from((a_gw, 53));
    let a_ns = container_netns(&rt, &scope.name, &a).await;
    let out = probe(&mut c, &b, connect_api()).await;
    assert!(out.starts_with("connected"), "lab broken: {out}");

    // 1. The same name (TTL 0, so never cached) as fast as the sandbox can; meanwhile the
    //    neighbour resolves, connects and answers calls.
    let f = flood_beside_neighbour(
        &mut c,
        &b,
        &a_ns,
        resolver,
        |_| "short.example.test".into(),
        &mut r,
        "same-name flood",
    )
    .await;
    let upstream = zone.asked(|n| n == "short.example.test");
    r.check(
        "same-name flood: what reaches the upstream resolver is capped by the budget",
        f.sent >= 3000 && upstream <= budget_bound(f.elapsed),
        &format!(
            "{} questions in {:?}, {upstream} reached the test's DNS server (budget allows {})",
            f.sent,
            f.elapsed,
            budget_bound(f.elapsed)
        ),
    );
    // Questions that arrive while the name is being forwarded share that answer (NOERROR)
    // without reaching upstream; the rest, beyond the budget, are refused.
    r.check(
        "same-name flood: beyond the budget the sandbox gets REFUSED",
        f.refused > 0,
        &format!("{f:?}"),
    );
    let out = probe(&mut c, &b, connect_api()).await;
    r.check(
        "the neighbour still works after the flood",
        out.starts_with("connected"),
        &out,
    );

    // 2. Counted in /metrics, audited once per server per interval, the neighbour in neither.
    let (over_a, over_b) = (over_budget(&gw, &a), over_budget(&gw, &b));
    r.check(
        "refusals counted in /metrics for the flooding server only",
        over_a > 0.0 && over_b == 0.0,
        &format!("{a}: {over_a}, {b}: {over_b}"),
    );
    await_record(
        &audit,
        Duration::from_secs(15),
        "over-budget record",
        |rec| rec["kind"] == "egress_denied" && rec["server"] == a.as_str(),
    )
    .await;
    let records: Vec<_> = audit_records(&audit)
        .into_iter()
        .filter(|rec| rec["kind"] == "egress_denied" && rec["outcome"] == "rate_limited")
        .collect();
    let for_a = records
        .iter()
        .filter(|rec| rec["server"] == a.as_str())
        .count();
    let for_b = records
        .iter()
        .filter(|rec| rec["server"] == b.as_str())
        .count();
    let detail = records
        .first()
        .and_then(|rec| rec["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    // About 3 s of flood: the first record at once, at most one more 10 s later.
    r.check(
        "one audit record per server per interval, none for the neighbour",
        (1..=2).contains(&for_a)
            && for_b == 0
            && detail.contains(
                "DNS question(s) refused: over the server's DNS budget (dns_rate 50/s, burst 100)",
            ),
        &format!("{for_a} for {a}, {for_b} for {b}; {detail}"),
    );
    r.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_flood_of_distinct_names_is_capped_upstream_the_same_way() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone,
        _audit_dir,
        audit,
        tag,
    }) = setup("egressdnswild").await
    else {
        return;
    };
    let a = format!("wa{tag}");
    let b = format!("wb{tag}");
    // Under any.example.test every name has an address (TTL 60): each answer is also a pin,
    // the costliest question. Under wild.example.test every name is NODATA.
    let servers = [
        server(
            &a,
            "docker",
            &["*.any.example.test:443", "*.wild.example.test:443"],
        ),
        server(&b, "docker", &["api.example.test:443"]),
    ];
    let (_leftovers, gw) = start(&policy(&lab, &audit, &servers.concat()), &scope.name);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b]).await;
    let mut r = Cases(Vec::new());
    let (_, a_gw) = container_addr(&rt, &scope.name, &a).await;
    let resolver = SocketAddr::from((a_gw, 53));
    let a_ns = container_netns(&rt, &scope.name, &a).await;
    let out = probe(&mut c, &b, connect_api()).await;
    assert!(out.starts_with("connected"), "lab broken: {out}");

    // Distinct names, so none is ever answered from the cache; first with addresses, then
    // (once the bucket has refilled) without.
    for (zone_name, kind) in [
        ("any.example.test", "names with addresses"),
        ("wild.example.test", "NODATA names"),
    ] {
        let suffix = format!(".{zone_name}");
        let before = zone.asked(|n| n.ends_with(&suffix));
        let t = tag.clone();
        let z = zone_name.to_owned();
        let f = flood_beside_neighbour(
            &mut c,
            &b,
            &a_ns,
            resolver,
            move |i| format!("n{i}x{t}.{z}"),
            &mut r,
            &format!("wildcard flood of {kind}"),
        )
        .await;
        let upstream = zone.asked(|n| n.ends_with(&suffix)) - before;
        r.check(
            &format!("wildcard flood of {kind}: capped upstream by the budget"),
            f.sent >= 3000 && upstream <= budget_bound(f.elapsed),
            &format!(
                "{} distinct names in {:?}, {upstream} reached the test's DNS server (budget allows {})",
                f.sent,
                f.elapsed,
                budget_bound(f.elapsed)
            ),
        );
        // Within the budget the names are answered (NOERROR); beyond it, REFUSED.
        r.check(
            &format!("wildcard flood of {kind}: answered within the budget, REFUSED beyond it"),
            f.noerror > 0 && f.refused > 0 && f.noerror <= budget_bound(f.elapsed),
            &format!("{f:?}"),
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    // The budget refills: a new name under the rule resolves and connects again.
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": format!("after{tag}.any.example.test"), "port": 443}),
    )
    .await;
    r.check(
        "after the floods, the flooding server resolves and connects within its budget again",
        out.starts_with("connected"),
        &out,
    );
    let out = probe(&mut c, &b, connect_api()).await;
    r.check(
        "the neighbour still works after the floods",
        out.starts_with("connected"),
        &out,
    );
    let (over_a, over_b) = (over_budget(&gw, &a), over_budget(&gw, &b));
    r.check(
        "refusals counted in /metrics for the flooding server only",
        over_a > 0.0 && over_b == 0.0,
        &format!("{a}: {over_a}, {b}: {over_b}"),
    );
    await_record(
        &audit,
        Duration::from_secs(15),
        "over-budget record",
        |rec| {
            rec["kind"] == "egress_denied"
                && rec["outcome"] == "rate_limited"
                && rec["server"] == a.as_str()
        },
    )
    .await;
    let for_b = audit_records(&audit)
        .into_iter()
        .filter(|rec| rec["kind"] == "egress_denied" && rec["server"] == b.as_str())
        .count();
    r.check(
        "no budget record for the neighbour",
        for_b == 0,
        &format!("{for_b}"),
    );
    r.finish();
}

/// `expires` of the element `elem` (`ip . port`) in `server`'s pin set, from `nft list set`.
fn pin_expires(names: &Names, server: &str, elem: &str) -> Option<Duration> {
    let o = std::process::Command::new("nft")
        .args([
            "list",
            "set",
            "inet",
            &names.table(),
            &ruleset::pin_set(server),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let after = &text[text.find(&format!("{elem} "))?..];
    let after = &after[after.find("expires ")? + "expires ".len()..];
    let word = after.split([' ', ',', '}', '\n']).next()?;
    nft_duration(word)
}

/// nft's `1h2m3s400ms`.
fn nft_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                Duration::from_millis(n)
            }
            ('d', _) => Duration::from_secs(n * 86_400),
            ('h', _) => Duration::from_secs(n * 3_600),
            ('m', _) => Duration::from_secs(n * 60),
            ('s', _) => Duration::from_secs(n),
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_answers_never_outlive_their_pins() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone,
        _audit_dir,
        audit,
        tag,
    }) = setup("egressdnscache").await
    else {
        return;
    };
    let a = format!("ca{tag}");
    let names = names_of(&scope.name);
    let (_leftovers, gw) = start(
        &policy(
            &lab,
            &audit,
            &server(
                &a,
                "docker",
                &[
                    "long.example.test:443",
                    "mixed.example.test:443",
                    "nodata.example.test:443",
                ],
            ),
        ),
        &scope.name,
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a]).await;
    let mut r = Cases(Vec::new());
    let (_, a_gw) = container_addr(&rt, &scope.name, &a).await;
    let resolver = SocketAddr::from((a_gw, 53));
    let ns = container_netns(&rt, &scope.name, &a).await;
    let ip = lab.ip(15);
    let elem = format!("{ip} . 443");
    // Every answer for the long name: its TTL against what is left of its pin, read back from
    // the kernel right after (a client may use the address for TTL seconds; the pin must last
    // at least that long, with the resolver's one second of margin, less read-back slack).
    let answer = |when: &str, r: &mut Cases| -> u32 {
        let m = netlab::query_in(&ns, resolver, "long.example.test", RecordType::A, false);
        let ttl = m
            .as_ref()
            .and_then(|m| m.answers().first().map(|rec| rec.ttl()))
            .unwrap_or(u32::MAX);
        let left = pin_expires(&names, &a, &elem);
        r.check(
            &format!("{when}: the TTL handed out ends before the pin does"),
            m.as_ref().map(a_records) == Some(vec![ip])
                && left.is_some_and(|l| {
                    l + Duration::from_millis(200) >= Duration::from_secs(u64::from(ttl) + 1)
                }),
            &format!("ttl {ttl}, pin left {left:?}"),
        );
        ttl
    };

    // TTL 60 upstream, pin_ttl_max 30 s: the first answer says 29.
    let first = answer("fresh answer", &mut r);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = answer("repeated from the cache 2 s later", &mut r);
    r.check(
        "the repeated answer comes from the cache and counts down",
        zone.asked(|n| n == "long.example.test") == 1 && second + 2 <= first && second > 0,
        &format!(
            "first ttl {first}, second {second}, upstream asked {} time(s)",
            zone.asked(|n| n == "long.example.test")
        ),
    );

    // Another name with a TTL of 1 answers with the same address: pinned again for 2 s
    // (pin_ttl_min), which must not cut the pin the cached answer counts on.
    let mixed = netlab::query_in(&ns, resolver, "mixed.example.test", RecordType::A, false);
    r.check(
        "another name resolves to the same address with a short TTL",
        mixed.as_ref().map(a_records) == Some(vec![ip]),
        &format!("{:?}", mixed.map(|m| a_records(&m))),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A client that kept the long answer (23 s left of its TTL) connects without asking again.
    let out = probe(&mut c, &a, tcp(&format!("{ip}:443"))).await;
    r.check(
        "a client holding the long answer can still connect after the short pin ran out",
        out.starts_with("connected"),
        &out,
    );
    let third = answer("repeated after the short answer's pin ran out", &mut r);
    r.check(
        "the cache still holds the long answer",
        third > 0 && zone.asked(|n| n == "long.example.test") == 1,
        &format!("ttl {third}"),
    );

    // Negative answers are kept briefly too.
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..20 {
        let m = netlab::query_in(&ns, resolver, "nodata.example.test", RecordType::A, false);
        codes.push(m.map(|m| (m.response_code(), m.answers().len())));
    }
    let asked = zone.asked(|n| n == "nodata.example.test");
    r.check(
        "a NODATA answer is repeated from the cache",
        codes.iter().all(|c| *c == Some((ResponseCode::NoError, 0)))
            && (asked == 1 || started.elapsed() > Duration::from_secs(4)),
        &format!("upstream asked {asked} time(s) for 20 questions; {codes:?}"),
    );
    r.finish();
}
