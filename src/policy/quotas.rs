//! What one client may hold of what all clients share: sessions open at once, how fast it opens
//! them, and its share of a contended server's call slots. The policy stores what was written;
//! [`Policy::client_quotas`] fills in the defaults, also for the implicit `anonymous` client
//! (every caller when no credentials are configured, sharing one quota).

use std::time::Duration;

use super::model::{Policy, Rate};

/// Sessions a client may hold when the policy does not say: enough for any person's tools,
/// far below the gateway's default `max_sessions`.
pub const DEFAULT_CLIENT_MAX_SESSIONS: usize = 256;

/// Sessions a client may open when the policy does not say: 10 a second, 20 at once. Each
/// session can start per-session server instances (containers), so a burst is bounded too.
pub const DEFAULT_SESSION_RATE: Rate = Rate {
    count: 10,
    per: Duration::from_secs(1),
    burst: 20,
};

/// Highest `weight`: a client served 100 times for each call of a weight-1 client is the most
/// lopsided share that still lets the other through.
pub const MAX_WEIGHT: u32 = 100;

/// One client's quotas with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientQuotas {
    pub max_sessions: usize,
    /// Whether `max_sessions` was written in the policy (for messages naming the key to change).
    pub max_sessions_set: bool,
    pub session_rate: Rate,
    pub weight: u32,
}

/// The default session quota under a gateway-wide limit of `gateway_max`: 256, and never more
/// than half the gateway's sessions, so that one client alone cannot hold every slot even when
/// each of its sessions keeps a stream open (and so cannot be evicted).
pub fn default_max_sessions(gateway_max: usize) -> usize {
    DEFAULT_CLIENT_MAX_SESSIONS.min((gateway_max / 2).max(1))
}

impl Policy {
    /// The quotas of `client`: its `[clients.NAME]` entry with defaults filled in, or the
    /// defaults alone for a client the policy does not name (`anonymous` without an entry).
    /// A session quota is never more than `gateway.max_sessions`.
    pub fn client_quotas(&self, client: &str) -> ClientQuotas {
        let entry = self.clients.get(client);
        let gateway_max = self.gateway.max_sessions;
        let set = entry.and_then(|c| c.max_sessions);
        ClientQuotas {
            max_sessions: set
                .unwrap_or_else(|| default_max_sessions(gateway_max))
                .min(gateway_max),
            max_sessions_set: set.is_some(),
            session_rate: entry
                .and_then(|c| c.session_rate)
                .unwrap_or(DEFAULT_SESSION_RATE),
            weight: entry.and_then(|c| c.weight).unwrap_or(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Policy {
        crate::policy::parse(src, "q.toml").unwrap()
    }

    #[test]
    fn defaults_are_a_share_of_the_gateway_and_keys_override_them() {
        let p = policy("[clients.a]\nmax_sessions = 7\nsession_rate = \"2/s\"\nweight = 3\n");
        let a = p.client_quotas("a");
        assert_eq!((a.max_sessions, a.max_sessions_set, a.weight), (7, true, 3));
        assert_eq!(a.session_rate.count, 2);
        let anon = p.client_quotas("anonymous");
        assert_eq!(anon.max_sessions, 256);
        assert!(!anon.max_sessions_set);
        assert_eq!(anon.session_rate, DEFAULT_SESSION_RATE);
        assert_eq!(anon.weight, 1);
        let small = policy("[gateway]\nmax_sessions = 50\n[clients.b]\n");
        assert_eq!(small.client_quotas("b").max_sessions, 25);
        assert_eq!(default_max_sessions(1), 1);
    }
}
