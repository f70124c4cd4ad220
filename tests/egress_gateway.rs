//! Egress enforcement through the real gateway: docker servers in real containers and a
//! process server in its own network namespace try the bypasses of the attack matrix, driven
//! through `tools/call` of the fixture's `net_probe` tool. Privileged (root, dockerd, `ip`,
//! `nft`); see `common::netlab` and `common::docker`. The lab (topology, network safety) is `common::hostlab`.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::query_parameters::{InspectContainerOptions, ListNetworksOptionsBuilder};
use common::client::{Mcp, LATEST};
use common::docker::containers_in;
use common::hostlab::{
    await_record, await_tools, blocked, container_addr, host_dns_answers, host_service, iface_addr,
    names_of, nft_table, policy, probe, report_egress, server, setup, tcp, Leftovers, Setup,
};
use common::{
    audit_records, audit_verify, gateway_bin, http_get, table_protection, Cases, Gateway,
};
use common::{denials, netlab};
use portcullis::egress::{ruleset, Names};
use serde_json::json;

/// The table protection a gateway reports on `/metrics`: `owner` or `watch`.
fn protection_mode(gw: &Gateway) -> String {
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    table_protection(&metrics)
}

fn names(tag: &str) -> (String, String, String, String) {
    (
        format!("ea{tag}"),
        format!("eb{tag}"),
        format!("ep{tag}"),
        format!("en{tag}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_and_process_namespaces_are_held_to_their_egress_rules() {
    // Named bindings (not `..`): the turn and the audit folder must live to the end.
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone,
        _audit_dir,
        audit,
        tag,
    }) = setup("egress").await
    else {
        return;
    };
    let host_port = host_service();
    let (a, b, p, n) = names(&tag);
    let names = names_of(&scope.name);
    let _leftovers = Leftovers(names.clone(), vec![p.clone()]);
    let servers = [
        server(
            &a,
            "docker",
            &[
                "api.example.test:443",
                "meta.example.test:80",
                "*.wild.example.test:443",
            ],
        ),
        server(&b, "docker", &["api.example.test:443"]),
        server(&n, "docker", &[]),
        server(&p, "process", &["api.example.test:443"]),
    ];
    let mut gw = Gateway::start_with(
        &policy(&lab, &audit, &servers.concat()),
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_INSTANCE", scope.name.as_str()),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b, &p, &n]).await;
    let mut r = Cases(Vec::new());

    // The lab works from the host (the router): every "blocked" below is the firewall's doing.
    assert!(
        host_dns_answers(SocketAddr::from((lab.ip(53), 53))),
        "lab broken: the test's DNS server does not answer the host"
    );
    for port in [443, 853] {
        assert!(
            std::net::TcpStream::connect_timeout(
                &SocketAddr::from((lab.ip(30), port)),
                Duration::from_secs(2)
            )
            .is_ok(),
            "lab broken: the host cannot reach the external namespace on {port}"
        );
    }

    let (a_ip, a_gw) = container_addr(&rt, &scope.name, &a).await;
    let (b_ip, b_gw) = container_addr(&rt, &scope.name, &b).await;
    let b_resolver = format!("{b_gw}:53");
    let p_gw = iface_addr(&names.iface(&p)).expect("the process sandbox's veth");
    for (server, gw_ip) in [(a.as_str(), a_gw), (p.as_str(), p_gw)] {
        let kind = if server == p { "process" } else { "docker" };
        let case = |what: &str| format!("{kind}: {what}");
        let out = probe(
            &mut c,
            server,
            json!({"op": "resolve_connect", "name": "api.example.test", "port": 443}),
        )
        .await;
        r.check(
            &case("allowed name resolves and connects"),
            out == format!("connected ip={} banner=ok", lab.ip(10)),
            &out,
        );
        let out = probe(
            &mut c,
            server,
            json!({"op": "dns", "server": "system", "name": "unlisted.test"}),
        )
        .await;
        r.check(
            &case("unlisted name refused"),
            out.starts_with("rcode=REFUSED a= "),
            &out,
        );
        let out = probe(&mut c, server, tcp(&lab.sa(30, 443))).await;
        r.check(
            &case("hardcoded IP of an unlisted host blocked"),
            blocked(&out),
            &out,
        );
        let out = probe(&mut c, server, tcp(&lab.sa(10, 8443))).await;
        r.check(
            &case("allowed host on another port blocked"),
            blocked(&out),
            &out,
        );
        for over_tcp in [false, true] {
            let out = probe(
                &mut c,
                server,
                json!({"op": "dns", "server": lab.sa(53, 53), "name": "unlisted.test", "tcp": over_tcp, "timeout_ms": 1000}),
            )
            .await;
            r.check(
                &case(&format!(
                    "other DNS server ({}) blocked",
                    if over_tcp { "TCP" } else { "UDP" }
                )),
                blocked(&out),
                &out,
            );
        }
        let out = probe(&mut c, server, tcp(&lab.sa(53, 853))).await;
        r.check(&case("DoT (853) blocked"), blocked(&out), &out);
        let out = probe(
            &mut c,
            server,
            json!({"op": "udp", "target": lab.sa(10, 443), "timeout_ms": 1000}),
        )
        .await;
        r.check(&case("UDP to an allowed IP blocked"), blocked(&out), &out);
        let out = probe(&mut c, server, tcp("169.254.169.254:80")).await;
        r.check(
            &case("metadata address 169.254.169.254 blocked"),
            blocked(&out),
            &out,
        );
        for target in [
            format!("{}:{host_port}", lab.ip(1)),
            format!("{gw_ip}:{host_port}"),
        ] {
            let out = probe(&mut c, server, tcp(&target)).await;
            r.check(
                &case(&format!("host's own service {target} blocked")),
                blocked(&out),
                &out,
            );
        }
        let other = if server == a { b_ip } else { a_ip };
        let out = probe(&mut c, server, tcp(&format!("{other}:443"))).await;
        r.check(
            &case("another sandbox's container blocked"),
            blocked(&out) && !out.contains("refused"),
            &out,
        );
        let out = probe(
            &mut c,
            server,
            json!({"op": "dns", "server": b_resolver, "name": "api.example.test", "timeout_ms": 1000}),
        )
        .await;
        r.check(
            &case("another sandbox's resolver blocked"),
            blocked(&out),
            &out,
        );
    }
    // Docker-only cases: the metadata name, and a server without rules has no network at all.
    let out = probe(
        &mut c,
        &a,
        json!({"op": "dns", "server": "system", "name": "meta.example.test"}),
    )
    .await;
    r.check(
        "docker: allowed name resolving to 169.254.169.254 not handed out",
        out.starts_with("rcode=REFUSED a= "),
        &out,
    );
    let out = probe(
        &mut c,
        &n,
        json!({"op": "tcp", "target": lab.sa(10, 443), "timeout_ms": 1000}),
    )
    .await;
    r.check(
        "docker: server without rules has no route at all",
        out.starts_with("failed") && out.contains("unreachable"),
        &out,
    );
    let n_id = containers_in(&rt, &scope.name)
        .await
        .into_iter()
        .find(|(_, l)| l.get("io.portcullis.server") == Some(&n))
        .map(|(id, _)| id)
        .expect("container of the server without rules");
    let n_mode = rt
        .api()
        .inspect_container(&n_id, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .host_config
        .and_then(|h| h.network_mode);
    r.check(
        "docker: server without rules stays on network none",
        n_mode.as_deref() == Some("none"),
        &format!("{n_mode:?}"),
    );
    let a_cfg = rt
        .api()
        .inspect_container(
            &containers_in(&rt, &scope.name)
                .await
                .into_iter()
                .find(|(_, l)| l.get("io.portcullis.server") == Some(&a))
                .map(|(id, _)| id)
                .unwrap(),
            None::<InspectContainerOptions>,
        )
        .await
        .unwrap()
        .host_config
        .unwrap();
    r.check(
        "docker: the container's only DNS server is its resolver",
        a_cfg.dns == Some(vec![a_gw.to_string()]),
        &format!("{:?}", a_cfg.dns),
    );

    // The live table, through the CLI, right after a lookup pinned an address.
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": "api.example.test", "port": 443}),
    )
    .await;
    assert!(out.starts_with("connected"), "{out}");
    let show = Command::new(gateway_bin())
        .args(["firewall", "show", "--instance", &scope.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout).to_string();
    r.check(
        "`portcullis firewall show` lists the live table with its pins",
        show.status.success()
            && text.contains(&ruleset::srv_chain(&a))
            && text.contains(&ruleset::srv_chain(&p))
            && text.contains(&format!("{} . 443", lab.ip(10)))
            && text.contains("expires"),
        &text.replace('\n', " | "),
    );

    // Denials reach the audit log and /metrics.
    await_record(&audit, Duration::from_secs(15), "egress_denied of a", |r| {
        r["kind"] == "egress_denied" && r["server"] == a.as_str()
    })
    .await;
    await_record(&audit, Duration::from_secs(15), "egress_denied of p", |r| {
        r["kind"] == "egress_denied" && r["server"] == p.as_str()
    })
    .await;
    let denied = audit_records(&audit)
        .iter()
        .filter(|r| r["kind"] == "egress_denied")
        .count();
    // Rate-limited: far fewer records than blocked attempts (each made several packets).
    r.check(
        "denials written to the audit log, rate-limited per server",
        (2..=8).contains(&denied),
        &format!("{denied} egress_denied records"),
    );
    // The compliance report counts these real denials by server (issue #19), JSON and HTML.
    r.result(
        "`audit report` counts the egress denials by server",
        report_egress(&audit, &[&a, &p], denied),
    );
    // Where they went (issue #19): the records name the unlisted hosts and ports each server
    // tried (NFLOG), and the report lists them by server and destination.
    for s in [&a, &p] {
        denials::check_destinations(&mut r, &audit, s, &lab).await;
    }
    // A server spraying thousands of ports: exact counts, a handful of capped records.
    let flood = denials::flood_is_bounded(&mut c, &audit, &p, lab.ip(30), 3000).await;
    r.check(
        "a port flood is counted exactly but logged rate-limited and capped",
        flood.is_ok(),
        &flood.unwrap_or_else(|e| e),
    );
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_egress_denied_total") && l.contains(&a))
        .unwrap_or("")
        .to_owned();
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    r.check("denials counted in /metrics", count > 0.0, &line);

    // Tampering: root flushes the table by hand. An owned table refuses (EPERM); without
    // ownership it is detected, restored and audited.
    let mode = protection_mode(&gw);
    let flush = Command::new("nft")
        .args(["flush", "table", "inet", &names.table()])
        .output()
        .unwrap();
    if mode == "owner" {
        let err = String::from_utf8_lossy(&flush.stderr).to_string();
        r.check(
            "root cannot flush the owned table (EPERM)",
            !flush.status.success() && err.contains("Operation not permitted"),
            err.trim(),
        );
    } else {
        r.check(
            "the table protection is reported on /metrics",
            mode == "watch",
            &mode,
        );
        assert!(flush.status.success());
        await_record(&audit, Duration::from_secs(10), "tamper restored", |r| {
            r["kind"] == "tamper" && r["detail"].as_str().is_some_and(|d| d.contains("restored"))
        })
        .await;
    }
    let out = probe(&mut c, &a, tcp(&lab.sa(30, 443))).await;
    r.check(
        "after the restore: unlisted IP still blocked",
        blocked(&out),
        &out,
    );
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": "api.example.test", "port": 443}),
    )
    .await;
    r.check(
        "after the restore: allowed name works",
        out.starts_with("connected"),
        &out,
    );
    assert!(zone.queries.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // Shutdown removes networks, namespaces, host-forward rules and the table.
    let iface_p = names.iface(&p);
    let status = gw.terminate(Duration::from_secs(60));
    r.check(
        "gateway stops cleanly",
        status.success(),
        &format!("{status}"),
    );
    let filters = HashMap::from([("label", vec![format!("io.portcullis.scope={}", scope.name)])]);
    let left = rt
        .api()
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .unwrap();
    r.check(
        "shutdown removes the sandbox networks",
        left.is_empty(),
        &format!("{} left", left.len()),
    );
    r.check(
        "shutdown removes the table",
        nft_table(&names).is_none(),
        &names.table(),
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout).to_string();
    let docker_user = Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    r.check(
        "shutdown removes the process namespace and its forward rules",
        !netns.contains(&format!("pcs-{}", &iface_p[3..])) && !docker_user.contains(&iface_p),
        &iface_p,
    );
    r.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_that_cannot_be_restored_stops_the_sandboxes_until_it_is() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("egressfail").await
    else {
        return;
    };
    let a = format!("fa{tag}");
    let p = format!("fp{tag}");
    let names = names_of(&scope.name);
    let _leftovers = Leftovers(names.clone(), vec![p.clone()]);
    let policy = policy(
        &lab,
        &audit,
        &[
            server(&a, "docker", &["api.example.test:443"]),
            server(&p, "process", &["api.example.test:443"]),
        ]
        .concat(),
    );
    // Without table ownership (as on a kernel before 6.9): only then can someone take the
    // table away from a running gateway.
    let mut gw = Gateway::start_with(
        &policy,
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_INSTANCE", scope.name.as_str()),
            ("PORTCULLIS_EGRESS_TABLE_FLAGS", "off"),
        ],
    );
    assert_eq!(protection_mode(&gw), "watch");
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &p]).await;
    let allowed = json!({"op": "resolve_connect", "name": "api.example.test", "port": 443});
    for s in [&a, &p] {
        let out = probe(&mut c, s, allowed.clone()).await;
        assert!(out.starts_with("connected"), "{s}: {out}");
    }
    let pid_before = probe_pid(&mut c, &p).await;

    // Someone replaces the table with one they own: the gateway cannot put its own back.
    let thief = Thief::take_table(&names);

    await_record(&audit, Duration::from_secs(10), "restore failed", |r| {
        r["kind"] == "tamper"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("re-programming failed") && d.contains(&a))
    })
    .await;
    // Every sandbox is stopped and none comes back while the table is not in force.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = containers_in(&rt, &scope.name).await.len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} containers still running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = probe(&mut c, &a, allowed.clone()).await;
    assert!(
        out.starts_with("call failed"),
        "docker server still answers: {out}"
    );
    let out = probe(&mut c, &p, allowed.clone()).await;
    assert!(
        out.starts_with("call failed"),
        "process server still answers: {out}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        containers_in(&rt, &scope.name).await.is_empty(),
        "a container started while the table was not in force"
    );

    // The owner goes away: the gateway restores its table and the servers come back, enforced.
    drop(thief);
    await_record(&audit, Duration::from_secs(10), "restored", |r| {
        r["kind"] == "tamper" && r["detail"].as_str().is_some_and(|d| d.contains("restored"))
    })
    .await;
    for s in [&a, &p] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = probe(&mut c, s, allowed.clone()).await;
            if out.starts_with("connected") {
                break;
            }
            assert!(Instant::now() < deadline, "{s} never came back: {out}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let out = probe(&mut c, s, tcp(&lab.sa(30, 443))).await;
        assert!(
            blocked(&out),
            "{s}: unlisted host reachable after recovery: {out}"
        );
    }
    assert_ne!(
        probe_pid(&mut c, &p).await,
        pid_before,
        "the process server was restarted"
    );
    assert!(gw.terminate(Duration::from_secs(60)).success());
    assert!(nft_table(&names).is_none(), "table left after shutdown");
    let (ok, out) = audit_verify(&audit);
    assert!(
        ok,
        "the audit log with its tamper records does not verify: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_changes_a_servers_rules_applies_them_to_its_running_sandboxes() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("egressreload").await
    else {
        return;
    };
    let a = format!("ra{tag}");
    let p = format!("rp{tag}");
    let names = names_of(&scope.name);
    let _leftovers = Leftovers(names.clone(), vec![p.clone()]);
    let with = |allow: &str| {
        policy(
            &lab,
            &audit,
            &[
                server(&a, "docker", &[allow]),
                server(&p, "process", &[allow]),
            ]
            .concat(),
        )
    };
    let mut gw = Gateway::start_with(
        &with("long.example.test:443"),
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_INSTANCE", scope.name.as_str()),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &p]).await;
    let connect = |name: &str| json!({"op": "resolve_connect", "name": name, "port": 443});
    for s in [&a, &p] {
        let out = probe(&mut c, s, connect("long.example.test")).await;
        assert!(out.starts_with("connected"), "{s} before the reload: {out}");
    }

    // The docker server's container (its pid inside would repeat) and the process server's pid.
    let container_of_a = |rt: &portcullis::sandbox::docker::DockerRuntime| {
        let (rt, scope, a) = (rt.clone(), scope.name.clone(), a.clone());
        async move {
            let mut ids: Vec<String> = containers_in(&rt, &scope)
                .await
                .into_iter()
                .filter(|(_, l)| l.get("io.portcullis.server") == Some(&a))
                .map(|(id, _)| id)
                .collect();
            ids.sort();
            ids
        }
    };
    let pids_before = (container_of_a(&rt).await, probe_pid(&mut c, &p).await);

    // The policy now allows another name instead: the rules change under the running
    // servers (only their allow lists changed, so their instances are kept).
    gw.write_policy(&with("rot.example.test:443"));
    gw.sighup();
    for s in [&a, &p] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let old = probe(&mut c, s, connect("long.example.test")).await;
            let new = probe(&mut c, s, connect("rot.example.test")).await;
            if old.starts_with("rcode=REFUSED") && new.starts_with("connected") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{s}: the reloaded rules are not in force: api -> {old}; rot -> {new}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // What the old rules had opened is closed, also by address, although its pin (TTL
        // 60 s, held 30 s by `pin_ttl_max`) was made moments before the reload.
        let out = probe(&mut c, s, tcp(&lab.sa(15, 443))).await;
        assert!(blocked(&out), "{s}: the old pin survived the reload: {out}");
    }
    let pids_after = (container_of_a(&rt).await, probe_pid(&mut c, &p).await);
    assert_eq!(
        pids_before, pids_after,
        "the servers were restarted instead of re-programmed in place"
    );
    for s in [&a, &p] {
        let name = s.clone();
        await_record(
            &audit,
            Duration::from_secs(10),
            "the rules applied",
            |rec| {
                rec["kind"] == "firewall"
                    && rec["server"] == name.as_str()
                    && rec["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("applied to the running"))
            },
        )
        .await;
    }
    assert!(gw.terminate(Duration::from_secs(60)).success());
    assert!(nft_table(&names).is_none(), "table left after shutdown");
}

/// An `nft -i` session that replaced the table with one it owns (`flags owner`): no other
/// netlink socket may change or delete it while the session lives. Killed on drop (also when
/// the test fails), which makes the kernel delete its table.
struct Thief(std::process::Child);

impl Thief {
    fn take_table(names: &Names) -> Thief {
        let mut child = Command::new("nft")
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("nft -i");
        let stdin = child.stdin.as_mut().expect("stdin");
        // One line is one transaction: the table is never missing in between.
        writeln!(
            stdin,
            "delete table inet {t}; add table inet {t} {{ flags owner; }}",
            t = names.table()
        )
        .expect("write to nft");
        stdin.flush().expect("flush nft");
        Thief(child)
    }
}

impl Drop for Thief {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn probe_pid(c: &mut Mcp, server: &str) -> String {
    let r = c.call_tool(&format!("{server}__pid"), json!({})).await;
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn without_root_a_process_server_with_egress_rules_is_refused_unless_opted_in() {
    if !netlab::privileged() {
        return;
    }
    let policy = |opt_in: bool| {
        format!(
            r#"
[gateway]
naming = "prefix"
[egress]
allow_unconfined_process = {opt_in}
[audit]
enabled = false
[servers.ruled]
runtime = "process"
command = "{{fixture}}"
egress.allow = ["api.example.test:443"]
[servers.plain]
runtime = "process"
command = "{{fixture}}"
"#
        )
    };
    // As nobody: the rules cannot be enforced, so the server does not start; the other does.
    let gw = Gateway::spawn_as(&policy(false), &[], Some(65534));
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, body) = http_get(&format!("{}/ready", gw.base)).unwrap_or_default();
        if body.contains("allow_unconfined_process") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal in /ready: {body}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("does not run as root"), "{body}");
    assert!(
        gw.stderr().contains("cannot be enforced"),
        "{}",
        gw.stderr()
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("plain__echo", json!({"text": "up"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "up", "{r}");
    let r = c.call_tool("ruled__echo", json!({"text": "up"})).await;
    assert!(r.get("error").is_some(), "a refused server answered: {r}");
    drop(gw);

    // Opted in: it runs, unenforced, and the log says so loudly.
    let gw = Gateway::spawn_as(&policy(true), &[], Some(65534));
    gw.wait_ready(Duration::from_secs(30));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("ruled__echo", json!({"text": "up"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "up", "{r}");
    assert!(
        gw.stderr().contains("EGRESS NOT ENFORCED"),
        "{}",
        gw.stderr()
    );
}
