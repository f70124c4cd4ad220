//! Tokens the gateway hands a client to carry between requests (an MRTR `requestState`, a task
//! handle): signed by the gateway, bound to the client and the request they belong to, and
//! short-lived, so that a client can neither forge one, alter one, use another client's, nor
//! replay one on a different request.
//!
//! Format: `v1.<payload>.<mac>`, both parts base64url without padding; the payload is JSON
//! (see [`Claims`]) and the MAC is HMAC-SHA256 over `v1.<payload>` with a key made at start-up
//! for this process. The version prefix leaves room for a fleet format (a shared key and the
//! name of the replica that holds the state) without ambiguity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";
/// Longest token accepted: anything longer was not made here (a task handle with
/// [`MAX_TASK_ARGS`] of arguments is well below it).
const MAX_LEN: usize = 16384;

type HmacSha256 = Hmac<Sha256>;

/// What a token stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "k")]
pub enum Held {
    /// A call the gateway holds open while the client answers the server's requests.
    #[serde(rename = "x")]
    Exchange { id: u64, round: u64 },
    /// A server's own `requestState`, to give back to that server on the retry (absent when
    /// the server sent none).
    #[serde(rename = "u")]
    UpstreamState {
        server: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        state: Option<String>,
    },
    /// A server's task id.
    #[serde(rename = "t")]
    Task {
        server: String,
        /// The tool whose call created the task (the server's own name for it).
        tool: String,
        task: String,
        /// The task is one of the 2025-11-25 experimental tasks (polled with that revision's
        /// `tasks/get` and `tasks/result`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        legacy: bool,
        /// The arguments of the call that made the task, so that a request about the task is
        /// decided as that call would be now (`when` conditions see them); absent when the
        /// call had none or they were too large to carry ([`MAX_TASK_ARGS`]).
        #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
        args: Option<serde_json::Value>,
        /// The call had arguments, larger than [`MAX_TASK_ARGS`]: they are not in the handle.
        #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
        args_dropped: bool,
    },
}

/// Largest arguments (compact JSON, bytes) a task handle carries: a handle travels in every
/// `tasks/*` request, so it stays small; calls with larger arguments get a handle without
/// them, and conditions on them then refuse (fail closed).
pub const MAX_TASK_ARGS: usize = 4096;

/// Everything a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    #[serde(flatten)]
    pub held: Held,
    /// The client (policy name) it was issued to.
    pub c: String,
    /// The method and a digest of the item it was issued for (empty for task handles, which
    /// travel on their own methods).
    pub m: String,
    pub n: String,
    /// Expiry, seconds since the Unix epoch.
    pub e: u64,
    /// The replica that issued it (with a fleet key and `--replica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    /// Where that replica takes forwarded requests (`--replica-url`, or its own listener). It
    /// is under the MAC, so a client cannot point another replica's hop anywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
}

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it was not issued by this gateway (or was altered)")]
    Forged,
    #[error("it has expired")]
    Expired,
    #[error("it was issued to another client")]
    OtherClient,
    #[error("it was issued for another request ({0})")]
    OtherRequest(String),
    #[error("it names state held by replica `{0}`, not this one: send it through the load balancer's route to that replica, or start the request again")]
    OtherReplica(String),
}

/// Makes and checks tokens with one key.
pub struct Seal {
    key: [u8; 32],
    /// This replica's name, written into every token and checked against state only it holds.
    replica: Option<String>,
    /// This replica's address for forwarded requests, written into every token.
    url: Option<String>,
    /// Made from a fleet secret (the key then also authenticates hops between replicas).
    fleet: bool,
}

impl Seal {
    /// A seal with a fresh random key: tokens it makes are good only in this process.
    pub fn new() -> Seal {
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            // Without OS randomness no token can be trusted; refuse rather than use a weak key.
            std::process::abort();
        }
        Seal {
            key,
            replica: None,
            url: None,
            fleet: false,
        }
    }

    /// A seal every replica of a fleet shares: the key is derived from the fleet secret, and
    /// tokens name `replica`. A call held open (an exchange) or a task lives in one replica's
    /// process, so a token for one opens only there; a server's own `requestState` is
    /// self-contained and opens on any replica.
    pub fn fleet(secret: &[u8], replica: Option<&str>) -> Seal {
        let mut h = Sha256::new();
        h.update(b"portcullis fleet seal v1\0");
        h.update(secret);
        Seal {
            key: h.finalize().into(),
            replica: replica.map(str::to_owned),
            url: None,
            fleet: true,
        }
    }

    /// Names `url` as where this replica takes forwarded requests, in every token it makes.
    pub fn with_url(mut self, url: Option<String>) -> Seal {
        self.url = url;
        self
    }

    /// This replica's name in the fleet.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    /// The key that authenticates hops between replicas: derived from the seal key with its own
    /// label, so a hop signature can never pass for a token or the reverse. Only a fleet has one.
    pub fn hop_key(&self) -> Option<[u8; 32]> {
        if !self.fleet {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"portcullis fleet hop v1\0");
        h.update(self.key);
        Some(h.finalize().into())
    }

    /// The seal of a gateway under `gateway`'s policy: the fleet key when one is set and
    /// readable, otherwise one made for this process (tokens then stay on this replica; `serve`
    /// refuses to start when the fleet key cannot be read, so this is the in-process case).
    pub fn for_gateway(gateway: &crate::policy::Gateway) -> Seal {
        let Some(r) = &gateway.fleet_key else {
            return Seal::new();
        };
        match crate::secrets::resolve("fleet_key", r) {
            Ok(secret) => Seal::fleet(secret.as_bytes(), crate::fleet::replica::name()),
            Err(e) => {
                tracing::error!(error = %e, "fleet_key cannot be read: sealing with a key of this process only");
                Seal::new()
            }
        }
    }

    /// A token for `held`, issued to `client` for `method` on `item`, good for `ttl`.
    pub fn make(
        &self,
        held: Held,
        client: &str,
        method: &str,
        item: &str,
        ttl: Duration,
    ) -> String {
        let claims = Claims {
            held,
            c: client.to_owned(),
            m: method.to_owned(),
            n: digest(item),
            e: now().saturating_add(ttl.as_secs().max(1)),
            r: self.replica.clone(),
            u: self.url.clone(),
        };
        let payload = b64().encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{VERSION}.{payload}");
        let mac = b64().encode(self.mac(signed.as_bytes()));
        format!("{signed}.{mac}")
    }

    /// The claims of `token` when this gateway made it, it is unexpired, and it was issued to
    /// `client` for `method` on `item` (`None` skips the request check, for task handles).
    pub fn open(
        &self,
        token: &str,
        client: &str,
        request: Option<(&str, &str)>,
    ) -> Result<Claims, Refused> {
        let claims = self.verify(token)?;
        if claims.c != client {
            return Err(Refused::OtherClient);
        }
        if claims.is_held_in_process() && claims.r != self.replica {
            return Err(Refused::OtherReplica(
                claims.r.clone().unwrap_or_else(|| "(unnamed)".into()),
            ));
        }
        if let Some((method, item)) = request {
            if claims.m != method || claims.n != digest(item) {
                return Err(Refused::OtherRequest(format!(
                    "it belongs to a `{}` request",
                    claims.m
                )));
            }
        }
        Ok(claims)
    }

    /// The owner of `token` when it is genuine, unexpired, issued to `client`, and names state
    /// held in another replica's process that says where it takes forwarded requests: the
    /// claims the request must be forwarded with. Anything else is `None`, and the request is
    /// answered here (a forged or foreign token is then refused by [`Seal::open`]).
    pub fn owner_elsewhere(&self, token: &str, client: &str) -> Option<Claims> {
        let claims = self.verify(token).ok()?;
        let elsewhere = self.fleet
            && claims.c == client
            && claims.is_held_in_process()
            && claims.r.is_some()
            && claims.r != self.replica
            && claims.u.is_some();
        elsewhere.then_some(claims)
    }

    /// The claims of a token this key made and that has not expired.
    fn verify(&self, token: &str) -> Result<Claims, Refused> {
        if token.len() > MAX_LEN {
            return Err(Refused::Forged);
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(Refused::Forged)?;
        let mac = b64().decode(mac).map_err(|_| Refused::Forged)?;
        let mut check = HmacSha256::new_from_slice(&self.key).map_err(|_| Refused::Forged)?;
        check.update(signed.as_bytes());
        check.verify_slice(&mac).map_err(|_| Refused::Forged)?;
        let payload = signed
            .strip_prefix(VERSION)
            .and_then(|p| p.strip_prefix('.'))
            .ok_or(Refused::Forged)?;
        let claims: Claims = b64()
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Refused::Forged)?;
        if claims.e < now() {
            return Err(Refused::Expired);
        }
        Ok(claims)
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; this cannot happen.
            Err(_) => Vec::new(),
        }
    }
}

impl Claims {
    /// A call held open (an exchange) or a task lives in one replica's process; a server's own
    /// `requestState` is self-contained and opens on any replica.
    fn is_held_in_process(&self) -> bool {
        !matches!(self.held, Held::UpstreamState { .. })
    }
}

impl Default for Seal {
    fn default() -> Self {
        Seal::new()
    }
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A short digest of the item a token is bound to (the token need not reveal it).
fn digest(item: &str) -> String {
    hex::encode(&Sha256::digest(item.as_bytes())[..12])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_key_opens_self_contained_state_anywhere_and_held_state_only_at_its_owner() {
        let a = Seal::fleet(b"fleet secret", Some("gw-1"));
        let b = Seal::fleet(b"fleet secret", Some("gw-2"));
        let state = Held::UpstreamState {
            server: "s".into(),
            state: Some("opaque".into()),
        };
        let t = a.make(
            state.clone(),
            "c",
            "tools/call",
            "s__t",
            Duration::from_secs(60),
        );
        let claims = b.open(&t, "c", Some(("tools/call", "s__t"))).unwrap();
        assert_eq!(claims.held, state);
        assert_eq!(
            claims.r.as_deref(),
            Some("gw-1"),
            "the token names its issuer"
        );
        let held = a.make(
            Held::Exchange { id: 7, round: 1 },
            "c",
            "tools/call",
            "s__t",
            Duration::from_secs(60),
        );
        assert_eq!(
            b.open(&held, "c", Some(("tools/call", "s__t"))),
            Err(Refused::OtherReplica("gw-1".into()))
        );
        assert!(a.open(&held, "c", Some(("tools/call", "s__t"))).is_ok());
        let other_fleet = Seal::fleet(b"another secret", Some("gw-1"));
        assert_eq!(
            other_fleet.open(&t, "c", Some(("tools/call", "s__t"))),
            Err(Refused::Forged)
        );
        assert_eq!(
            Seal::new().open(&t, "c", Some(("tools/call", "s__t"))),
            Err(Refused::Forged),
            "a per-process key does not open fleet tokens"
        );
    }

    #[test]
    fn only_a_genuine_token_of_the_client_held_elsewhere_names_an_owner_to_forward_to() {
        let a = Seal::fleet(b"k", Some("gw-1")).with_url(Some("http://10.0.0.1:8811".into()));
        let b = Seal::fleet(b"k", Some("gw-2"));
        let ex = Held::Exchange { id: 1, round: 1 };
        let held = a.make(ex.clone(), "c", "tools/call", "t", HOUR);
        let owner = b.owner_elsewhere(&held, "c").unwrap();
        assert_eq!(owner.r.as_deref(), Some("gw-1"));
        assert_eq!(owner.u.as_deref(), Some("http://10.0.0.1:8811"));
        assert!(
            b.owner_elsewhere(&held, "mallory").is_none(),
            "another client's"
        );
        assert!(a.owner_elsewhere(&held, "c").is_none(), "held here");
        let (signed, _) = held.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", b64().encode([0u8; 32]));
        assert!(b.owner_elsewhere(&forged, "c").is_none(), "forged");
        let other_fleet = Seal::fleet(b"other", Some("gw-2"));
        assert!(other_fleet.owner_elsewhere(&held, "c").is_none());
        let state = Held::UpstreamState {
            server: "s".into(),
            state: None,
        };
        let portable = a.make(state, "c", "tools/call", "t", HOUR);
        assert!(
            b.owner_elsewhere(&portable, "c").is_none(),
            "opens anywhere"
        );
        let nowhere = Seal::fleet(b"k", Some("gw-1")).make(ex, "c", "tools/call", "t", HOUR);
        assert!(
            b.owner_elsewhere(&nowhere, "c").is_none(),
            "no URL to go to"
        );
        assert!(Seal::new().hop_key().is_none() && a.hop_key().is_some());
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_opens_only_for_its_client_and_request() {
        let seal = Seal::new();
        let t = seal.make(
            Held::Exchange { id: 7, round: 1 },
            "alice",
            "tools/call",
            "a__x",
            HOUR,
        );
        assert!(t.starts_with("v1."));
        let c = seal
            .open(&t, "alice", Some(("tools/call", "a__x")))
            .unwrap();
        assert_eq!(c.held, Held::Exchange { id: 7, round: 1 });
        assert_eq!(
            seal.open(&t, "bob", Some(("tools/call", "a__x"))),
            Err(Refused::OtherClient)
        );
        assert!(matches!(
            seal.open(&t, "alice", Some(("tools/call", "a__y"))),
            Err(Refused::OtherRequest(_))
        ));
        assert!(matches!(
            seal.open(&t, "alice", Some(("prompts/get", "a__x"))),
            Err(Refused::OtherRequest(_))
        ));
    }

    #[test]
    fn altered_foreign_and_expired_tokens_are_refused() {
        let seal = Seal::new();
        let t = seal.make(
            Held::Exchange { id: 1, round: 1 },
            "alice",
            "tools/call",
            "x",
            HOUR,
        );
        // Another process (another key) made it.
        assert_eq!(Seal::new().open(&t, "alice", None), Err(Refused::Forged));
        // A forged payload that claims another exchange, with the old signature.
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged_claims = Claims {
            held: Held::Exchange { id: 2, round: 1 },
            c: "alice".into(),
            m: "tools/call".into(),
            n: digest("x"),
            e: now() + 3600,
            r: None,
            u: None,
        };
        let forged = format!(
            "v1.{}.{mac}",
            b64().encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        assert_eq!(seal.open(&forged, "alice", None), Err(Refused::Forged));
        for junk in ["", "v1", "v1..", "v2.e30.AAAA", &"a".repeat(MAX_LEN + 1)] {
            assert_eq!(
                seal.open(junk, "alice", None),
                Err(Refused::Forged),
                "{junk}"
            );
        }
        // Expired: made with an expiry in the past.
        let mut claims = forged_claims;
        claims.e = now() - 1;
        let payload = b64().encode(serde_json::to_vec(&claims).unwrap());
        let signed = format!("v1.{payload}");
        let old = format!("{signed}.{}", b64().encode(seal.mac(signed.as_bytes())));
        assert_eq!(seal.open(&old, "alice", None), Err(Refused::Expired));
    }
}
