//! Sidecar mode with real containers: each docker server's egress is enforced by a
//! `portcullis egress-agent` container whose table lives in the server's own network
//! namespace (the server joins it), not by a table of the gateway's. Privileged (root,
//! dockerd, `ip`, `nft`); the fake outside world is `common::hostlab` (nothing real is reached:
//! the sandbox pool is routed into the test's namespace only).
//!
//! The agent image is the gateway image built from the binary under test
//! (`tests/docker/build-gateway-image.sh`), as a deployment would use the gateway's own image.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use bollard::query_parameters::{InspectContainerOptions, KillContainerOptions};
use common::client::{Mcp, LATEST};
use common::docker::containers_in;
use common::hostlab::{
    await_record, await_tools, blocked, build_agent_image, container_netns, container_of,
    host_service, names_of, probe, server, setup, sidecar_policy, tcp, Setup,
};
use common::netlab::udp_echo;
use common::sidecar::{
    addr_of, icmp_echo, listen_in, resolve_connect, scope_env, server_pid, tcp_hold, udp_echoes,
};
use common::{denials, Cases, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_agents_hold_docker_servers_to_their_rules() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("sidecar").await
    else {
        return;
    };
    build_agent_image();
    let audit = audit.as_path();
    let (a, b) = (format!("sa{tag}"), format!("sb{tag}"));
    let servers = [
        server(
            &a,
            "docker",
            &["api.example.test:443", "meta.example.test:80"],
        ),
        server(&b, "docker", &["api.example.test:443"]),
    ]
    .concat();
    let host_port = host_service();
    let mut gw = Gateway::start_with(
        &sidecar_policy(&lab, audit, &servers),
        &scope_env(&scope.name),
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b]).await;
    let mut r = Cases(Vec::new());

    // The allowed name resolves through the agent (Docker's 127.0.0.11 is sent to it) and
    // its pinned address connects.
    let out = probe(&mut c, &a, resolve_connect("api.example.test")).await;
    r.check(
        "an allowed host works",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = probe(&mut c, &a, tcp(&lab.sa(30, 443))).await;
    r.check("an unlisted address is blocked", blocked(&out), &out);
    let out = probe(
        &mut c,
        &a,
        json!({"op": "resolve_connect", "name": "unlisted.test", "port": 443, "timeout_ms": 1500}),
    )
    .await;
    r.check(
        "an unlisted name is refused by the agent's resolver",
        !out.starts_with("connected"),
        &out,
    );
    for tcp in [false, true] {
        let out = probe(
            &mut c,
            &a,
            json!({"op": "dns", "server": lab.sa(53, 53), "name": "unlisted.test", "qtype": "A", "tcp": tcp, "timeout_ms": 1000}),
        )
        .await;
        r.check(
            &format!("the upstream resolver is out of reach directly (tcp: {tcp})"),
            out.starts_with("failed"),
            &out,
        );
    }

    // The cases of host mode's matrix (`egress_gateway.rs`) that concern a docker server, here
    // judged by the agent's table in the server's own namespace.
    let (_, a_gw) = addr_of(&rt, &container_of(&rt, &scope.name, &a, true).await).await;
    let out = probe(
        &mut c,
        &a,
        json!({"op": "dns", "server": "system", "name": "unlisted.test"}),
    )
    .await;
    r.check(
        "Docker's resolver (127.0.0.11) is answered by the agent: unlisted name refused",
        out.starts_with("rcode=REFUSED a= "),
        &out,
    );
    let out = probe(
        &mut c,
        &a,
        json!({"op": "dns", "server": "system", "name": "meta.example.test"}),
    )
    .await;
    r.check(
        "an allowed name resolving to 169.254.169.254 is not handed out",
        out.starts_with("rcode=REFUSED a= "),
        &out,
    );
    for (case, args) in [
        (
            "an allowed host on another port is blocked",
            tcp(&lab.sa(10, 8443)),
        ),
        ("DoT (853) is blocked", tcp(&lab.sa(53, 853))),
        (
            "UDP to an allowed address is blocked",
            json!({"op": "udp", "target": lab.sa(10, 443), "timeout_ms": 1000}),
        ),
        ("the metadata address is blocked", tcp("169.254.169.254:80")),
        (
            "the host's own service (lab side) is blocked",
            tcp(&format!("{}:{host_port}", lab.ip(1))),
        ),
        (
            "the host's own service (network gateway) is blocked",
            tcp(&format!("{a_gw}:{host_port}")),
        ),
    ] {
        let out = probe(&mut c, &a, args).await;
        r.check(case, blocked(&out), &out);
    }

    // The agent's control channel is its attached stdio, reachable through the Docker API
    // only. The server shares the agent's network namespace and nothing else: no process,
    // IPC or Docker socket of the agent's is in its reach, the agent binds no abstract unix
    // socket (those are per network namespace), and every listener in the namespace but the
    // resolver is closed to it.
    let a_srv = container_of(&rt, &scope.name, &a, false).await;
    let srv_info = rt
        .api()
        .inspect_container(&a_srv, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let hc = srv_info.host_config.clone().unwrap_or_default();
    r.check(
        "the server has its own process and IPC namespaces and no Docker socket",
        hc.pid_mode.as_deref().is_none_or(|m| m.is_empty())
            && hc
                .ipc_mode
                .as_deref()
                .is_none_or(|m| !m.starts_with("container:"))
            && hc
                .binds
                .as_ref()
                .is_none_or(|b| b.iter().all(|b| !b.contains("docker.sock"))),
        &format!(
            "pid {:?} ipc {:?} binds {:?}",
            hc.pid_mode, hc.ipc_mode, hc.binds
        ),
    );
    let srv_pid = srv_info
        .state
        .as_ref()
        .and_then(|s| s.pid)
        .expect("pid")
        .to_string();
    let in_ns = |args: &[&str]| {
        let o = Command::new("nsenter")
            .args(["-t", &srv_pid, "-n"])
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let unix = in_ns(&["cat", "/proc/net/unix"]);
    let abstract_sockets: Vec<&str> = unix.lines().filter(|l| l.contains(" @")).collect();
    r.check(
        "no abstract unix socket in the shared namespace",
        abstract_sockets.is_empty(),
        &format!("{abstract_sockets:?}"),
    );
    let listeners = in_ns(&["ss", "-Hltn"]);
    let mut others = Vec::new();
    for line in listeners.lines() {
        let Some(local) = line.split_whitespace().nth(3) else {
            continue;
        };
        if local == "127.0.0.1:53" || local.contains('[') || local.starts_with('*') {
            continue;
        }
        others.push(local.replace("0.0.0.0:", "127.0.0.1:"));
    }
    for target in &others {
        let out = probe(&mut c, &a, tcp(target)).await;
        r.check(
            &format!("a listener in the namespace ({target}) is closed to the server"),
            blocked(&out),
            &out,
        );
    }
    r.check(
        "the namespace's listeners were found",
        listeners.contains("127.0.0.1:53"),
        &listeners.replace('\n', " | "),
    );

    // Another server's agent (its address on its own network) is out of reach.
    let (b_ip, _) = addr_of(&rt, &container_of(&rt, &scope.name, &b, true).await).await;
    for args in [
        json!({"op": "dns", "server": format!("{b_ip}:53"), "name": "api.example.test", "qtype": "A", "timeout_ms": 1000}),
        json!({"op": "tcp", "target": format!("{b_ip}:53"), "timeout_ms": 1000}),
    ] {
        let out = probe(&mut c, &a, args).await;
        r.check(
            "another server's agent is out of reach",
            out.starts_with("failed"),
            &out,
        );
    }

    // The server has no capabilities, and its table is owned: not even root on the host,
    // entering the namespace, can change it.
    let a_agent = container_of(&rt, &scope.name, &a, true).await;
    r.check(
        "the server joins its agent's namespace with no capabilities",
        hc.cap_drop == Some(vec!["ALL".to_owned()])
            && hc.cap_add.as_ref().is_none_or(|c| c.is_empty())
            && hc.network_mode.as_deref() == Some(&format!("container:{a_agent}")),
        &format!(
            "cap_drop {:?} cap_add {:?} network_mode {:?}",
            hc.cap_drop, hc.cap_add, hc.network_mode
        ),
    );
    let table = names_of(&scope.name).table();
    let del = Command::new("nsenter")
        .args([
            "-t", &srv_pid, "-n", "nft", "delete", "table", "inet", &table,
        ])
        .output()
        .expect("nsenter");
    let list = Command::new("nsenter")
        .args(["-t", &srv_pid, "-n", "nft", "list", "table", "inet", &table])
        .output()
        .expect("nsenter");
    r.check(
        "the table in the server's namespace cannot be changed",
        !del.status.success() && list.status.success(),
        String::from_utf8_lossy(&del.stderr).trim(),
    );

    // Denials are audited as egress_denied records of the server.
    let name = a.clone();
    await_record(audit, Duration::from_secs(30), "a denial", |rec| {
        rec["kind"] == "egress_denied" && rec["server"] == name.as_str()
    })
    .await;
    r.check("denials are audited", true, "egress_denied record written");
    // Where they went (issue #19): named from the agent's own NFLOG group, in its namespace.
    let dests = [
        (lab.ip(30).to_string(), "tcp", Some(443)),
        (lab.ip(10).to_string(), "udp", Some(443)),
        ("unlisted.test".to_owned(), "dns", None),
    ];
    let named = denials::await_dests(audit, Duration::from_secs(30), &a, &dests).await;
    r.check(
        "the agent's denials name the unlisted addresses, protocols, ports and name",
        named.is_ok(),
        &named.unwrap_or_else(|e| e),
    );
    r.result(
        "`audit report` lists the agent's denial by server and destination",
        denials::report_lists_dest(audit, &a, &lab.ip(30).to_string(), "tcp", 443),
    );

    // An agent that dies takes its server down (its table is no longer watched).
    rt.api()
        .kill_container(&a_agent, None::<KillContainerOptions>)
        .await
        .expect("kill agent");
    let name = a.clone();
    await_record(audit, Duration::from_secs(30), "the agent's crash", |rec| {
        rec["kind"] == "tamper"
            && rec["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&name) && d.contains("exited"))
    })
    .await;
    r.check("an agent crash is audited", true, "tamper record written");

    gw.terminate(Duration::from_secs(60));
    let left = containers_in(&rt, &scope.name).await;
    r.check(
        "stopping the gateway removes agents and servers",
        left.is_empty(),
        &format!("{left:?}"),
    );
    r.finish();
}

/// The rest of host mode's attack matrix (`egress_matrix.rs::attack_matrix`) that concerns a
/// docker server, judged by the agent's table and resolver: DNS over TCP, record types,
/// wildcards, CNAMEs, filtered answers, DoH, ICMP, other UDP, another sandbox, per-server pins,
/// pin expiry and address rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_agents_pass_the_attack_matrix() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("sidematrix").await
    else {
        return;
    };
    build_agent_image();
    udp_echo(&lab.ext, "0.0.0.0:5353".parse().unwrap());
    let (a, b) = (format!("ma{tag}"), format!("mb{tag}"));
    let allow_a = [
        "api.example.test:443",
        "rot.example.test:443",
        "short.example.test:443",
        "alias.example.test:443",
        "private.example.test:443",
        "mixed.example.test:443",
        "*.wild.example.test:443",
    ];
    let servers = [
        server(&a, "docker", &allow_a),
        server(&b, "docker", &["api.example.test:443"]),
    ]
    .concat();
    let policy = sidecar_policy(&lab, audit.as_path(), &servers);
    let mut gw = Gateway::start_with(&policy, &scope_env(&scope.name));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a, &b]).await;
    let mut r = Cases(Vec::new());
    let dns = |name: &str, qtype: &str, tcp: bool| json!({"op": "dns", "server": "system", "name": name, "qtype": qtype, "tcp": tcp, "timeout_ms": 1500});
    let answer = |h: u8| format!("rcode=NOERROR a={} answers=1", lab.ip(h));
    let refused = |out: &str| out.starts_with("rcode=REFUSED a= answers=0");

    for tcp in [false, true] {
        let out = probe(&mut c, &a, dns("api.example.test", "A", tcp)).await;
        r.check(
            &format!("allowed name resolves through the agent (tcp: {tcp})"),
            out == answer(10),
            &out,
        );
    }
    let out = probe(&mut c, &a, dns("wild.example.test", "A", false)).await;
    r.check(
        "wildcard does not match its own domain",
        refused(&out),
        &out,
    );
    let out = probe(&mut c, &a, dns("alias.example.test", "A", false)).await;
    r.check(
        "CNAME allowed->unlisted: flattened answer for the allowed name only",
        out == answer(13),
        &out,
    );
    let (open, closed) = (
        probe(&mut c, &a, tcp(&lab.sa(13, 443))).await,
        probe(&mut c, &a, tcp(&lab.sa(13, 8443))).await,
    );
    r.check(
        "CNAME target address pinned for the allowed name's port",
        open.starts_with("connected") && blocked(&closed),
        &format!(":443 {open}; :8443 {closed}"),
    );
    let out = probe(&mut c, &a, dns("target.other.test", "A", false)).await;
    r.check("CNAME target queried directly refused", refused(&out), &out);
    for ty in ["TXT", "ANY", "MX"] {
        let out = probe(&mut c, &a, dns("api.example.test", ty, false)).await;
        r.check(
            &format!("{ty} query for an allowed name refused"),
            refused(&out),
            &out,
        );
    }
    let out = probe(&mut c, &a, dns("api.example.test", "AAAA", false)).await;
    r.check(
        "AAAA for an allowed name: empty NOERROR",
        out == "rcode=NOERROR a= answers=0",
        &out,
    );
    let out = probe(&mut c, &a, dns("private.example.test", "A", false)).await;
    r.check(
        "allowed name resolving to 10.0.0.5 not handed out",
        refused(&out),
        &out,
    );
    let out = probe(&mut c, &a, dns("mixed.example.test", "A", false)).await;
    r.check(
        "mixed answer: loopback filtered, public kept",
        out == answer(15),
        &out,
    );
    // Controls from the host: the services these probes aim at are there and answer.
    let t = Duration::from_millis(700);
    let doh = SocketAddr::from((lab.ip(53), 443));
    let host_doh = TcpStream::connect_timeout(&doh, t).is_ok();
    let out = probe(&mut c, &a, tcp(&doh.to_string())).await;
    r.check(
        "DoH to a resolver IP (443, not pinned) blocked",
        blocked(&out) && host_doh,
        &format!("{out}; from the host (control): {host_doh}"),
    );
    let echo = SocketAddr::from((lab.ip(10), 5353));
    let host_udp = udp_echoes(echo);
    let udp = json!({"op": "udp", "target": echo.to_string(), "timeout_ms": 1000});
    let out = probe(&mut c, &a, udp).await;
    r.check(
        "UDP elsewhere blocked",
        blocked(&out) && host_udp,
        &format!("{out}; from the host (control): {host_udp}"),
    );
    // ICMP from the server's namespace (the test's raw socket in there: the server itself has
    // no capability to open one); the host reaches the same address, so the lab answers pings.
    let a_ns = container_netns(&rt, &scope.name, &a).await;
    let (from_sandbox, from_host) = (
        icmp_echo(Some(&a_ns), lab.ip(10)),
        icmp_echo(None, lab.ip(10)),
    );
    r.check(
        "ICMP to a pinned address blocked",
        !from_sandbox && from_host,
        &format!("from the sandbox: {from_sandbox}; from the host (control): {from_host}"),
    );
    // Another sandbox: a service on B's own address (the namespace of B's agent and server).
    let (b_ip, _) = addr_of(&rt, &container_of(&rt, &scope.name, &b, true).await).await;
    let b_ns = container_netns(&rt, &scope.name, &b).await;
    listen_in(&b_ns, "0.0.0.0:443".parse().unwrap());
    let out = probe(&mut c, &a, tcp(&format!("{b_ip}:443"))).await;
    r.check("another sandbox blocked", blocked(&out), &out);
    // A pinned 198.18.K.13 for 443 above (and reached it); B resolved nothing of the kind.
    let out = probe(&mut c, &b, tcp(&lab.sa(13, 443))).await;
    r.check(
        "pins are per server (B cannot use A's pin)",
        blocked(&out) && open.starts_with("connected"),
        &out,
    );

    // Expiry: a TTL-0 answer is pinned for pin_ttl_min (2 s). The held connection is made by
    // the test in the server's namespace (a probe call cannot keep one open).
    let out = probe(&mut c, &a, dns("short.example.test", "A", false)).await;
    let to = SocketAddr::from((lab.ip(14), 443));
    let held = tcp_hold(&a_ns, to);
    r.check(
        "TTL-0 answer pinned for pin_ttl_min",
        out == answer(14) && held.is_some(),
        &format!("{out}; held connection: {}", held.is_some()),
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let out = probe(&mut c, &a, tcp(&lab.sa(14, 443))).await;
    r.check("expired pin: new connection blocked", blocked(&out), &out);
    let survived = held.is_some_and(|mut s| {
        let mut b = [0u8; 2];
        s.write_all(b"hi").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"hi"
    });
    r.check(
        "expired pin: established connection survives",
        survived,
        "echo on the held connection",
    );

    // Rotation: each answer pins the address it hands out (TTL 1 s: the questions are spaced
    // past the agent's cache).
    let mut seen = std::collections::BTreeSet::new();
    let mut outs = Vec::new();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let out = probe(&mut c, &a, resolve_connect("rot.example.test")).await;
        if let Some(addr) = out.strip_prefix("connected ip=") {
            seen.insert(addr.split(' ').next().unwrap_or_default().to_owned());
        }
        outs.push(out);
    }
    r.check(
        "address rotation: every new answer's address works",
        outs.iter().all(|o| o.ends_with("banner=ok")) && seen.len() == 2,
        &format!("{outs:?}"),
    );
    // Pin before answer: the name's pin has expired before each question, and the probe
    // connects the instant the answer is in; a pin added after answering would lose the race.
    let mut outs = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(2600)).await;
        outs.push(probe(&mut c, &a, resolve_connect("short.example.test")).await);
    }
    r.check(
        "connects right after answers (pin expired before each) all succeed",
        outs.iter()
            .all(|o| *o == format!("connected ip={} banner=ok", lab.ip(14))),
        &format!("{outs:?}"),
    );

    gw.terminate(Duration::from_secs(60));
    r.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_changes_a_running_agents_rules_without_restarting_the_server() {
    let Some(Setup {
        _turn,
        scope,
        rt,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag,
    }) = setup("sidecarreload").await
    else {
        return;
    };
    build_agent_image();
    let audit = audit.as_path();
    let a = format!("ra{tag}");
    let with = |allow: &str| sidecar_policy(&lab, audit, &server(&a, "docker", &[allow]));
    let mut gw = Gateway::start_with(&with("long.example.test:443"), &scope_env(&scope.name));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    await_tools(&mut c, &[&a]).await;
    let mut r = Cases(Vec::new());
    let connect = resolve_connect;
    // The allowed host's answer has a TTL of 60 s: its pin (held 30 s by `pin_ttl_max`) is
    // still live when the reload below removes it.
    let out = probe(&mut c, &a, connect("long.example.test")).await;
    r.check(
        "before: the allowed host works",
        out.starts_with("connected"),
        &out,
    );
    let out = probe(&mut c, &a, connect("api.example.test")).await;
    r.check(
        "before: the other host is refused",
        !out.starts_with("connected"),
        &out,
    );
    let container = container_of(&rt, &scope.name, &a, false).await;
    let agent = container_of(&rt, &scope.name, &a, true).await;
    let pid = server_pid(&mut c, &a).await;

    // The policy now allows the other host instead of the first.
    gw.write_policy(&with("api.example.test:443"));
    gw.sighup();
    let name = a.clone();
    await_record(audit, Duration::from_secs(60), "the rules applied", |rec| {
        rec["kind"] == "firewall"
            && rec["server"] == name.as_str()
            && rec["detail"]
                .as_str()
                .is_some_and(|d| d.contains("applied to the running egress enforcement"))
    })
    .await;
    r.check("the reload's rules are audited", true, "firewall record");
    let out = probe(&mut c, &a, connect("api.example.test")).await;
    r.check(
        "after: the newly allowed host works",
        out.starts_with("connected") && out.contains("banner=ok"),
        &out,
    );
    let out = probe(&mut c, &a, connect("long.example.test")).await;
    r.check(
        "after: the removed host's name is refused",
        out.starts_with("rcode=REFUSED"),
        &out,
    );
    // Its address was pinned before the reload, and that pin would still live: it went with
    // the old rules.
    let out = probe(&mut c, &a, tcp(&lab.sa(15, 443))).await;
    r.check(
        "after: the removed host's address is blocked within its old pin's lifetime",
        blocked(&out),
        &out,
    );
    let ids: Vec<String> = containers_in(&rt, &scope.name)
        .await
        .into_iter()
        .filter(|(_, l)| l.get("io.portcullis.server").map(String::as_str) == Some(a.as_str()))
        .map(|(id, _)| id)
        .collect();
    let pid_after = server_pid(&mut c, &a).await;
    r.check(
        "the server's container and agent kept running",
        ids.len() == 2 && ids.contains(&container) && ids.contains(&agent) && pid_after == pid,
        &format!("containers {ids:?} (were {container}, {agent}); pid {pid} -> {pid_after}"),
    );
    gw.terminate(Duration::from_secs(60));
    r.finish();
}
