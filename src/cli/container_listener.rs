//! `serve --published-on-host-loopback`: a gateway in a container must listen on the container's
//! own address (`0.0.0.0:8811`) for Docker's port publishing to reach it, which the listener
//! rule would refuse without TLS and client authentication. This opt-in replaces that rule with
//! one that is checked, not trusted:
//!
//! - the engine (through the mounted socket) must confirm that this container has its own
//!   network namespace and that every host binding of the listener's port is a loopback address
//!   (compose `127.0.0.1:8811:8811`), so nothing off the host can connect;
//! - the listener then accepts connections only from loopback (the container's own health
//!   probe) and from the host side of the container's bridge networks, which is where
//!   published-port traffic arrives from. Other containers on the same networks are refused.
//!
//! Anything that cannot be verified refuses to start.

use std::net::{IpAddr, SocketAddr};

use crate::sandbox::docker::own_container::{self, OwnContainer};
use crate::sandbox::docker::DockerRuntime;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("cannot reach the Docker engine to verify how port {port} is published: {reason}; mount /var/run/docker.sock into the gateway's container")]
    Engine { port: u16, reason: String },
    #[error(transparent)]
    Inspect(#[from] own_container::OwnContainerError),
    #[error("container {id}: {why}")]
    Unsafe { id: String, why: String },
}

/// A verified deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Peers the listener may accept besides loopback.
    pub peers: Vec<IpAddr>,
    /// Where clients on the host connect (the host side of the port bindings).
    pub host_addrs: Vec<SocketAddr>,
}

/// Verifies the deployment: what the listener may accept, and where clients reach it.
pub async fn verify(listen: SocketAddr) -> Result<Published, Refusal> {
    let port = listen.port();
    let rt = DockerRuntime::connect()
        .await
        .map_err(|e| Refusal::Engine {
            port,
            reason: e.to_string(),
        })?;
    let own = own_container::inspect(rt.api(), port).await?;
    let peers = judge(&own, port).map_err(|why| Refusal::Unsafe {
        id: own.id.chars().take(12).collect(),
        why,
    })?;
    let host_addrs: Vec<SocketAddr> = own
        .bindings
        .iter()
        .filter_map(|b| {
            Some(SocketAddr::new(
                b.host_ip.parse().ok()?,
                b.host_port.parse().ok()?,
            ))
        })
        .collect();
    tracing::info!(
        container = %own.id.chars().take(12).collect::<String>(),
        published = ?host_addrs,
        peers = ?peers,
        "verified: port {port} is published only on the host's loopback; accepting connections from loopback and the bridge gateways only"
    );
    Ok(Published { peers, host_addrs })
}

/// The rule itself, on the engine's facts: `Ok(peers)` or why the deployment is unsafe.
pub fn judge(own: &OwnContainer, port: u16) -> Result<Vec<IpAddr>, String> {
    let fix = format!("publish the port on the host's loopback only (compose: ports: [\"127.0.0.1:{port}:{port}\"])");
    if own.network_mode == "host" {
        return Err(format!("it shares the host's network (network_mode host), so {port} would be open on every host address; listen on 127.0.0.1:{port} instead, which needs no opt-in"));
    }
    if own.network_mode.starts_with("container:") {
        return Err(format!("it uses another container's network ({}), whose published ports this gateway cannot vouch for; give it its own network and {fix}", own.network_mode));
    }
    if own.publish_all_ports {
        return Err(format!(
            "it publishes all ports on every host address (-P / publish_all); {fix}"
        ));
    }
    if own.bindings.is_empty() {
        return Err(format!(
            "port {port}/tcp is not published, so no client on the host can reach it; {fix}"
        ));
    }
    for b in &own.bindings {
        let loopback = b.host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            let ip = if b.host_ip.is_empty() {
                "every address"
            } else {
                &b.host_ip
            };
            return Err(format!(
                "port {port}/tcp is published on {ip} (host port {}), reachable from other machines; {fix}",
                b.host_port
            ));
        }
    }
    // Only a bridge's gateway is the host itself; another driver's gateway may be a real router.
    let mut peers: Vec<IpAddr> = own
        .networks
        .iter()
        .filter(|n| n.driver == "bridge")
        .flat_map(|n| n.gateways.iter().copied())
        .collect();
    peers.sort();
    peers.dedup();
    if peers.is_empty() {
        return Err(format!("it is on no bridge network with a gateway, so published traffic cannot be told apart from other peers; attach it to a bridge network and {fix}"));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::docker::own_container::{AttachedNetwork, HostBinding};

    fn container(mode: &str, bindings: &[(&str, &str)]) -> OwnContainer {
        OwnContainer {
            id: "c".repeat(64),
            network_mode: mode.into(),
            publish_all_ports: false,
            bindings: bindings
                .iter()
                .map(|(ip, port)| HostBinding {
                    host_ip: (*ip).into(),
                    host_port: (*port).into(),
                })
                .collect(),
            networks: vec![
                AttachedNetwork {
                    name: "proj_default".into(),
                    driver: "bridge".into(),
                    gateways: vec!["172.20.0.1".parse().unwrap()],
                },
                AttachedNetwork {
                    name: "lan".into(),
                    driver: "macvlan".into(),
                    gateways: vec!["192.168.1.1".parse().unwrap()],
                },
            ],
        }
    }

    #[test]
    fn loopback_bindings_are_accepted_and_only_bridge_gateways_become_peers() {
        let c = container("proj_default", &[("127.0.0.1", "8811"), ("::1", "8811")]);
        assert_eq!(judge(&c, 8811), Ok(vec!["172.20.0.1".parse().unwrap()]));
    }

    #[test]
    fn anything_reachable_off_the_host_is_refused() {
        for (mode, bindings, expect) in [
            ("host", vec![], "network_mode host"),
            (
                "container:abc",
                vec![("127.0.0.1", "8811")],
                "another container",
            ),
            ("bridge", vec![], "not published"),
            ("bridge", vec![("0.0.0.0", "8811")], "published on 0.0.0.0"),
            ("bridge", vec![("", "8811")], "every address"),
            (
                "bridge",
                vec![("127.0.0.1", "8811"), ("::", "8811")],
                "published on ::",
            ),
            ("bridge", vec![("192.168.1.5", "8811")], "192.168.1.5"),
        ] {
            let c = container(mode, &bindings);
            let err = judge(&c, 8811).expect_err(mode);
            assert!(err.contains(expect), "{mode} {bindings:?}: {err}");
            assert!(
                err.contains("127.0.0.1:8811"),
                "the fix names the safe form: {err}"
            );
        }
        let mut all = container("bridge", &[("127.0.0.1", "8811")]);
        all.publish_all_ports = true;
        assert!(judge(&all, 8811).unwrap_err().contains("all ports"));
    }

    #[test]
    fn without_a_bridge_gateway_published_traffic_cannot_be_recognised() {
        let mut c = container("lan", &[("127.0.0.1", "8811")]);
        c.networks.retain(|n| n.driver != "bridge");
        assert!(judge(&c, 8811).unwrap_err().contains("no bridge network"));
    }
}
