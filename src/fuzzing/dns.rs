//! The egress resolver's decision for one query, with the upstream answer taken from the input
//! instead of the network, and without the pin (which always succeeds here).

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::egress::dns::{self, Allow, Judgement};
use crate::policy::egress::parse_egress;
use crate::policy::{EgressRule, EgressSettings};

/// What the sandbox in this harness may resolve.
const RULES: &[&str] = &[
    "api.example.test:443",
    "api.example.test:8443",
    "*.cdn.example.test",
    "exact.example.test",
    "10.1.2.0/24:5432",
];

fn allow() -> &'static Allow {
    static ALLOW: OnceLock<Allow> = OnceLock::new();
    ALLOW.get_or_init(|| {
        let rules: Vec<EgressRule> = RULES.iter().filter_map(|r| parse_egress(r).ok()).collect();
        Allow::from_rules(&rules)
    })
}

/// Input: a 2-byte big-endian length, the query (what a sandbox sends), then the upstream
/// resolver's answer (what the network sends back), as DNS over TCP frames them.
pub fn dns_query(data: &[u8]) {
    let (query, upstream) = match data {
        [hi, lo, rest @ ..] => {
            let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    let settings = EgressSettings::default();
    let allow = allow();
    // As `dns::handle`: bytes that are not a DNS query are dropped.
    let Ok(q) = Message::from_vec(query) else {
        return;
    };
    if q.message_type() != MessageType::Query {
        return;
    }
    let answer = match dns::judge(allow, &q) {
        Judgement::Answer(m) => m,
        Judgement::Resolve { query, ports } => {
            assert!(!ports.is_empty());
            match Message::from_vec(upstream) {
                // No usable answer from upstream: SERVFAIL.
                Err(_) => return,
                Ok(up) => match dns::resolve(allow, &settings, &up, query.name()) {
                    Ok(r) => {
                        assert!(r.addrs.len() <= settings.max_addresses_per_name);
                        assert!(
                            r.pin_for >= settings.pin_ttl_min && r.pin_for <= settings.pin_ttl_max
                        );
                        assert!(
                            u64::from(r.client_ttl) < r.pin_for.as_secs(),
                            "the client may cache past the pin"
                        );
                        dns::answer(&q, query, &r)
                    }
                    Err(_) => return,
                },
            }
        }
    };
    check_answer(allow, &q, &answer);
}

/// What reaches the sandbox: its own question answered, with no other name and no address the
/// policy forbids.
fn check_answer(allow: &Allow, q: &Message, answer: &Message) {
    let Ok(bytes) = answer.to_vec() else {
        // `handle` drops an answer it cannot encode; nothing reaches the client.
        return;
    };
    let back = match Message::from_vec(&bytes) {
        Ok(m) => m,
        Err(e) => panic!("the answer does not parse: {e}"),
    };
    assert_eq!(back.id(), q.id());
    assert_eq!(back.message_type(), MessageType::Response);
    if back.answers().is_empty() {
        return;
    }
    assert_eq!(back.response_code(), ResponseCode::NoError);
    let question = &q.queries()[0];
    assert!(!allow.ports(&question.name().to_ascii()).is_empty());
    assert_eq!(question.query_type(), RecordType::A);
    for r in back.answers() {
        assert_eq!(r.name(), question.name(), "an answer names another host");
        match r.data() {
            RData::A(a) => assert!(
                allow.address_ok(a.0),
                "a forbidden address {a} was handed out"
            ),
            other => panic!("a non-A record reached the sandbox: {other:?}"),
        }
    }
}
