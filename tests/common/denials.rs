//! Checks on where denied egress was going (issue #19): the `destinations` of `egress_denied`
//! records (named by the gateway's NFLOG listener) and the report's "by server and
//! destination" table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether `rec` is an `egress_denied` record of `server` naming `dest` (`proto`, `port`;
/// none for a refused DNS name, protocol `dns`).
pub fn names_dest(rec: &Value, server: &str, dest: &str, proto: &str, port: Option<u16>) -> bool {
    rec["kind"] == "egress_denied"
        && rec["server"] == server
        && rec["destinations"].as_array().is_some_and(|l| {
            l.iter().any(|d| {
                d["dest"] == dest
                    && d["proto"] == proto
                    && d["port"].as_u64() == port.map(u64::from)
                    && d["packets"].as_u64().unwrap_or(0) > 0
            })
        })
}

/// Waits (up to `limit`: records after the first are summed per 10 s window) for a record of
/// `server` naming each of `dests`, and returns the readable detail that named them.
pub async fn await_dests(
    audit: &Path,
    limit: Duration,
    server: &str,
    dests: &[(String, &str, Option<u16>)],
) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let recs = super::audit_records(audit);
        let mut details = Vec::new();
        let all = dests.iter().all(|(d, proto, port)| {
            match recs.iter().find(|r| names_dest(r, server, d, proto, *port)) {
                Some(r) => {
                    let text = r["detail"].as_str().unwrap_or_default().to_owned();
                    let label = match port {
                        Some(p) => format!("{d}:{p}/{proto}"),
                        None => format!("{d}/{proto}"),
                    };
                    let ok = text.contains(&label);
                    details.push(text);
                    ok
                }
                None => false,
            }
        });
        if all {
            return Ok(details.join(" | "));
        }
        if Instant::now() >= deadline {
            let denied: Vec<&Value> = recs
                .iter()
                .filter(|r| r["kind"] == "egress_denied" && r["server"] == server)
                .collect();
            return Err(format!(
                "no egress_denied record of {server} names {dests:?} within {limit:?}: {denied:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `audit report --format json` lists `dest` (`proto`, `port`) under `server` in
/// `egress_denied_by_destination`, and the HTML has the table.
pub fn report_lists_dest(
    audit: &Path,
    server: &str,
    dest: &str,
    proto: &str,
    port: u16,
) -> Result<(), String> {
    let run = |format: &str| {
        Command::new(super::gateway_bin())
            .args(["audit", "report", "--format", format])
            .arg(audit)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| e.to_string())
    };
    let json: Value =
        serde_json::from_str(&run("json")?).map_err(|e| format!("report JSON: {e}"))?;
    let rows = &json["egress_denied_by_destination"];
    let found = rows.as_array().is_some_and(|l| {
        l.iter().any(|r| {
            r["server"] == server
                && r["dest"] == dest
                && r["proto"] == proto
                && r["port"].as_u64() == Some(u64::from(port))
                && r["packets"].as_u64().unwrap_or(0) > 0
        })
    });
    if !found {
        return Err(format!("{server} -> {dest}:{port}/{proto} not in {rows}"));
    }
    let html = run("html")?;
    if !html.contains("Egress denials by server and destination") || !html.contains(dest) {
        return Err("the HTML report has no destination table naming it".into());
    }
    Ok(())
}

/// The packet total of an `egress_denied` record's detail (`N packet(s) dropped ...`).
fn packets_of(rec: &Value) -> u64 {
    rec["detail"]
        .as_str()
        .and_then(|d| d.split_once(" packet(s)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// A hostile server sprays `count` UDP ports of `ip` (a lab address, unlisted): the counters
/// count every datagram, but the audit log gets a handful of records, each naming at most 16
/// destinations plus `other`, and the logged (named) packets are held to the log rate.
pub async fn flood_is_bounded(
    c: &mut super::client::Mcp,
    audit: &Path,
    server: &str,
    ip: std::net::Ipv4Addr,
    count: u16,
) -> Result<String, String> {
    let of_server = |recs: &[Value]| -> Vec<Value> {
        recs.iter()
            .filter(|r| r["kind"] == "egress_denied" && r["server"] == server)
            .cloned()
            .collect()
    };
    let before = of_server(&super::audit_records(audit)).len();
    let out = super::hostlab::probe(
        c,
        server,
        serde_json::json!({"op": "udp_spray", "ip": ip.to_string(), "first_port": 20000, "count": count}),
    )
    .await;
    if out != format!("sent {count}") {
        return Err(format!("spray: {out}"));
    }
    // Records after the first are summed per 10 s window: two windows are plenty.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let recs = of_server(&super::audit_records(audit));
        let new: Vec<Value> = recs.into_iter().skip(before).collect();
        let counted: u64 = new.iter().map(packets_of).sum();
        if counted >= u64::from(count) {
            break new;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{counted} of {count} sprayed packets counted: {new:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let named: Vec<&Value> = new
        .iter()
        .filter_map(|r| r["destinations"].as_array())
        .flatten()
        .collect();
    let logged: u64 = named.iter().filter_map(|d| d["packets"].as_u64()).sum();
    let longest = new
        .iter()
        .filter_map(|r| r["destinations"].as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    let other = named.iter().any(|d| d["dest"] == "other");
    let summary = format!(
        "{} record(s) for {count} datagrams, at most {longest} destinations per record, {logged} logged, other: {other}",
        new.len()
    );
    if new.len() > 4 || longest > 17 || logged == 0 || logged > u64::from(count) / 10 || !other {
        return Err(summary);
    }
    Ok(summary)
}

/// The `egress_denied` records of `server` name the lab's unlisted host (TCP 443) and other
/// DNS server (UDP 53) it tried and the unlisted name its resolver refused, and `audit report`
/// lists the host under the server.
pub async fn check_destinations(
    r: &mut super::Cases,
    audit: &Path,
    server: &str,
    lab: &super::hostlab::HostLab,
) {
    let dests = [
        (lab.ip(30).to_string(), "tcp", Some(443)),
        (lab.ip(53).to_string(), "udp", Some(53)),
        ("unlisted.test".to_owned(), "dns", None),
    ];
    let named = await_dests(audit, Duration::from_secs(30), server, &dests).await;
    r.check(
        &format!("{server}: egress_denied names the unlisted addresses, protocols, ports and name"),
        named.is_ok(),
        &named.unwrap_or_else(|e| e),
    );
    r.result(
        &format!("{server}: `audit report` lists the denial by server and destination"),
        report_lists_dest(audit, server, &lab.ip(30).to_string(), "tcp", 443),
    );
}
