//! The lab of the egress tests that run the real gateway (`egress_gateway.rs`, `egress_dns.rs`,
//! `egress_sidecar.rs`): Docker servers in real containers and process servers in their own
//! network namespaces, on the host's own table or behind sidecar agents, with a fake outside
//! world and a DNS server that the test runs. Privileged (root, dockerd, `ip`, `nft`);
//! see `netlab` and `docker`.
//!
//! Topology (the host's network namespace is the router here, because Docker's bridges live
//! there):
//! ```text
//!  container a ──bridge pc-…──┐                        ┌─ veth plabK ── netns "external"
//!  container b ──bridge pc-…──┤  host: table inet       │   198.18.K.10-15,30,53
//!  process   p ──veth   pc-…──┘  portcullis, resolvers  │   169.254.169.254 (fake metadata)
//!                                 10.214.K.0/24 pool ────┘   DNS server of the test (.53)
//! ```
//! Network safety: a policy-routing rule sends everything from the sandbox pool (other than
//! sandbox-to-sandbox) into the test's external namespace, which forwards nothing; so even a
//! broken firewall could not reach anything but hosts this test made. The external namespace
//! has no route back to the pool: answers reach a sandbox only through NAT (Docker's for
//! bridges, the table's for the process veth), as on a real host.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use portcullis::egress::Names;
use portcullis::instance::InstanceId;
use portcullis::sandbox::docker::DockerRuntime;
use serde_json::{json, Value};

use super::audit_records;
use super::client::Mcp;
use super::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
use super::netlab::{self, dns_server, sh, tcp_service, udp_echo, Ns, Zone};

/// The tests of a test binary share the host's namespace, its lab routes and Docker: they take
/// turns (binaries take turns through the privileged-test lock).
pub static HOST_TABLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fake outside world of one test (see the module comment); removed on drop.
pub struct HostLab {
    pub k: u8,
    pub veth: String,
    pub ext: Ns,
    pub table: String,
    pub prefs: [String; 2],
    pub pool: String,
}

impl HostLab {
    pub fn new() -> HostLab {
        let t = netlab::tag();
        let k = u8::try_from(1 + std::process::id() % 200).unwrap();
        let veth = format!("plab{k}");
        let pool = format!("10.214.{k}.0/24");
        let table = format!("{}", 30000 + u32::from(k));
        let prefs = [
            format!("{}", 30000 + 2 * u32::from(k)),
            format!("{}", 30001 + 2 * u32::from(k)),
        ];
        // Leftovers of a run of this test that died.
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        clear_rules(&prefs, &table);
        let ext = Ns::new(format!("pcg-e{t}"));
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
        ]);
        let lab = HostLab {
            k,
            veth: veth.clone(),
            ext,
            table: table.clone(),
            prefs: prefs.clone(),
            pool: pool.clone(),
        };
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{k}.1/24"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        for h in [10, 11, 12, 13, 14, 15, 30, 53] {
            lab.ext
                .ip(&["addr", "add", &format!("198.18.{k}.{h}/24"), "dev", "eth0"]);
        }
        lab.ext
            .ip(&["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
        lab.ext.ip(&["link", "set", "eth0", "up"]);
        // Sandbox to sandbox stays on the host's own routes (so the firewall, not routing,
        // decides); everything else from the pool goes to the external namespace only.
        sh(&[
            "ip", "rule", "add", "pref", &prefs[0], "from", &pool, "to", &pool, "lookup", "main",
        ]);
        sh(&[
            "ip", "rule", "add", "pref", &prefs[1], "from", &pool, "lookup", &table,
        ]);
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{k}.10"),
            "dev",
            &veth,
            "table",
            &table,
        ]);
        lab
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.k, host)
    }

    pub fn sa(&self, host: u8, port: u16) -> String {
        format!("198.18.{}.{host}:{port}", self.k)
    }

    /// The external services: the test's DNS zone, TCP banners, UDP echoes.
    pub fn serve(&self) -> Arc<Zone> {
        let zone = Zone::new([198, 18, self.k], vec![self.ip(11), self.ip(12)]);
        dns_server(&self.ext, SocketAddr::from((self.ip(53), 53)), zone.clone());
        for port in [443u16, 8443, 853, 80] {
            tcp_service(
                &self.ext,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                "ok",
            );
        }
        udp_echo(&self.ext, "0.0.0.0:443".parse().unwrap());
        zone
    }
}

fn clear_rules(prefs: &[String], table: &str) {
    for pref in prefs {
        while Command::new("ip")
            .args(["rule", "del", "pref", pref])
            .output()
            .is_ok_and(|o| o.status.success())
        {}
    }
    let _ = Command::new("ip")
        .args(["route", "flush", "table", table])
        .output();
}

impl Drop for HostLab {
    fn drop(&mut self) {
        clear_rules(&self.prefs, &self.table);
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// The first IPv4 address of a host interface.
pub fn iface_addr(iface: &str) -> Option<Ipv4Addr> {
    let o = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", iface])
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// A DNS question from the host (the router) to the test's DNS server: the lab's control.
pub fn host_dns_answers(server: SocketAddr) -> bool {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("unlisted.test.").unwrap(),
        RecordType::A,
    ));
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf).is_ok()
}

/// What a gateway killed by a failing test leaves on the host (a gateway that stops normally
/// removes it all itself): the namespaces of its process servers with their host-forward rules
/// and resolver configuration, and the table. Declared before the gateway, so it runs after
/// the gateway is killed.
pub struct Leftovers(pub Names, pub Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for server in &self.1 {
            let iface = self.0.iface(server);
            let netns = self.0.netns(server);
            let _ = Command::new("ip").args(["netns", "del", &netns]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
            for dir in ["-i", "-o"] {
                let _ = Command::new("iptables")
                    .args(["-D", "DOCKER-USER", dir, &iface, "-j", "ACCEPT"])
                    .output();
            }
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0.table()])
            .output();
    }
}

/// A TCP service in the host's own namespace (the gateway's host): a sandbox must not reach it.
pub fn host_service() -> u16 {
    use std::io::Write;
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind host service");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.write_all(b"ok");
        }
    });
    port
}

/// The names of the objects of the gateway instance `id`.
pub fn names_of(id: &str) -> Names {
    Names::new(InstanceId::parse(id).expect("instance id"))
}

/// Waits until an audit record satisfies `pred`; panics with what was there after `limit`.
pub async fn await_record(dir: &Path, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let recs = audit_records(dir);
        if recs.iter().any(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record for {what} within {limit:?}; records: {recs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until each server's tools are in the catalog (`/ready` can answer a moment before a
/// just-started server's tools are listed).
pub async fn await_tools(c: &mut Mcp, servers: &[&str]) {
    for s in servers {
        // Generous: in sidecar mode an agent container starts and verifies its table first.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = c
                .call_tool(&format!("{s}__echo"), json!({"text": "up"}))
                .await;
            if r["result"]["content"][0]["text"] == "up" {
                break;
            }
            assert!(Instant::now() < deadline, "{s} never served a call: {r}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub async fn probe(c: &mut Mcp, server: &str, args: Value) -> String {
    let r = c.call_tool(&format!("{server}__net_probe"), args).await;
    match r["result"]["content"][0]["text"].as_str() {
        Some(t) => t.to_owned(),
        None => format!("call failed: {r}"),
    }
}

pub fn tcp(target: &str) -> Value {
    json!({"op": "tcp", "target": target, "timeout_ms": 1000})
}

pub fn blocked(out: &str) -> bool {
    out.starts_with("failed")
}

/// What Docker says about `server`'s (only) container.
async fn container_info(
    rt: &DockerRuntime,
    scope: &str,
    server: &str,
) -> bollard::models::ContainerInspectResponse {
    let id = containers_in(rt, scope)
        .await
        .into_iter()
        .find(|(_, l)| l.get("io.portcullis.server").map(String::as_str) == Some(server))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no container of {server}"));
    rt.api()
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
}

/// The address of a container on its (only) network, and that network's gateway.
pub async fn container_addr(rt: &DockerRuntime, scope: &str, server: &str) -> (Ipv4Addr, Ipv4Addr) {
    let nets = container_info(rt, scope, server)
        .await
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let (_, ep) = nets.into_iter().next().expect("a network");
    (
        ep.ip_address.unwrap_or_default().parse().expect("ip"),
        ep.gateway.unwrap_or_default().parse().expect("gateway"),
    )
}

/// The network namespace of `server`'s container (`/proc/PID/ns/net`): what is sent from there
/// takes the same way as what the server's own process sends, as a hostile server would.
pub async fn container_netns(rt: &DockerRuntime, scope: &str, server: &str) -> std::path::PathBuf {
    let pid = container_info(rt, scope, server)
        .await
        .state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("the container of {server} has no process"));
    std::path::PathBuf::from(format!("/proc/{pid}/ns/net"))
}

pub fn nft_table(names: &Names) -> Option<String> {
    let o = Command::new("nft")
        .args(["list", "table", "inet", &names.table()])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A policy on the lab: its resolver, its pool, the audit folder, then `servers` (TOML).
pub fn policy(lab: &HostLab, audit: &Path, servers: &str) -> String {
    format!(
        r#"
[gateway]
naming = "prefix"

[egress]
upstream_resolvers = ["{dns}"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"
network_pool = "{pool}"

[audit]
dir = "{audit}"
{servers}"#,
        dns = lab.sa(53, 53),
        pool = lab.pool,
        audit = audit.display(),
    )
}

/// The gateway image built from the binary under test, which sidecar mode runs its egress
/// agents from (as a deployment uses the gateway's own image).
pub const AGENT_IMAGE: &str = "portcullis/gateway:sidecar-test";

/// Builds [`AGENT_IMAGE`] once per test binary (`tests/docker/build-gateway-image.sh`).
pub fn build_agent_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(super::repo_root().join("tests/docker/build-gateway-image.sh"))
            .arg(AGENT_IMAGE)
            .env("PORTCULLIS_GATEWAY_BIN", super::gateway_bin())
            .output()
            .expect("build-gateway-image.sh");
        assert!(
            out.status.success(),
            "building the agent image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// [`policy`] in sidecar mode: each docker server's egress is held by an agent container.
pub fn sidecar_policy(lab: &HostLab, audit: &Path, servers: &str) -> String {
    policy(lab, audit, servers).replacen(
        "[egress]\n",
        &format!("[egress]\nmode = \"sidecar\"\nagent_image = \"{AGENT_IMAGE}\"\n"),
        1,
    )
}

/// The running container of `server` in sidecar mode: its egress agent's (`agent`) or its own.
pub async fn container_of(rt: &DockerRuntime, scope: &str, server: &str, agent: bool) -> String {
    containers_in(rt, scope)
        .await
        .into_iter()
        .find(|(_, l)| {
            l.get("io.portcullis.server").map(String::as_str) == Some(server)
                && (l.get("io.portcullis.purpose").map(String::as_str) == Some("egress-agent"))
                    == agent
        })
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no container of {server} (agent: {agent})"))
}

/// A server of `runtime` (docker: the fixture image; process: the fixture binary) with rules.
pub fn server(name: &str, runtime: &str, allow: &[&str]) -> String {
    let run = match runtime {
        "docker" => format!("runtime = \"docker\"\nimage = \"{FIXTURE_IMAGE}\""),
        _ => "runtime = \"process\"\ncommand = \"{fixture}\"".to_owned(),
    };
    let allow: Vec<String> = allow.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "\n[servers.{name}]\n{run}\negress.allow = [{}]\n",
        allow.join(", ")
    )
}

/// What every test here needs: its turn at the host's table, Docker in a fresh scope, the
/// lab with its services, an audit folder, and a tag for unique server names.
pub struct Setup {
    pub _turn: tokio::sync::MutexGuard<'static, ()>,
    pub scope: Scope,
    pub rt: DockerRuntime,
    pub lab: HostLab,
    pub zone: Arc<Zone>,
    pub _audit_dir: tempfile::TempDir,
    pub audit: std::path::PathBuf,
    pub tag: String,
}

/// `None`: skipped (locally, without the privileges; under CI that fails instead).
pub async fn setup(test: &str) -> Option<Setup> {
    let turn = HOST_TABLE.lock().await;
    if !netlab::privileged() {
        return None;
    }
    let scope = Scope::new(test);
    let rt = runtime(&scope.name).await?;
    let lab = HostLab::new();
    let zone = lab.serve();
    let audit_dir = tempfile::tempdir().unwrap();
    Some(Setup {
        _turn: turn,
        scope,
        rt,
        lab,
        zone,
        audit: audit_dir.path().to_path_buf(),
        _audit_dir: audit_dir,
        tag: netlab::tag().replace('x', ""),
    })
}

/// `portcullis audit report --format json` (and the HTML) of the running gateway's log: a
/// check that the egress denials are `total`, per listed server at least one, with each
/// server named in the HTML's egress section. The records carry no destination (the table
/// counts dropped packets per server), so the report cannot break them down by one.
pub fn report_egress(audit: &Path, servers: &[&String], total: usize) -> Result<(), String> {
    {
        let run = |args: &[&str]| {
            let out = Command::new(super::gateway_bin())
                .args(["audit", "report"])
                .args(args)
                .arg(audit)
                .output()
                .map_err(|e| e.to_string())?;
            // A log still being written may end in a partial line; the report says so (exit 1)
            // but still counts what is complete.
            Ok::<_, String>(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let json: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])?)
            .map_err(|e| format!("report JSON: {e}"))?;
        let by_server = &json["egress_denied_by_server"];
        let sum: u64 = by_server
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let counted = json["totals"]["egress_denied"].as_u64().unwrap_or(0);
        // The gateway may write one more denial between the count and the report.
        if counted < total as u64 || sum != counted {
            return Err(format!(
                "{total} records, report: total {counted}, by server {by_server}"
            ));
        }
        for s in servers {
            if by_server[s.as_str()].as_u64().unwrap_or(0) == 0 {
                return Err(format!("no denial of {s} in {by_server}"));
            }
        }
        let html = run(&["--format", "html"])?;
        for s in servers {
            if !html.contains(s.as_str()) {
                return Err(format!("{s} is not in the HTML report"));
            }
        }
        Ok(())
    }
}
