//! The internal hop between replicas: a request whose `requestState` or task handle names state
//! held in another replica's process is forwarded to that replica, signed with a key derived
//! from the fleet key.
//!
//! The signature (header [`HEADER`]) covers the sender, the addressed replica, a timestamp, a
//! random nonce, the path, a digest of the body and a digest of the client's `Authorization`
//! header; it is good for [`VALIDITY`] either side of the receiver's clock and once only (the
//! receiver remembers the nonces it took for as long as they could be valid). The hop carries
//! no authority of its own: the owner authenticates the original client from its own
//! credentials and takes the one access decision as for any request, so a hop can only bring a
//! client's request to the replica that holds its state, never let it do more there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The request header that carries a hop's signature.
pub const HEADER: &str = "portcullis-fleet-hop";
/// The path a replica takes forwarded requests on; nothing else is served there.
pub const PATH: &str = "/_fleet/mcp";
/// How far (seconds) a hop's timestamp may be from the receiver's clock.
pub const VALIDITY: u64 = 30;
/// Nonces remembered at most: a flood of valid hops (only a replica can sign one) is refused
/// rather than let the replay cache grow without bound.
const MAX_NONCES: usize = 65_536;

type HmacSha256 = Hmac<Sha256>;

/// Why a hop was refused. Safe to show the caller: it names nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopRefused {
    #[error("no fleet hop signature: this endpoint takes only requests forwarded by a replica of this fleet")]
    Missing,
    #[error("the fleet hop signature is malformed")]
    Malformed,
    #[error("the fleet hop signature does not verify (another fleet key, or an altered request)")]
    BadSignature,
    #[error("the fleet hop is addressed to replica `{0}`, not this one")]
    OtherReplica(String),
    #[error("the fleet hop is outside its {VALIDITY}s validity")]
    Stale,
    #[error("the fleet hop was already used (replay)")]
    Replayed,
    #[error("too many fleet hops in {VALIDITY}s; try again")]
    Busy,
}

/// What a request is signed over, besides the sender and the time.
pub struct Signed<'a> {
    /// The replica the hop is addressed to.
    pub to: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    /// The client's `Authorization` header, as it sent it (empty without one).
    pub authorization: &'a [u8],
}

/// Signs and checks hops for one replica.
pub struct Hop {
    key: [u8; 32],
    me: String,
    /// Nonces taken, with the time (Unix seconds) after which they can no longer be valid.
    seen: Mutex<HashMap<String, u64>>,
}

impl Hop {
    pub fn new(key: [u8; 32], me: &str) -> Hop {
        Hop {
            key,
            me: me.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The header value for forwarding `what` now.
    pub fn sign(&self, what: &Signed<'_>) -> String {
        let mut nonce = [0u8; 16];
        if getrandom::getrandom(&mut nonce).is_err() {
            // Without OS randomness a nonce could repeat and be refused as a replay; refuse
            // to run rather than sign predictable hops.
            std::process::abort();
        }
        let nonce = hex::encode(nonce);
        let ts = now();
        let mac = b64().encode(self.mac(&self.me, ts, &nonce, what));
        format!("v1.{}.{ts}.{nonce}.{mac}", self.me)
    }

    /// The sending replica's name when `header` is a valid, fresh, unused signature of `what`
    /// addressed to this replica.
    pub fn verify(&self, header: Option<&str>, what: &Signed<'_>) -> Result<String, HopRefused> {
        let header = header.ok_or(HopRefused::Missing)?;
        let mut parts = header.split('.');
        let (Some("v1"), Some(from), Some(ts), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(HopRefused::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| HopRefused::Malformed)?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HopRefused::Malformed);
        }
        let mac = b64().decode(mac).map_err(|_| HopRefused::Malformed)?;
        // The signature first: nothing about an unsigned request is worth telling its sender.
        let mut check = HmacSha256::new_from_slice(&self.key).map_err(|_| HopRefused::Malformed)?;
        check.update(&self.message(from, ts, nonce, what));
        check
            .verify_slice(&mac)
            .map_err(|_| HopRefused::BadSignature)?;
        if what.to != self.me {
            return Err(HopRefused::OtherReplica(what.to.to_owned()));
        }
        let now = now();
        if ts.abs_diff(now) > VALIDITY {
            return Err(HopRefused::Stale);
        }
        let mut seen = self.seen.lock().map_err(|_| HopRefused::Busy)?;
        seen.retain(|_, until| *until >= now);
        if seen.contains_key(nonce) {
            return Err(HopRefused::Replayed);
        }
        if seen.len() >= MAX_NONCES {
            return Err(HopRefused::Busy);
        }
        seen.insert(nonce.to_owned(), ts.saturating_add(VALIDITY));
        Ok(from.to_owned())
    }

    fn mac(&self, from: &str, ts: u64, nonce: &str, what: &Signed<'_>) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mut m) => {
                m.update(&self.message(from, ts, nonce, what));
                m.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; this cannot happen.
            Err(_) => Vec::new(),
        }
    }

    /// The signed bytes: every field separated by NUL, which none of them can contain (names
    /// are `[A-Za-z0-9-]`, the rest are digests or digits), so no two requests sign alike.
    fn message(&self, from: &str, ts: u64, nonce: &str, what: &Signed<'_>) -> Vec<u8> {
        let body = Sha256::digest(what.body);
        let auth = Sha256::digest(what.authorization);
        format!(
            "portcullis hop v1\0{from}\0{}\0{ts}\0{nonce}\0{}\0{}\0{}",
            what.to,
            what.path,
            hex::encode(body),
            hex::encode(auth)
        )
        .into_bytes()
    }
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
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

    fn what<'a>(to: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed {
            to,
            path: PATH,
            body,
            authorization: b"Bearer t",
        }
    }

    #[test]
    fn a_hop_verifies_once_at_its_addressee_and_only_unaltered() {
        let a = Hop::new([7; 32], "gw-1");
        let b = Hop::new([7; 32], "gw-2");
        let h = a.sign(&what("gw-2", b"{}"));
        assert_eq!(b.verify(Some(&h), &what("gw-2", b"{}")), Ok("gw-1".into()));
        assert_eq!(
            b.verify(Some(&h), &what("gw-2", b"{}")),
            Err(HopRefused::Replayed)
        );
        let h = a.sign(&what("gw-2", b"{}"));
        assert_eq!(
            b.verify(Some(&h), &what("gw-2", b"{\"x\":1}")),
            Err(HopRefused::BadSignature),
            "another body"
        );
        let mut other_client = what("gw-2", b"{}");
        other_client.authorization = b"Bearer u";
        assert_eq!(
            b.verify(Some(&h), &other_client),
            Err(HopRefused::BadSignature),
            "another client's credentials"
        );
        let c = Hop::new([7; 32], "gw-3");
        assert_eq!(
            c.verify(Some(&h), &what("gw-3", b"{}")),
            Err(HopRefused::BadSignature),
            "addressed to another replica"
        );
        assert_eq!(
            Hop::new([8; 32], "gw-2").verify(Some(&h), &what("gw-2", b"{}")),
            Err(HopRefused::BadSignature),
            "another fleet key"
        );
        assert_eq!(
            b.verify(None, &what("gw-2", b"{}")),
            Err(HopRefused::Missing)
        );
        for junk in [
            "",
            "v1",
            "v1.gw-1.1.2.3",
            "v2.gw-1.1.00.AAAA",
            "v1.a.b.c.d.e",
        ] {
            assert_eq!(
                b.verify(Some(junk), &what("gw-2", b"{}")),
                Err(HopRefused::Malformed),
                "{junk}"
            );
        }
    }

    #[test]
    fn an_old_hop_is_stale() {
        let a = Hop::new([7; 32], "gw-1");
        let nonce = "0".repeat(32);
        let ts = now() - VALIDITY - 5;
        let w = what("gw-1", b"{}");
        let mac = b64().encode(a.mac("gw-1", ts, &nonce, &w));
        let h = format!("v1.gw-1.{ts}.{nonce}.{mac}");
        assert_eq!(a.verify(Some(&h), &w), Err(HopRefused::Stale));
    }
}
