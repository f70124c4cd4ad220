//! Per-server Docker bridge networks, created through the Engine API (bollard).
//!
//! Each firewalled docker server gets its own bridge whose host interface is named
//! `pc<tag><hash>` (the instance's name for the server, which its rule set keys on, so rules
//! can exist before any container does),
//! inter-container traffic off, a /29 from the egress pool, IPv6 off, and the caller's
//! ownership labels (so reconciliation finds leftovers of its scope). The caller passes a
//! client that has already run `negotiate_version()` (the engine in use is 20.10, older than
//! bollard's default API version).

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::Docker;

use super::ruleset;
use super::Attachment;

/// Upper bound for one network API call.
const API_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("docker network `{network}` for server `{server}`: {op} failed: {source}")]
    Docker {
        server: String,
        network: String,
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker network `{network}` for server `{server}`: {op}: no answer from the Docker engine within {}s", API_TIMEOUT.as_secs())]
    Timeout {
        server: String,
        network: String,
        op: &'static str,
    },
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// The Docker network's name.
    pub name: String,
    pub server: String,
    /// The bridge's host interface (`Names::iface`).
    pub iface: String,
    /// A /29 from the egress pool.
    pub subnet: (Ipv4Addr, u8),
    pub labels: HashMap<String, String>,
}

async fn timed<T>(
    spec: &NetworkSpec,
    op: &'static str,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, NetworkError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(NetworkError::Docker {
            server: spec.server.clone(),
            network: spec.name.clone(),
            op,
            source,
        }),
        Err(_) => Err(NetworkError::Timeout {
            server: spec.server.clone(),
            network: spec.name.clone(),
            op,
        }),
    }
}

fn is_not_found(e: &NetworkError) -> bool {
    matches!(
        e,
        NetworkError::Docker {
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            },
            ..
        }
    )
}

/// Creates the server's network (replacing a stale one of the same name left by a crash) and
/// returns the attachment to pass to [`super::Egress::prepare`].
pub async fn create(docker: &Docker, spec: &NetworkSpec) -> Result<Attachment, NetworkError> {
    let iface = spec.iface.clone();
    let gateway = ruleset::gateway_of(spec.subnet);
    // A network of the same name from an earlier run may sit on another subnet; it is ours
    // (same name), so it is removed rather than reused.
    match timed(spec, "network remove", docker.remove_network(&spec.name)).await {
        Err(e) if !is_not_found(&e) => return Err(e),
        _ => {}
    }
    let options = HashMap::from([
        ("com.docker.network.bridge.name".to_string(), iface.clone()),
        (
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        ),
    ]);
    let req = NetworkCreateRequest {
        name: spec.name.clone(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(false),
        options: Some(options),
        labels: Some(spec.labels.clone()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(format!("{}/{}", spec.subnet.0, spec.subnet.1)),
                gateway: Some(gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        ..Default::default()
    };
    timed(spec, "network create", docker.create_network(req)).await?;
    Ok(Attachment::Bridge {
        iface,
        gateway,
        subnet: spec.subnet,
    })
}

/// Removes the server's network (after its containers are gone); a missing one is fine.
pub async fn remove(docker: &Docker, spec: &NetworkSpec) -> Result<(), NetworkError> {
    match timed(spec, "network remove", docker.remove_network(&spec.name)).await {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}
