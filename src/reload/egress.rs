//! The egress part of applying a reload: a server whose allow list alone changed keeps its
//! instances, and its new rules go to what enforces them now (the running egress agent in
//! sidecar mode, the gateway's table in host mode).
//!
//! Each outcome is audited (`firewall` records naming the server): applied to running
//! enforcement, or nothing running (the next instance starts under the new rules). When the
//! rules cannot be applied, the server's instances are stopped rather than left running under
//! rules the policy no longer has (fail closed); their supervisors restart them through the
//! normal start, which programs the rules in force or refuses to start.

use crate::audit::{AuditEvent, Kind, Outcome};
use crate::policy::Policy;
use crate::router::audit_trail::AuditTrail;
use crate::sandbox::backends::Backends;

/// Records `policy`'s rules as the ones in force, then applies the in-place changes `names`.
pub(super) async fn apply<'a>(
    backends: &Backends,
    trail: &AuditTrail,
    policy: &Policy,
    names: impl Iterator<Item = &'a str>,
) {
    backends.firewall().set_policy(policy);
    for name in names {
        let Some(server) = policy.servers.get(name) else {
            continue;
        };
        let rules = server
            .egress
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match backends.apply_egress(server).await {
            Ok(running) => {
                let what = if running {
                    "applied to the running egress enforcement; instances kept"
                } else {
                    "nothing of the server runs; its next instance starts under them"
                };
                tracing::info!(server = %name, %rules, "egress rules changed by the reload: {what}");
                trail.record_later(
                    AuditEvent::new(Kind::Firewall)
                        .server(name)
                        .outcome(Outcome::Ok)
                        .detail(format!(
                            "egress rules changed by a reload to [{rules}]: {what}"
                        )),
                );
            }
            Err(e) => {
                let stopped = backends.stop_server(name).await;
                tracing::error!(server = %name, error = %e, stopped, "the reload's egress rules could not be applied: the server's instances were stopped");
                trail.record_later(
                    AuditEvent::new(Kind::Firewall)
                        .server(name)
                        .outcome(Outcome::Rejected)
                        .detail(format!("egress rules changed by a reload to [{rules}] could not be applied ({e}); {stopped} instance(s) stopped")),
                );
            }
        }
    }
}
