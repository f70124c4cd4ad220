//! The line protocol between the gateway and an egress agent, over the agent container's
//! attached stdio: one JSON object per line, at most [`MAX_LINE`] bytes.
//!
//! Gateway -> agent (stdin): `{"op":"config",...}` carries the server's rules as a small policy
//! document, so the agent validates them with the same parser as the gateway. The first one
//! makes the agent program its table; a later one (policy reload) re-programs it in place.
//! End of input means the gateway is gone: the agent exits, and the owned, persistent table
//! stays in force for the server until the server is removed.
//!
//! Agent -> gateway (stdout): `ready` once the table is programmed and read back identical
//! and the resolver listens (the gateway starts the server only after it), `applied` after a
//! reload, `pin`, `denied`, `tamper`, `restore_failed`, and `error` naming the step that
//! failed (after which the agent exits: fail closed). Logs go to stderr, never stdout.
//!
//! Unknown fields are refused in both directions: a gateway and an agent from different builds
//! fail loudly instead of half-understanding each other.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::egress::EgressEvent;
use crate::policy::{EgressSettings, Rate, Server};

/// The longest line either side accepts (a config with many rules fits easily).
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("egress agent line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("egress agent line is not a message of this protocol: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// What the gateway tells the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToAgent {
    Config {
        /// The server whose table this is.
        server: String,
        /// The gateway instance (names the table, `inet portcullis_<instance>`).
        instance: String,
        /// A policy document with `[egress]` and this one server (see [`config_policy`]).
        policy: String,
    },
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromAgent {
    /// The table is programmed and verified by read-back; the resolver listens.
    Ready {
        table: String,
        /// `owner` (OWNER | PERSIST) or `watch`.
        protection: String,
        resolver: String,
    },
    /// A later config was applied.
    Applied,
    /// Addresses pinned after an allowed answer (`ADDR:PORT`, or `ADDR` for any port).
    Pin { addrs: Vec<String> },
    /// Packets dropped since the last report, and where the logged ones were going.
    Denied {
        packets: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        destinations: Vec<crate::egress::nflog::DeniedDest>,
    },
    /// DNS questions refused over the server's budget since the last report (the budget is
    /// the one in the config, which the gateway knows).
    DnsOverBudget { queries: u64 },
    /// The table was altered or removed and has been restored.
    Tamper { reason: String },
    /// The table was lost and could not be restored: the server must be stopped.
    RestoreFailed { error: String },
    /// A step failed; the agent exits after sending this.
    Error { step: String, message: String },
}

impl FromAgent {
    /// The audit event this report stands for, or the report itself when it is none (replies
    /// and pins, which each reader handles its own way). `server` is whose agent sent it (the
    /// server named in the event); `who` names the agent in reasons ("server `fetch`", "the
    /// workspace"); `dns_rate` is the budget the gateway gave it. One mapping for the sidecar
    /// agents' stdio and the workspace agent's socket, so both audit the same records.
    pub fn into_event(self, server: &str, who: &str, dns_rate: Rate) -> Result<EgressEvent, Self> {
        Ok(match self {
            FromAgent::Denied {
                packets,
                destinations,
            } => EgressEvent::Denied {
                server: server.to_owned(),
                packets,
                destinations,
            },
            FromAgent::DnsOverBudget { queries } => EgressEvent::DnsOverBudget {
                server: server.to_owned(),
                queries,
                rate: dns_rate,
            },
            FromAgent::Tamper { reason } => EgressEvent::Restored {
                reason: format!("egress agent of {who}: {reason}"),
            },
            FromAgent::RestoreFailed { error } => EgressEvent::RestoreFailed {
                servers: vec![server.to_owned()],
                error: format!("egress agent of {who}: {error}"),
            },
            other => return Err(other),
        })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    Ok(serde_json::from_str(line.trim_end())?)
}

/// One line (with its newline) for any message.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serializing these plain enums cannot fail; an empty object would be refused by the
    // other side rather than misread.
    let mut s = serde_json::to_string(msg).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

pub fn decode_from_agent(line: &str) -> Result<FromAgent, ProtocolError> {
    decode(line)
}

pub fn decode_to_agent(line: &str) -> Result<ToAgent, ProtocolError> {
    decode(line)
}

/// A TOML string (JSON string syntax is valid TOML for the characters policy values hold).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The policy document an agent gets for `server`: the `[egress]` settings that shape the
/// resolver and the server's rules. The runtime entry is a placeholder; the agent never
/// starts the server.
pub fn config_policy(server: &Server, settings: &EgressSettings) -> String {
    let mut o = String::new();
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|s| quoted(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(o, "[egress]");
    let _ = writeln!(
        o,
        "upstream_resolvers = [{}]",
        list(
            settings
                .upstream_resolvers
                .iter()
                .map(ToString::to_string)
                .collect()
        )
    );
    let _ = writeln!(
        o,
        "pin_ttl_min = \"{}ms\"",
        settings.pin_ttl_min.as_millis()
    );
    let _ = writeln!(
        o,
        "pin_ttl_max = \"{}ms\"",
        settings.pin_ttl_max.as_millis()
    );
    let _ = writeln!(
        o,
        "max_addresses_per_name = {}",
        settings.max_addresses_per_name
    );
    let _ = writeln!(o, "dns_rate = {}", rate_toml(settings.dns_rate));
    let _ = writeln!(o, "mode = \"sidecar\"");
    let _ = writeln!(o, "\n[servers.{}]", server.name);
    let _ = writeln!(o, "runtime = \"process\"\ncommand = \"true\"");
    let _ = writeln!(
        o,
        "egress.allow = [{}]",
        list(
            server
                .egress
                .allow
                .iter()
                .map(ToString::to_string)
                .collect()
        )
    );
    if let Some(r) = server.egress.dns_rate {
        let _ = writeln!(o, "egress.dns_rate = {}", rate_toml(r));
    }
    o
}

/// A DNS budget as the policy writes it.
fn rate_toml(r: Rate) -> String {
    format!(
        "{{ quota = \"{}\", burst = {} }}",
        crate::policy::units::format_rate(r.count, r.per),
        r.burst
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_one_per_line() {
        let msgs = [
            FromAgent::Ready {
                table: "portcullis_x".into(),
                protection: "owner".into(),
                resolver: "127.0.0.1:53".into(),
            },
            FromAgent::Applied,
            FromAgent::Pin {
                addrs: vec!["198.18.0.10:443".into()],
            },
            FromAgent::Denied {
                packets: 3,
                destinations: vec![],
            },
            FromAgent::Denied {
                packets: 3,
                destinations: vec![crate::egress::nflog::DeniedDest {
                    dest: "198.18.0.9".into(),
                    proto: "tcp".into(),
                    port: Some(443),
                    packets: 2,
                }],
            },
            FromAgent::DnsOverBudget { queries: 9 },
            FromAgent::Tamper {
                reason: "table inet portcullis_x was removed".into(),
            },
            FromAgent::RestoreFailed {
                error: "EPERM".into(),
            },
            FromAgent::Error {
                step: "programming the table".into(),
                message: "no\nnewline".into(),
            },
        ];
        for m in msgs {
            let line = encode(&m);
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert!(line.ends_with('\n'));
            assert_eq!(decode_from_agent(&line).unwrap(), m);
        }
        assert_eq!(encode(&FromAgent::Applied), "{\"ev\":\"applied\"}\n");
    }

    #[test]
    fn reports_become_the_events_the_gateway_audits_and_replies_stay_replies() {
        let rate = crate::policy::Rate {
            count: 5,
            per: std::time::Duration::from_secs(1),
            burst: 5,
        };
        let ev = |m: FromAgent| m.into_event("fetch", "server `fetch`", rate);
        assert_eq!(
            ev(FromAgent::Denied {
                packets: 2,
                destinations: vec![]
            }),
            Ok(EgressEvent::Denied {
                server: "fetch".into(),
                packets: 2,
                destinations: vec![]
            })
        );
        assert_eq!(
            ev(FromAgent::DnsOverBudget { queries: 7 }),
            Ok(EgressEvent::DnsOverBudget {
                server: "fetch".into(),
                queries: 7,
                rate
            })
        );
        assert_eq!(
            ev(FromAgent::Tamper {
                reason: "chain removed".into()
            }),
            Ok(EgressEvent::Restored {
                reason: "egress agent of server `fetch`: chain removed".into()
            })
        );
        assert_eq!(
            ev(FromAgent::RestoreFailed {
                error: "EPERM".into()
            }),
            Ok(EgressEvent::RestoreFailed {
                servers: vec!["fetch".into()],
                error: "egress agent of server `fetch`: EPERM".into()
            })
        );
        for reply in [
            FromAgent::Applied,
            FromAgent::Pin {
                addrs: vec!["198.18.0.9:443".into()],
            },
            FromAgent::Error {
                step: "s".into(),
                message: "m".into(),
            },
        ] {
            assert_eq!(ev(reply.clone()), Err(reply));
        }
    }

    #[test]
    fn unknown_or_oversized_lines_are_refused() {
        assert!(decode_from_agent("{\"ev\":\"ready\"}").is_err());
        assert!(decode_from_agent("{\"ev\":\"denied\",\"packets\":1,\"extra\":1}").is_err());
        assert!(decode_from_agent("{\"ev\":\"nope\"}").is_err());
        assert!(decode_from_agent("not json").is_err());
        let long = format!(
            "{{\"ev\":\"tamper\",\"reason\":\"{}\"}}",
            "x".repeat(MAX_LINE)
        );
        assert!(matches!(
            decode_from_agent(&long),
            Err(ProtocolError::TooLong)
        ));
        assert!(decode_to_agent("{\"op\":\"config\",\"server\":\"s\"}").is_err());
    }

    #[test]
    fn the_config_policy_parses_back_to_the_same_rules() {
        let policy = crate::policy::parse(
            r#"
[egress]
upstream_resolvers = ["198.18.0.53:53"]
pin_ttl_min = "2s"
pin_ttl_max = "1500s"
max_addresses_per_name = 4
[servers.web]
runtime = "docker"
image = "i"
egress.allow = ["api.example.test:443", "*.wild.example.test:443", "10.1.2.0/24:5432", "any.example.test"]
"#,
            "<test>",
        )
        .unwrap();
        let s = &policy.servers["web"];
        let text = config_policy(s, &policy.egress);
        let back = crate::policy::parse(&text, "<agent>").unwrap();
        assert_eq!(back.servers["web"].egress, s.egress);
        assert_eq!(
            back.egress.upstream_resolvers,
            policy.egress.upstream_resolvers
        );
        assert_eq!(back.egress.pin_ttl_min, policy.egress.pin_ttl_min);
        assert_eq!(back.egress.pin_ttl_max, policy.egress.pin_ttl_max);
        assert_eq!(back.egress.max_addresses_per_name, 4);
        let msg = ToAgent::Config {
            server: "web".into(),
            instance: "default".into(),
            policy: text,
        };
        assert_eq!(decode_to_agent(&encode(&msg)).unwrap(), msg);
    }
}
