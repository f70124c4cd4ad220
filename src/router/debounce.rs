//! Pacing what sessions hear about changes: at most one message per session and topic per
//! `list_changed_interval`. A topic is a list's `notifications/*/list_changed`, or
//! `notifications/resources/updated` for one URI.
//!
//! Contract: the first message of a topic after a quiet interval goes out at once, so a single
//! change is heard without delay. Messages offered within the interval are held, a newer one
//! replacing the one held, and the one held goes out when the interval ends. So during a storm a
//! session hears at most one message per topic per interval, and always one more after the last
//! change: a client that lists again then sees the final state. Nothing but superseded duplicates
//! is dropped. Whether a session is told at all (whether its view changed) is the caller's
//! decision, made before it offers a message here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{MessageSink, Router};

/// Topics tracked before those that are quiet are forgotten (a quiet topic behaves exactly as a
/// new one, so forgetting it changes nothing).
const PRUNE_AT: usize = 4096;

/// (session, notification method, URI or empty).
type Topic = (Arc<str>, &'static str, String);

/// When one topic last sent, and whether a send is scheduled: the timing alone, so that it can be
/// checked without a clock.
#[derive(Debug, Default, Clone, Copy)]
struct Pace {
    last: Option<Instant>,
    armed: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Send it now.
    Now,
    /// Hold it and send what is held then.
    At(Instant),
    /// Hold it; a send is already scheduled.
    Held,
}

impl Pace {
    fn offer(&mut self, now: Instant, interval: Duration) -> Step {
        if self.armed {
            return Step::Held;
        }
        match self.last {
            Some(last) if now < last + interval => {
                self.armed = true;
                Step::At(last + interval)
            }
            _ => {
                self.last = Some(now);
                Step::Now
            }
        }
    }

    fn fired(&mut self, now: Instant) {
        self.armed = false;
        self.last = Some(now);
    }

    fn quiet(&self, now: Instant, interval: Duration) -> bool {
        !self.armed && self.last.is_none_or(|l| now >= l + interval)
    }
}

struct Held {
    sink: Arc<dyn MessageSink>,
    message: Bytes,
}

#[derive(Default)]
struct Slot {
    pace: Pace,
    held: Option<Held>,
}

#[derive(Default)]
pub(super) struct Debouncer {
    slots: Mutex<HashMap<Topic, Slot>>,
}

impl Debouncer {
    /// Sends `message` to `sink` now or when the topic's interval ends (see the module's
    /// contract).
    pub fn offer(
        self: &Arc<Self>,
        topic: Topic,
        sink: &Arc<dyn MessageSink>,
        message: Bytes,
        interval: Duration,
    ) {
        let now = Instant::now();
        let method = topic.1;
        let step = {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            if slots.len() >= PRUNE_AT {
                slots.retain(|_, s| !s.pace.quiet(now, interval));
            }
            let slot = slots.entry(topic.clone()).or_default();
            let step = slot.pace.offer(now, interval);
            if step != Step::Now {
                slot.held = Some(Held {
                    sink: sink.clone(),
                    message: message.clone(),
                });
            }
            step
        };
        match step {
            Step::Now => send(sink, method, message),
            Step::At(when) => {
                let me: Weak<Debouncer> = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep_until(when).await;
                    if let Some(me) = me.upgrade() {
                        me.fire(&topic);
                    }
                });
            }
            Step::Held => {}
        }
    }

    fn fire(&self, topic: &Topic) {
        let held = {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            let Some(slot) = slots.get_mut(topic) else {
                return;
            };
            slot.pace.fired(Instant::now());
            slot.held.take()
        };
        if let Some(h) = held {
            send(&h.sink, topic.1, h.message);
        }
    }

    /// Drops what is held for a session that has ended.
    pub fn forget(&self, session: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|(s, _, _), _| &**s != session);
        }
    }
}

fn send(sink: &Arc<dyn MessageSink>, method: &str, message: Bytes) {
    crate::metrics::global().list_changed_sent(method);
    sink.send(message);
}

impl Router {
    /// Tells session `session` of a change through the debouncer: `method` is the
    /// notification's, `uri` the resource it is about (empty for a list change).
    pub(super) fn tell(&self, session: &str, method: &'static str, uri: &str, message: Bytes) {
        let Some(entry) = self.sessions.get(session) else {
            return;
        };
        let interval = self.settings().list_changes.interval;
        let topic = (entry.info.key.clone(), method, uri.to_owned());
        self.debounce
            .offer(topic, &entry.info.sink, message, interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(250);

    #[test]
    fn the_first_goes_at_once_and_the_rest_wait_for_the_interval() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert_eq!(p.offer(t0, I), Step::Now);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            p.offer(t1, I),
            Step::At(t0 + I),
            "held until the interval ends"
        );
        assert_eq!(p.offer(t1, I), Step::Held, "one send scheduled at most");
        p.fired(t0 + I);
        // Right after a scheduled send the next one waits a whole interval again.
        assert_eq!(p.offer(t0 + I, I), Step::At(t0 + I + I));
        p.fired(t0 + I + I);
        // After a quiet interval a change goes out at once.
        assert!(p.quiet(t0 + I * 3, I));
        assert_eq!(p.offer(t0 + I * 3, I), Step::Now);
    }

    #[test]
    fn a_storm_sends_at_most_one_per_interval_and_one_after_the_last() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        let mut sent = Vec::new();
        let mut scheduled: Option<Instant> = None;
        // 10,000 offers over 2 s, a timer firing whenever it is due.
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 200);
            if let Some(at) = scheduled.filter(|at| *at <= now) {
                p.fired(at);
                sent.push(at);
                scheduled = None;
            }
            match p.offer(now, I) {
                Step::Now => sent.push(now),
                Step::At(at) => scheduled = Some(at),
                Step::Held => {}
            }
        }
        let last = scheduled.expect("the last change is still to be told");
        sent.push(last);
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= I), "{sent:?}");
        assert!(sent.len() <= 2_000 / 250 + 2, "{}", sent.len());
        assert!(last >= t0 + Duration::from_micros(9_999 * 200));
    }

    struct Collect(Mutex<Vec<Bytes>>);
    impl MessageSink for Collect {
        fn send(&self, message: Bytes) {
            self.0.lock().unwrap().push(message);
        }
    }

    #[tokio::test]
    async fn the_latest_held_message_is_sent_when_the_interval_ends() {
        let d = Arc::new(Debouncer::default());
        let collect = Arc::new(Collect(Mutex::new(Vec::new())));
        let sink: Arc<dyn MessageSink> = collect.clone();
        let topic = (Arc::from("s"), "m", "u".to_owned());
        let interval = Duration::from_millis(200);
        for text in ["first", "second", "third"] {
            d.offer(topic.clone(), &sink, Bytes::from(text), interval);
        }
        assert_eq!(*collect.0.lock().unwrap(), vec![Bytes::from("first")]);
        for _ in 0..1000 {
            if collect.0.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *collect.0.lock().unwrap(),
            vec![Bytes::from("first"), Bytes::from("third")]
        );
    }

    #[tokio::test]
    async fn a_session_that_ended_gets_nothing_held_for_it() {
        let d = Arc::new(Debouncer::default());
        let collect = Arc::new(Collect(Mutex::new(Vec::new())));
        let sink: Arc<dyn MessageSink> = collect.clone();
        let topic = (Arc::from("s"), "m", String::new());
        let interval = Duration::from_millis(200);
        d.offer(topic.clone(), &sink, Bytes::from("a"), interval);
        d.offer(topic, &sink, Bytes::from("b"), interval);
        d.forget("s");
        tokio::time::sleep(interval * 3).await;
        assert_eq!(*collect.0.lock().unwrap(), vec![Bytes::from("a")]);
    }
}
