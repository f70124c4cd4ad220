//! Sidecar mode's per-server egress: a Docker network and an egress agent container per
//! firewalled docker server, shared by all its containers, created with the first one and
//! removed after the last one.
//!
//! Order, each step failing closed with an error that names it (nothing made is left behind):
//! 1. a bridge network with a /29 from `[egress] network_pool` that no Docker network uses,
//!    inter-container traffic off, the owner/scope labels;
//! 2. the agent container (`portcullis egress-agent` from the gateway's image): read-only,
//!    no-new-privileges, every capability dropped but NET_ADMIN and NET_BIND_SERVICE, which
//!    it keeps while dropping to its own uid, small limits, labelled like other containers;
//! 3. its config line on stdin, then wait for its `ready` (table programmed and read back,
//!    resolver listening);
//! 4. only then does the caller start the server with `network_mode: container:<agent>`.
//!
//! After that, a task reads the agent's reports and passes them to the firewall's sidecar
//! event stream (audited by `cli::egress_watch` like host mode's): denials, restores after
//! tampering, and a failed restore or the agent's exit, both of which stop the server (its
//! traffic is no longer watched). A reload that changes a server's rules sends them to its
//! running agent at once ([`Sidecars::apply`]) and waits for `applied`; the server's container
//! keeps running. A later join compares again, so an agent never runs older rules than the
//! policy in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListNetworksOptions,
};
use bollard::Docker;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{labels, random_hex, remove, timed, API_TIMEOUT, CREATE_TIMEOUT};
use crate::egress::agent::protocol::{self, FromAgent, ToAgent};
use crate::egress::network::{self, NetworkSpec};
use crate::egress::subnets::{self, IfaceAddr};
use crate::egress::{ruleset, EgressEvent};
use crate::policy::{Runtime as RuntimeSpec, Server, AGENT_UID};
use crate::sandbox::firewall::Firewall;
use crate::sandbox::leases::{Lease, Leases};
use crate::sandbox::{BoxWrite, SandboxError};

/// How long an agent may take from start to `ready`.
const READY_WAIT: Duration = Duration::from_secs(30);
/// The agent's limits: a resolver and a netlink socket need little.
const AGENT_MEMORY: i64 = 64 << 20;
const AGENT_PIDS: i64 = 32;

/// One server's running agent.
pub(super) struct Agent {
    id: String,
    network: NetworkSpec,
    /// The rules the agent runs (compared on every join: a reload sends the new ones).
    rules: tokio::sync::Mutex<(Server, BoxWrite)>,
    /// Replies to a later config (`applied` / `error`).
    replies: tokio::sync::Mutex<mpsc::Receiver<FromAgent>>,
    /// Set before the gateway removes the agent, so its exit is not reported as a crash.
    closing: Arc<AtomicBool>,
    /// Cleared when the agent's output ends: no new container may join it.
    alive: Arc<AtomicBool>,
}

pub(super) struct Sidecars {
    docker: Docker,
    firewall: Firewall,
    scope: Arc<str>,
    gateway: Arc<str>,
    leases: Leases<Arc<Agent>>,
    /// Pool slots held by this gateway's networks.
    slots: Mutex<BTreeMap<String, u32>>,
    /// Set when the gateway shuts down: agents going away then are not crashes.
    stopping: Arc<AtomicBool>,
}

fn failed(server: &str, step: &str, reason: impl std::fmt::Display) -> SandboxError {
    SandboxError::Egress {
        server: server.to_owned(),
        reason: format!("sidecar mode, {step}: {reason}"),
    }
}

impl Sidecars {
    pub fn new(docker: Docker, firewall: Firewall, scope: Arc<str>, gateway: Arc<str>) -> Self {
        Sidecars {
            docker,
            firewall,
            scope,
            gateway,
            leases: Leases::default(),
            slots: Mutex::new(BTreeMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Joins `server`'s agent (starting it for the first container); returns the agent's
    /// container id, the namespace to join.
    pub async fn join(self: &Arc<Self>, server: &Server) -> Result<(String, Lease), SandboxError> {
        // The rules in force, not the possibly older copy a restarting instance holds (which
        // `update` below would otherwise send, undoing a reload).
        let current = self.firewall.current(server);
        let server = &*current;
        if let RuntimeSpec::Docker(spec) = &server.runtime {
            let uid = spec.user.as_deref().and_then(|u| u.split(':').next());
            if uid == Some(AGENT_UID.to_string().as_str()) {
                return Err(failed(&server.name, "checking the server's user", format!("it runs as {AGENT_UID}, the egress agent's uid, whose DNS the table lets through; use another uid")));
            }
        }
        let agent = self
            .leases
            .acquire(&server.name, || self.create(server))
            .await?;
        let sidecars = self.clone();
        let name = server.name.clone();
        let lease = Lease::new(move || Box::pin(async move { sidecars.leave(&name).await }));
        if !agent.alive.load(Ordering::SeqCst) {
            return Err(failed(
                &server.name,
                "joining the egress agent",
                "it has exited; the server restarts with a new one once its instances are gone",
            ));
        }
        self.update(server, &agent).await?;
        Ok((agent.id.clone(), lease))
    }

    /// Applies `server`'s rules (a reload) to its running agent; `Ok(false)` when it has none
    /// (the rules are sent when its first container starts). Holding the server's lease slot
    /// meanwhile, so the agent is neither started nor removed under it.
    pub async fn apply(&self, server: &Server) -> Result<bool, SandboxError> {
        self.leases
            .with_current(&server.name, |agent: Arc<Agent>| async move {
                if !agent.alive.load(Ordering::SeqCst) {
                    // Its server is being stopped (the exit was reported); the next agent
                    // starts with the rules in force.
                    return Ok(false);
                }
                self.update(server, &agent).await.map(|()| true)
            })
            .await
            .unwrap_or(Ok(false))
    }

    /// Sends changed rules to a running agent and waits for `applied`.
    async fn update(&self, server: &Server, agent: &Agent) -> Result<(), SandboxError> {
        let mut rules = agent.rules.lock().await;
        if rules.0.egress == server.egress {
            return Ok(());
        }
        let step = "re-programming the egress agent's table";
        let mut replies = agent.replies.lock().await;
        // A reply that came after an earlier wait gave up belongs to that config, not this one.
        while replies.try_recv().is_ok() {}
        send_config(&mut rules.1, server, &self.firewall)
            .await
            .map_err(|e| failed(&server.name, step, e))?;
        match tokio::time::timeout(READY_WAIT, replies.recv()).await {
            Ok(Some(FromAgent::Applied)) => {
                rules.0 = server.clone();
                Ok(())
            }
            Ok(Some(FromAgent::Error { step: s, message })) => {
                Err(failed(&server.name, step, format!("{s}: {message}")))
            }
            Ok(other) => Err(failed(&server.name, step, format!("unexpected {other:?}"))),
            Err(_) => Err(failed(&server.name, step, "no answer in time")),
        }
    }

    async fn agent_image(&self, server: &str) -> Result<String, SandboxError> {
        if let Some(i) = &self.firewall.settings().agent_image {
            return Ok(i.clone());
        }
        let step = "finding the egress agent's image";
        let id = super::own_container::own_id().ok_or_else(|| failed(server, step, "the gateway does not run in a container; set [egress] agent_image to the gateway's image"))?;
        let info = timed(
            "container inspect",
            API_TIMEOUT,
            self.docker
                .inspect_container(&id, None::<InspectContainerOptions>),
        )
        .await
        .map_err(|e| failed(server, step, e))?;
        info.image
            .ok_or_else(|| failed(server, step, "the engine names no image for this container"))
    }

    /// A /29 of the pool that no Docker network overlaps.
    async fn allocate(&self, server: &str) -> Result<(Ipv4Addr, u8), SandboxError> {
        let step = "choosing the network's subnet";
        let nets = timed(
            "network list",
            API_TIMEOUT,
            self.docker.list_networks(None::<ListNetworksOptions>),
        )
        .await
        .map_err(|e| failed(server, step, e))?;
        let mut present = Vec::new();
        for n in nets {
            for c in n.ipam.and_then(|i| i.config).unwrap_or_default() {
                let Some((addr, prefix)) = c.subnet.as_deref().and_then(parse_cidr) else {
                    continue;
                };
                // Every /29 of a wider network is taken: list each start address it covers
                // inside the pool's range (bounded by the pool's own size).
                let size = 1u64 << (32 - u32::from(prefix.max(16)));
                for off in (0..size).step_by(8) {
                    if let Ok(a) = u32::try_from(u64::from(u32::from(addr)) + off) {
                        present.push(IfaceAddr {
                            iface: n.name.clone().unwrap_or_default(),
                            addr: Ipv4Addr::from(a),
                            prefix,
                        });
                    }
                }
            }
        }
        let pool = self.firewall.settings().network_pool;
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| failed(server, step, "slot table poisoned"))?;
        let ours: BTreeSet<u32> = slots.values().copied().collect();
        let slot =
            subnets::first_free(pool, &ours, &present).map_err(|e| failed(server, step, e))?;
        slots.insert(server.to_owned(), slot);
        ruleset::subnet_slot(pool, slot)
            .ok_or_else(|| failed(server, step, "slot outside the pool"))
    }

    fn free(&self, server: &str) {
        if let Ok(mut s) = self.slots.lock() {
            s.remove(server);
        }
    }

    async fn create(&self, server: &Server) -> Result<Arc<Agent>, SandboxError> {
        let image = self.agent_image(&server.name).await?;
        let subnet = self.allocate(&server.name).await?;
        let spec = NetworkSpec {
            name: format!("portcullis-{}-{}", self.scope, server.name),
            server: server.name.clone(),
            iface: self.firewall.names().iface(&server.name),
            subnet,
            labels: labels::for_network(&server.name, &self.gateway, &self.scope),
        };
        if let Err(e) = network::create(&self.docker, &spec).await {
            self.free(&server.name);
            return Err(failed(&server.name, "creating the server's network", e));
        }
        let started = self.start_agent(server, &image, &spec).await;
        match started {
            Ok(agent) => {
                tracing::info!(server = %server.name, network = %spec.name, agent = %super::short(&agent.id), "egress agent ready: table verified in the server's namespace");
                Ok(Arc::new(agent))
            }
            Err((id, e)) => {
                if let Some(id) = id {
                    let _ = remove(&self.docker, &id).await;
                }
                let _ = network::remove(&self.docker, &spec).await;
                self.free(&server.name);
                Err(e)
            }
        }
    }

    /// Steps 2 and 3; on error, the id of a container that was created (for removal).
    async fn start_agent(
        &self,
        server: &Server,
        image: &str,
        spec: &NetworkSpec,
    ) -> Result<Agent, (Option<String>, SandboxError)> {
        let name = &server.name;
        let config = agent_config(image, &spec.name, self.agent_labels(name));
        let cname = format!("portcullis-{}-agent-{}", name, random_hex(4));
        let created = timed(
            "container create",
            CREATE_TIMEOUT,
            self.docker.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&cname).build()),
                config,
            ),
        )
        .await
        .map_err(|e| (None, failed(name, "creating the egress agent container", e)))?;
        let id = created.id;
        let err = |step: &str, e: String| (Some(id.clone()), failed(name, step, e));
        let attached = timed(
            "container attach",
            API_TIMEOUT,
            self.docker
                .attach_container(&id, Some(super::stdio_attach())),
        )
        .await
        .map_err(|e| err("attaching to the egress agent", e.to_string()))?;
        timed(
            "container start",
            API_TIMEOUT,
            self.docker.start_container(&id, None),
        )
        .await
        .map_err(|e| err("starting the egress agent", e.to_string()))?;
        let (stdout, stderr) = super::attach::demux(format!("{name} agent"), attached.output);
        spawn_log(name.clone(), stderr);
        let mut stdin: BoxWrite = Box::new(attached.input);
        send_config(&mut stdin, server, &self.firewall)
            .await
            .map_err(|e| err("sending the egress agent its config", e))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_WAIT, lines.next_line()).await;
        let step = "waiting for the egress agent's verified table";
        match first {
            Err(_) => return Err(err(step, format!("no `ready` within {READY_WAIT:?}"))),
            Ok(Err(e)) => return Err(err(step, e.to_string())),
            Ok(Ok(None)) => return Err(err(step, "the agent exited before `ready`".into())),
            Ok(Ok(Some(line))) => match protocol::decode_from_agent(&line) {
                Ok(FromAgent::Ready { .. }) => {}
                Ok(FromAgent::Error { step: s, message }) => {
                    return Err(err(step, format!("the agent failed {s}: {message}")))
                }
                Ok(other) => return Err(err(step, format!("unexpected {other:?}"))),
                Err(e) => return Err(err(step, e.to_string())),
            },
        }
        let closing = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let (reply_tx, replies) = mpsc::channel(4);
        tokio::spawn(read_reports(
            name.clone(),
            server.egress.dns_rate_in(self.firewall.settings()),
            lines,
            self.firewall.sidecar_reporter(),
            reply_tx,
            [closing.clone(), self.stopping.clone()],
            alive.clone(),
        ));
        Ok(Agent {
            id,
            network: spec.clone(),
            rules: tokio::sync::Mutex::new((server.clone(), stdin)),
            replies: tokio::sync::Mutex::new(replies),
            closing,
            alive,
        })
    }

    fn agent_labels(&self, server: &str) -> HashMap<String, String> {
        let mut l = labels::for_network(server, &self.gateway, &self.scope);
        l.insert(labels::PURPOSE.to_owned(), "egress-agent".to_owned());
        l
    }

    async fn teardown(&self, server: &str, agent: Arc<Agent>) -> bool {
        agent.closing.store(true, Ordering::SeqCst);
        let mut clean = true;
        if let Err(e) = remove(&self.docker, &agent.id).await {
            tracing::warn!(%server, error = %e, "could not remove the egress agent; reconciliation removes it later");
            clean = false;
        }
        if let Err(e) = network::remove(&self.docker, &agent.network).await {
            tracing::warn!(%server, error = %e, "could not remove the server's network; reconciliation removes it later");
            clean = false;
        }
        self.free(server);
        clean
    }

    async fn leave(&self, server: &str) {
        self.leases
            .release(server, |a| async move {
                self.teardown(server, a).await;
            })
            .await;
    }

    /// Marks the shutdown: from here on an agent's exit is expected (the shutdown sweep may
    /// remove agents before their leases are released).
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Removes every agent and network (shutdown, after every server container is gone).
    pub async fn shutdown(&self) -> bool {
        let mut clean = true;
        for (server, a) in self.leases.drain().await {
            clean &= self.teardown(&server, a).await;
        }
        clean
    }
}

async fn send_config(stdin: &mut BoxWrite, server: &Server, fw: &Firewall) -> Result<(), String> {
    let msg = ToAgent::Config {
        server: server.name.clone(),
        instance: fw.names().instance().to_string(),
        policy: protocol::config_policy(server, fw.settings()),
    };
    stdin
        .write_all(protocol::encode(&msg).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stdin.flush().await.map_err(|e| e.to_string())
}

/// The agent's report lines, until its output ends.
async fn read_reports(
    server: String,
    dns_rate: crate::policy::Rate,
    mut lines: tokio::io::Lines<BufReader<crate::sandbox::BoxRead>>,
    events: mpsc::Sender<EgressEvent>,
    replies: mpsc::Sender<FromAgent>,
    closing: [Arc<AtomicBool>; 2],
    alive: Arc<AtomicBool>,
) {
    let mut last_error = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let who = format!("server `{server}`");
        let ev = match protocol::decode_from_agent(&line)
            .map(|m| m.into_event(&server, &who, dns_rate))
        {
            Ok(Ok(ev)) => ev,
            Ok(Err(FromAgent::Pin { addrs })) => {
                tracing::debug!(%server, ?addrs, "egress agent pinned");
                continue;
            }
            Ok(Err(m @ FromAgent::Error { .. })) => {
                last_error = Some(format!("{m:?}"));
                let _ = replies.try_send(m);
                continue;
            }
            Ok(Err(m)) => {
                let _ = replies.try_send(m);
                continue;
            }
            Err(e) => {
                tracing::warn!(%server, error = %e, "egress agent sent a line outside the protocol");
                continue;
            }
        };
        let _ = events.try_send(ev);
    }
    alive.store(false, Ordering::SeqCst);
    if !closing.iter().any(|c| c.load(Ordering::SeqCst)) {
        let why = last_error.unwrap_or_else(|| "its output ended".into());
        let _ = events.try_send(EgressEvent::RestoreFailed {
            servers: vec![server.clone()],
            error: format!("the egress agent of server `{server}` exited ({why}); its table is no longer watched"),
        });
    }
}

/// The agent's stderr (its logs) into the gateway's log, line by line.
fn spawn_log(server: String, stderr: crate::sandbox::BoxRead) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(%server, "egress agent: {}", line.chars().take(2000).collect::<String>());
        }
    });
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}

/// The agent container: pure, so the hardening is unit-tested.
pub fn agent_config(
    image: &str,
    network: &str,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".to_owned()]),
        // SETUID/SETGID only to drop to the agent's uid at start (setgroups, setresgid,
        // setresuid need them); the agent's capset right after leaves just the other two in
        // its permitted set, so they are gone before it reads its config (`agent::privs`).
        cap_add: Some(
            ["NET_ADMIN", "NET_BIND_SERVICE", "SETUID", "SETGID"]
                .map(str::to_owned)
                .to_vec(),
        ),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        readonly_rootfs: Some(true),
        memory: Some(AGENT_MEMORY),
        memory_swap: Some(AGENT_MEMORY),
        pids_limit: Some(AGENT_PIDS),
        network_mode: Some(network.to_owned()),
        // What Docker's embedded resolver would forward to; the table sends questions for it
        // to the agent's resolver anyway.
        dns: Some(vec!["127.0.0.1".to_owned()]),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        ipc_mode: Some("private".to_owned()),
        ..Default::default()
    };
    super::spec::with_stdio(ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["egress-agent".to_owned()]),
        // Root only until the agent drops to its own uid (Docker gives capabilities to uid 0
        // alone); see `egress::agent::privs`.
        user: Some("0:0".to_owned()),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_container_is_hardened_and_keeps_only_two_capabilities() {
        let c = agent_config("img", "net", HashMap::new());
        let h = c.host_config.unwrap();
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            h.cap_add,
            Some(
                ["NET_ADMIN", "NET_BIND_SERVICE", "SETUID", "SETGID"]
                    .map(str::to_owned)
                    .to_vec()
            )
        );
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, Some(false));
        assert!(h
            .security_opt
            .unwrap()
            .contains(&"no-new-privileges:true".to_owned()));
        assert_eq!(h.network_mode.as_deref(), Some("net"));
        assert_eq!(c.cmd, Some(vec!["egress-agent".to_owned()]));
        assert_eq!(
            parse_cidr("10.0.0.8/29"),
            Some((Ipv4Addr::new(10, 0, 0, 8), 29))
        );
    }
}
