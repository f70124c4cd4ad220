//! The container this process itself runs in, as the Docker engine describes it. The gateway
//! reads it to verify a deployment claim (its listener is published only on the host's loopback)
//! instead of trusting a flag.

use std::net::IpAddr;

use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;

use super::{timed, DockerFailure, API_TIMEOUT};

/// Where the engine mounts a container's own files (hostname, hosts, resolv.conf) from.
const MOUNTINFO: &str = "/proc/self/mountinfo";
const CGROUP: &str = "/proc/self/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum OwnContainerError {
    #[error("this process does not run in a Docker container (no container id in {MOUNTINFO} or {CGROUP})")]
    NotInContainer,
    #[error("the Docker engine does not know container {id}: is the mounted socket the engine that runs this container? ({source})")]
    Inspect {
        id: String,
        #[source]
        source: DockerFailure,
    },
}

/// The facts about this container that decide who can reach a port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContainer {
    pub id: String,
    /// `default`, `bridge`, a network name, `host`, `none` or `container:ID`.
    pub network_mode: String,
    /// `-P`: every exposed port published on every host address.
    pub publish_all_ports: bool,
    /// Host bindings of the port asked about, requested (HostConfig) and in effect
    /// (NetworkSettings).
    pub bindings: Vec<HostBinding>,
    pub networks: Vec<AttachedNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBinding {
    /// As the engine reports it; empty means every host address.
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedNetwork {
    pub name: String,
    /// `bridge`, `overlay`, `macvlan`, ...; empty when the network could not be inspected.
    pub driver: String,
    /// The host side of the network (the bridge's own addresses).
    pub gateways: Vec<IpAddr>,
}

/// This container's id, from the engine's bind mounts (works with cgroup v1 and v2) or, failing
/// that, from the cgroup path (cgroup v1).
pub fn own_id() -> Option<String> {
    let from = |path: &str, f: fn(&str) -> Option<String>| {
        std::fs::read_to_string(path).ok().and_then(|t| f(&t))
    };
    from(MOUNTINFO, id_from_mountinfo).or_else(|| from(CGROUP, id_from_cgroup))
}

/// Docker bind-mounts `/etc/hostname` and friends from `.../containers/<64 hex>/...`.
pub fn id_from_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        line.split_whitespace()
            .nth(3)
            .and_then(|root| id_after(root, "/containers/"))
    })
}

/// cgroup v1 lines look like `12:pids:/docker/<64 hex>`.
pub fn id_from_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| id_after(line, "/docker/"))
}

fn id_after(s: &str, marker: &str) -> Option<String> {
    let (_, rest) = s.split_once(marker)?;
    let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    (id.len() == 64).then_some(id)
}

/// Inspects this process's container and the networks it is attached to, for `port`/tcp.
pub async fn inspect(docker: &Docker, port: u16) -> Result<OwnContainer, OwnContainerError> {
    let id = own_id().ok_or(OwnContainerError::NotInContainer)?;
    let c = timed(
        "inspect this container",
        API_TIMEOUT,
        docker.inspect_container(&id, None::<InspectContainerOptions>),
    )
    .await
    .map_err(|source| OwnContainerError::Inspect {
        id: id.clone(),
        source,
    })?;
    let key = format!("{port}/tcp");
    let host = c.host_config.unwrap_or_default();
    let settings = c.network_settings.unwrap_or_default();
    let mut bindings = Vec::new();
    for map in [&host.port_bindings, &settings.ports].into_iter().flatten() {
        for b in map.get(&key).into_iter().flatten().flatten() {
            let b = HostBinding {
                host_ip: b.host_ip.clone().unwrap_or_default(),
                host_port: b.host_port.clone().unwrap_or_default(),
            };
            if !bindings.contains(&b) {
                bindings.push(b);
            }
        }
    }
    let mut networks = Vec::new();
    for (name, ep) in settings.networks.unwrap_or_default() {
        let gateways = [&ep.gateway, &ep.ipv6_gateway]
            .into_iter()
            .flatten()
            .filter_map(|g| g.parse::<IpAddr>().ok())
            .collect();
        let driver = match &ep.network_id {
            Some(nid) => network_driver(docker, nid).await,
            None => String::new(),
        };
        networks.push(AttachedNetwork {
            name,
            driver,
            gateways,
        });
    }
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(OwnContainer {
        id,
        network_mode: host.network_mode.unwrap_or_default(),
        publish_all_ports: host.publish_all_ports.unwrap_or(false),
        bindings,
        networks,
    })
}

/// The driver of a network; empty (trusted for nothing) when it cannot be read.
async fn network_driver(docker: &Docker, id: &str) -> String {
    match timed(
        "inspect network",
        API_TIMEOUT,
        docker.inspect_network(id, None),
    )
    .await
    {
        Ok(n) => n.driver.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(network = id, error = %e, "cannot inspect a network this container is attached to");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2b1c0d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c";

    #[test]
    fn the_id_comes_from_the_engines_bind_mounts() {
        let mountinfo = format!(
            "600 500 0:52 / / rw,relatime - overlay overlay rw\n\
             610 600 254:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(id_from_mountinfo(&mountinfo).as_deref(), Some(ID));
        assert_eq!(
            id_from_mountinfo("600 500 0:52 / / rw - overlay overlay rw\n"),
            None
        );
    }

    #[test]
    fn the_id_comes_from_a_v1_cgroup_path() {
        let cgroup = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n");
        assert_eq!(id_from_cgroup(&cgroup).as_deref(), Some(ID));
        assert_eq!(id_from_cgroup("0::/user.slice/session-1.scope\n"), None);
        // A truncated id is not an id.
        assert_eq!(id_from_cgroup("12:pids:/docker/3f4e2b\n"), None);
    }
}
