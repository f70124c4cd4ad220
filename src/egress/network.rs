//! Per-server Docker bridge networks, created through the Engine API (bollard).
//!
//! Each docker server gets `portcullis-<server>`: a bridge whose host interface is named
//! `pc-<hash>` (the name the rule set keys on, so rules can exist before any container does),
//! inter-container traffic off, a /29 from the egress pool, IPv6 off, and ownership labels.
//! The caller passes a client that has already run `negotiate_version()` (the engine in use
//! is 20.10, older than bollard's default API version).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::Docker;

use super::ruleset;
use super::Attachment;

pub const OWNER_LABEL: &str = "io.portcullis.owner";
pub const SERVER_LABEL: &str = "io.portcullis.server";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("docker network for server `{server}`: {source}")]
    Docker {
        server: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The network's name for `server`.
pub fn network_name(server: &str) -> String {
    format!("portcullis-{server}")
}

/// Creates the server's network (replacing a stale one left by a crash) and returns the
/// attachment to pass to [`super::Egress::prepare`].
pub async fn create(
    docker: &Docker,
    server: &str,
    subnet: (Ipv4Addr, u8),
) -> Result<Attachment, NetworkError> {
    let name = network_name(server);
    let iface = ruleset::iface_name(server);
    let gateway = ruleset::gateway_of(subnet);
    let err = |source| NetworkError::Docker {
        server: server.to_string(),
        source,
    };
    // A network of the same name from an earlier run may sit on another subnet; it is ours
    // (same name), so it is removed rather than reused.
    if docker.inspect_network(&name, None).await.is_ok() {
        docker.remove_network(&name).await.map_err(err)?;
    }
    let options = HashMap::from([
        ("com.docker.network.bridge.name".to_string(), iface.clone()),
        (
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        ),
    ]);
    let labels = HashMap::from([
        (OWNER_LABEL.to_string(), "portcullis".to_string()),
        (SERVER_LABEL.to_string(), server.to_string()),
    ]);
    let req = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(false),
        options: Some(options),
        labels: Some(labels),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(format!("{}/{}", subnet.0, subnet.1)),
                gateway: Some(gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        ..Default::default()
    };
    docker.create_network(req).await.map_err(err)?;
    Ok(Attachment::Bridge {
        iface,
        gateway,
        subnet,
    })
}

/// Removes the server's network (after its containers are gone).
pub async fn remove(docker: &Docker, server: &str) -> Result<(), NetworkError> {
    docker
        .remove_network(&network_name(server))
        .await
        .map_err(|source| NetworkError::Docker {
            server: server.to_string(),
            source,
        })
}
