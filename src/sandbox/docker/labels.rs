//! The labels that mark Docker objects as Portcullis's. Reconciliation trusts nothing else, so
//! every container and network Portcullis creates carries `owner`, and nothing it did not create
//! is ever removed. Labels are readable by anyone with access to the engine: never a secret here.

use std::collections::HashMap;

use crate::sandbox::SpawnContext;

pub const OWNER: &str = "io.portcullis.owner";
pub const OWNER_VALUE: &str = "portcullis";
pub const SERVER: &str = "io.portcullis.server";
pub const POLICY: &str = "io.portcullis.policy";
pub const SESSION: &str = "io.portcullis.session";
pub const PURPOSE: &str = "io.portcullis.purpose";
/// The image reference as the policy wrote it (the container is created from the resolved id).
pub const IMAGE: &str = "io.portcullis.image";
/// The gateway process that created the object (random per process).
pub const GATEWAY: &str = "io.portcullis.gateway";
/// The deployment the gateway belongs to: reconciliation only looks at its own scope, so two
/// gateways sharing an engine (or tests running in parallel) never remove each other's objects.
pub const SCOPE: &str = "io.portcullis.scope";

/// The `label=` filter value that selects Portcullis's objects in one scope.
pub fn owner_filter() -> String {
    format!("{OWNER}={OWNER_VALUE}")
}

pub fn scope_filter(scope: &str) -> String {
    format!("{SCOPE}={scope}")
}

/// Labels for one container.
pub fn for_container(
    server: &str,
    ctx: &SpawnContext,
    gateway: &str,
    scope: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (OWNER.to_owned(), OWNER_VALUE.to_owned()),
        (SERVER.to_owned(), server.to_owned()),
        (POLICY.to_owned(), ctx.policy_hash.clone()),
        (
            SESSION.to_owned(),
            ctx.session.as_deref().unwrap_or_default().to_owned(),
        ),
        (
            PURPOSE.to_owned(),
            ctx.purpose
                .map(|p| p.as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
        (GATEWAY.to_owned(), gateway.to_owned()),
        (SCOPE.to_owned(), scope.to_owned()),
    ])
}

/// Labels for a server's sandbox network.
pub fn for_network(server: &str, gateway: &str, scope: &str) -> HashMap<String, String> {
    HashMap::from([
        (OWNER.to_owned(), OWNER_VALUE.to_owned()),
        (SERVER.to_owned(), server.to_owned()),
        (PURPOSE.to_owned(), "network".to_owned()),
        (GATEWAY.to_owned(), gateway.to_owned()),
        (SCOPE.to_owned(), scope.to_owned()),
    ])
}

/// Whether a label set says "created by Portcullis in `scope`". Checked again on every object the
/// engine's filter returned, so that a filter bug can never widen what reconciliation removes.
pub fn is_ours(labels: &HashMap<String, String>, scope: &str) -> bool {
    labels.get(OWNER).map(String::as_str) == Some(OWNER_VALUE)
        && labels.get(SCOPE).map(String::as_str) == Some(scope)
}
