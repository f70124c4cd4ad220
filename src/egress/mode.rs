//! Which egress mode a gateway runs in, and why.
//!
//! Contract: [`resolve`] turns `[egress] mode` into `host` or `sidecar`. A written mode is
//! taken as it is. `auto` (the default) is `host` when the gateway is in the host's network
//! namespace (the only place a table can judge the traffic of Docker's bridges) and `sidecar`
//! otherwise. The reason is shown by `policy show`, `doctor` and the start-up log, so an
//! operator never has to guess where the rules live.
//!
//! "In the host's network namespace" is judged from what this process can see, since a
//! container cannot ask the kernel whether its namespace is the initial one: outside any
//! container it is; inside one, only when Docker's default bridge (`docker0`) is visible, which
//! is what `network_mode: host` looks like.

use std::path::Path;

use crate::policy::EgressMode;

/// The mode in force and the sentence that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub mode: EgressMode,
    pub reason: String,
}

/// What the decision depends on, gathered separately so it is testable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// This process runs in a container (Docker's `/.dockerenv`, or a container id in its
    /// cgroup/mounts).
    pub in_container: bool,
    /// The interface `docker0` is in this network namespace.
    pub sees_docker0: bool,
}

impl Facts {
    /// Reads the facts of the running process.
    pub fn probe() -> Facts {
        Facts {
            in_container: Path::new("/.dockerenv").exists()
                || crate::sandbox::docker::own_container::own_id().is_some(),
            sees_docker0: Path::new("/sys/class/net/docker0").exists(),
        }
    }
}

/// Decides the mode for `written` with `facts`.
pub fn decide(written: EgressMode, facts: Facts) -> Resolved {
    match written {
        EgressMode::Host => Resolved {
            mode: EgressMode::Host,
            reason: "[egress] mode = \"host\" in the policy".into(),
        },
        EgressMode::Sidecar => Resolved {
            mode: EgressMode::Sidecar,
            reason: "[egress] mode = \"sidecar\" in the policy".into(),
        },
        EgressMode::Auto if !facts.in_container => Resolved {
            mode: EgressMode::Host,
            reason: "auto: the gateway does not run in a container, so it is in the host's network namespace".into(),
        },
        EgressMode::Auto if facts.sees_docker0 => Resolved {
            mode: EgressMode::Host,
            reason: "auto: the gateway runs in a container that shares the host's network namespace (docker0 is visible)".into(),
        },
        EgressMode::Auto => Resolved {
            mode: EgressMode::Sidecar,
            reason: "auto: the gateway runs in a container with its own network namespace, where a table cannot see the servers' traffic; each server gets an egress agent container".into(),
        },
    }
}

/// [`decide`] for this process.
pub fn resolve(written: EgressMode) -> Resolved {
    decide(written, Facts::probe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_mode_wins_and_auto_follows_the_namespace() {
        let inside = Facts {
            in_container: true,
            sees_docker0: false,
        };
        let host_net = Facts {
            in_container: true,
            sees_docker0: true,
        };
        let bare = Facts {
            in_container: false,
            sees_docker0: false,
        };
        assert_eq!(decide(EgressMode::Host, inside).mode, EgressMode::Host);
        assert_eq!(decide(EgressMode::Sidecar, bare).mode, EgressMode::Sidecar);
        assert_eq!(decide(EgressMode::Auto, bare).mode, EgressMode::Host);
        assert_eq!(decide(EgressMode::Auto, host_net).mode, EgressMode::Host);
        let r = decide(EgressMode::Auto, inside);
        assert_eq!(r.mode, EgressMode::Sidecar);
        assert!(r.reason.starts_with("auto:"), "{}", r.reason);
    }
}
