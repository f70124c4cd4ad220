//! Which session makes room when the gateway holds `max_sessions` and a client under its own
//! quota opens another.
//!
//! The victim is the least recently used idle session of the client holding the most sessions,
//! counting only clients that hold more than the requester (or the requester itself, whose own
//! oldest idle session then goes). So a client that hoards sessions loses its idle ones first, a
//! client with fewer sessions than the newcomer is never touched, and a session with work in
//! progress (a request being handled, an open stream) is never closed. When no session
//! qualifies, the new session is refused.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::Session;

/// The id of the session to close so that `requester` can open one, if any may be closed.
pub(super) fn victim<'a>(
    sessions: impl Iterator<Item = &'a Arc<Session>>,
    per_client: &HashMap<Arc<str>, usize>,
    requester: &str,
) -> Option<Arc<str>> {
    let own = per_client.get(requester).copied().unwrap_or(0);
    sessions
        .filter_map(|s| {
            let client = &*s.identity.client;
            let held = per_client.get(client).copied().unwrap_or(0);
            let eligible = client == requester || held > own;
            (eligible && !s.busy()).then(|| (held, s.idle_for(), s.id.clone()))
        })
        .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(_, _, id)| id)
}

#[cfg(test)]
mod tests {
    use super::super::session::tests::open;
    use super::super::session::{Refused, Sessions};
    use std::time::Duration;

    #[test]
    fn the_biggest_holder_loses_its_least_recently_used_idle_session() {
        let s = Sessions::new(6);
        let bob: Vec<_> = (0..4)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                open(&s, "bob", 10).unwrap().session
            })
            .collect();
        let carol: Vec<_> = (0..2)
            .map(|_| open(&s, "carol", 10).unwrap().session)
            .collect();
        // bob's oldest session was used a moment ago: his second is now the least recent.
        bob[0].touch();
        let made = open(&s, "alice", 10).unwrap();
        assert_eq!(made.evicted.map(|e| e.id.clone()), Some(bob[1].id.clone()));
        // carol (2) holds more than alice (1), bob (3) still the most: bob loses again.
        let made = open(&s, "carol", 10).unwrap();
        assert_eq!(made.evicted.map(|e| e.id.clone()), Some(bob[2].id.clone()));
        assert!(carol.iter().all(|c| s.get(&c.id).is_some()));
    }

    #[test]
    fn a_client_holding_the_most_makes_room_from_its_own_sessions_only() {
        let s = Sessions::new(3);
        let alice = open(&s, "alice", 10).unwrap().session;
        let bob: Vec<_> = (0..2)
            .map(|_| open(&s, "bob", 10).unwrap().session)
            .collect();
        let made = open(&s, "bob", 10).unwrap();
        let evicted = made.evicted.unwrap();
        assert!(
            bob.iter().any(|b| b.id == evicted.id),
            "bob made room from his own"
        );
        assert!(s.get(&alice.id).is_some());
        // alice holds fewer than bob: with bob's sessions busy, nothing of hers is taken for
        // him, and the gateway says it is full.
        let busy: Vec<_> = [&made.session]
            .into_iter()
            .chain(bob.iter())
            .filter_map(|b| s.enter(&b.id))
            .collect();
        assert!(matches!(open(&s, "bob", 10), Err(Refused::GatewayFull(3))));
        drop(busy);
    }
}
