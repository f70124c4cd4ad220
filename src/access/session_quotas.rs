//! Per-client session quotas: how many sessions one client may hold open at once
//! (`clients.NAME.max_sessions`) and how fast it may open them (`session_rate`).
//!
//! The downstream layer asks [`super::Limits`] before it creates a session; this table is part of
//! the quotas it rebuilds from each policy, so a reload applies to the next session at once and
//! a rate whose setting did not change keeps its state (no fresh burst). The implicit
//! `anonymous` client (no credentials configured) is one client here: every anonymous caller
//! shares its quota.

use std::collections::HashMap;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, RateLimiter};

use super::limits::{kept, Kept, Limited};
use crate::policy::units::format_rate;
use crate::policy::{ClientQuotas, Policy};

/// The session quota of one client, and whether the policy set it (for the refusal's advice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimit {
    pub max: usize,
    pub set: bool,
}

struct Entry {
    quotas: ClientQuotas,
    rate: Option<Kept<DefaultDirectRateLimiter>>,
}

pub(super) struct SessionTable {
    clients: HashMap<String, Entry>,
    /// For a name the policy does not know (a client removed by a reload): the defaults, and
    /// no creation rate, since such a client can no longer authenticate to open sessions.
    fallback: ClientQuotas,
}

impl SessionTable {
    pub(super) fn build(policy: &Policy, previous: Option<&SessionTable>) -> SessionTable {
        let mut names: Vec<&str> = policy.clients.keys().map(String::as_str).collect();
        if !policy.clients.contains_key("anonymous") {
            names.push("anonymous");
        }
        let old: HashMap<String, Kept<DefaultDirectRateLimiter>> = previous
            .map(|p| {
                p.clients
                    .iter()
                    .filter_map(|(k, e)| e.rate.as_ref().map(|r| (k.clone(), r.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let clients = names
            .into_iter()
            .map(|name| {
                let quotas = policy.client_quotas(name);
                let rate = kept(
                    Some(&old),
                    &name.to_owned(),
                    &quotas.session_rate,
                    RateLimiter::direct,
                );
                (name.to_owned(), Entry { quotas, rate })
            })
            .collect();
        SessionTable {
            clients,
            fallback: policy.client_quotas(""),
        }
    }

    pub(super) fn limit(&self, client: &str) -> SessionLimit {
        let q = self.clients.get(client).map_or(self.fallback, |e| e.quotas);
        SessionLimit {
            max: q.max_sessions,
            set: q.max_sessions_set,
        }
    }

    /// Takes one session from `client`'s creation rate (`now` for the time to wait).
    pub(super) fn check_rate(
        &self,
        client: &str,
        now: <DefaultClock as Clock>::Instant,
    ) -> Result<(), Limited> {
        let Some(Entry {
            quotas,
            rate: Some(k),
        }) = self.clients.get(client)
        else {
            return Ok(());
        };
        k.limiter.check().map_err(|n| {
            let r = quotas.session_rate;
            Limited {
                scope: format!(
                    "client `{client}` opens sessions (or subscriptions/listen streams) too fast: session_rate {} (burst {})",
                    format_rate(r.count, r.per),
                    r.burst
                ),
                retry_after: n.wait_time_from(now),
                store_error: false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::*;
    use std::time::Duration;

    fn policy(src: &str) -> Policy {
        crate::policy::parse(src, "t.toml").unwrap()
    }

    #[test]
    fn limits_and_rates_are_per_client_and_survive_an_unchanged_reload() {
        let src = "[gateway]\nmax_sessions = 40\n[clients.a]\nmax_sessions = 30\nsession_rate = { quota = \"1/hour\", burst = 2 }\n[clients.b]\n";
        let q = Limits::from_policy(&policy(src));
        assert_eq!(q.session_limit("a"), SessionLimit { max: 30, set: true });
        assert_eq!(
            q.session_limit("b"),
            SessionLimit {
                max: 20,
                set: false
            }
        );
        assert_eq!(q.session_limit("anonymous").max, 20);
        assert!(q.check_session_rate("a").is_ok() && q.check_session_rate("a").is_ok());
        let e = q.check_session_rate("a").unwrap_err();
        assert!(
            e.scope.contains("client `a`") && e.scope.contains("1/hour"),
            "{e:?}"
        );
        assert!(e.retry_after > Duration::from_secs(60));
        assert!(q.check_session_rate("b").is_ok(), "b has its own rate");
        q.reload(&policy(
            &src.replace("max_sessions = 30", "max_sessions = 10"),
        ));
        assert_eq!(q.session_limit("a").max, 10);
        assert!(
            q.check_session_rate("a").is_err(),
            "an unchanged rate is not refilled by a reload"
        );
        q.reload(&policy(&src.replace("1/hour", "2/hour")));
        assert!(
            q.check_session_rate("a").is_ok(),
            "a changed rate starts afresh"
        );
    }
}
