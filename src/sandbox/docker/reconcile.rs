//! Removing what a previous (or this) gateway left behind. Only objects carrying both Portcullis's
//! owner label and this gateway's scope are candidates; the caller decides which of those are
//! still owned by a live session.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use futures_util::stream::{self, StreamExt};

use super::{labels, timed, DockerFailure, DockerRuntime, API_TIMEOUT};

/// Containers removed at the same time by one pass.
const REMOVALS_AT_ONCE: usize = 16;

/// What a reconciliation pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Names of removed containers.
    pub containers: Vec<String>,
    /// Names of removed networks.
    pub networks: Vec<String>,
    /// Objects that should have gone but could not be removed, with why.
    pub failed: Vec<String>,
}

pub(super) async fn run(
    rt: &DockerRuntime,
    keep: &(dyn Fn(&HashMap<String, String>) -> bool + Sync),
) -> Result<Reconciled, DockerFailure> {
    let filters = HashMap::from([(
        "label",
        vec![labels::owner_filter(), labels::scope_filter(&rt.scope)],
    )]);
    let mut done = Reconciled::default();

    let containers = timed(
        "container list",
        API_TIMEOUT,
        rt.docker.list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        )),
    )
    .await?;
    let doomed: Vec<(String, String)> = containers
        .into_iter()
        .filter_map(|c| {
            let found = c.labels.unwrap_or_default();
            let id = c.id?;
            if !labels::is_ours(&found, &rt.scope) || keep(&found) {
                return None;
            }
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| id.clone());
            Some((id, name))
        })
        .collect();
    // Removed a few at a time, not one after another: each removal may wait up to its own
    // timeouts on a slow engine, and a gateway leaving hundreds of per-call containers behind
    // must not take hundreds of those waits to shut down.
    let outcomes: Vec<(String, Result<(), DockerFailure>)> = stream::iter(doomed)
        .map(|(id, name)| async move {
            let r = super::remove(&rt.docker, &id).await;
            if r.is_ok() {
                rt.forget(&id);
            }
            (name, r)
        })
        .buffer_unordered(REMOVALS_AT_ONCE)
        .collect()
        .await;
    for (name, r) in outcomes {
        match r {
            Ok(()) => done.containers.push(name),
            Err(e) => done.failed.push(format!("container {name}: {e}")),
        }
    }

    let networks = timed(
        "network list",
        API_TIMEOUT,
        rt.docker.list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        )),
    )
    .await?;
    for n in networks {
        let found = n.labels.unwrap_or_default();
        let Some(id) = n.id else { continue };
        if !labels::is_ours(&found, &rt.scope) || keep(&found) {
            continue;
        }
        let name = n.name.unwrap_or_else(|| id.clone());
        match timed("network remove", API_TIMEOUT, rt.docker.remove_network(&id)).await {
            Ok(()) => done.networks.push(name),
            Err(e) => done.failed.push(format!("network {name}: {e}")),
        }
    }
    if !done.containers.is_empty() || !done.networks.is_empty() {
        tracing::info!(containers = ?done.containers, networks = ?done.networks, "removed orphaned Docker objects");
    }
    for f in &done.failed {
        tracing::warn!(object = %f, "could not remove an orphaned Docker object");
    }
    Ok(done)
}
