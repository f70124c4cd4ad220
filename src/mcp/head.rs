//! What the first bytes of a JSON-RPC message say about it: its id, and whether it is a
//! response. For a message too large to read whole, this is all the gateway keeps.
//!
//! The members are read in order with serde_json's own parser; reading stops at the end of the
//! bytes given (a cut-off message is the normal case here) or as soon as the answer is known.
//! Nothing past the last complete member is guessed at: an id that comes after a member cut
//! off by the end of the bytes is not found.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::Id;

/// What the start of a message showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub id: Option<Id>,
    /// A `method` member was seen: a request or a notification, not a response.
    pub has_method: bool,
    /// A `result` or `error` member was seen: a response.
    pub is_response: bool,
}

/// Reads the members at the start of `prefix`, which may end anywhere.
pub fn read(prefix: &[u8]) -> Head {
    let mut head = Head::default();
    let mut de = serde_json::Deserializer::from_slice(prefix);
    // The error is expected (the bytes end mid-message, or reading stopped early on purpose);
    // what was learnt before it is in `head`.
    let _ = de::Deserializer::deserialize_map(&mut de, Members(&mut head));
    head
}

struct Members<'a>(&'a mut Head);

impl<'de> Visitor<'de> for Members<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let head = self.0;
        // An id counts once the next key was read whole: bytes that end inside a number
        // (`"id":12` of `"id":123`) would otherwise give a wrong id.
        let mut pending: Option<Option<Id>> = None;
        loop {
            let key = map.next_key::<std::borrow::Cow<'de, str>>()?;
            if let Some(id) = pending.take() {
                head.id = id;
            }
            let Some(key) = key else { break };
            match &*key {
                "id" => pending = Some(map.next_value_seed(IdSeed)?),
                "method" => {
                    head.has_method = true;
                    map.next_value::<IgnoredAny>()?;
                }
                // The rest of a response is its (large) payload: nothing more can be learnt
                // without reading it, so an id after it is not found.
                "result" | "error" => {
                    head.is_response = true;
                    break;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(de::Error::custom("stopped reading"))
    }
}

/// An id that is a string or an integer; anything else reads as no id.
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Option<Id>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<Id>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(serde_json::from_value(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_of_a_cut_off_response() {
        let h =
            read(br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"aaaa"#);
        assert_eq!(h.id, Some(Id::Num(42)));
        assert!(h.is_response && !h.has_method);
        let h = read(br#" { "id" : "pc-7", "jsonrpc":"2.0", "error": {"code": 1"#);
        assert_eq!(h.id, Some(Id::Str("pc-7".into())));
        assert!(h.is_response);
    }

    #[test]
    fn a_notification_or_request_shows_its_method() {
        let h = read(br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"xx"#);
        assert!(h.has_method && !h.is_response);
        assert_eq!(h.id, None);
        let h = read(br#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{"#);
        assert!(h.has_method);
        assert_eq!(h.id, Some(Id::Num(3)));
    }

    #[test]
    fn an_id_after_the_payload_or_cut_in_half_is_not_guessed() {
        let h = read(br#"{"jsonrpc":"2.0","result":{"text":"aaaa"},"id":5}"#);
        assert_eq!(h.id, None, "id after the payload");
        assert!(h.is_response);
        assert_eq!(
            read(br#"{"jsonrpc":"2.0","id":12"#).id,
            None,
            "a number may go on"
        );
        assert_eq!(read(br#"{"jsonrpc":"2.0","id":"ab"#).id, None);
        assert_eq!(read(br#"{"id":1.5,"result":{}}"#).id, None);
        assert_eq!(read(b"not json").id, None);
        assert_eq!(read(b"").id, None);
    }
}
