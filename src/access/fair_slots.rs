//! A server's call slots (`servers.NAME.max_in_flight`) shared fairly between clients.
//!
//! A call takes a free slot at once when nobody is waiting. Otherwise it waits in its own
//! client's queue; each freed slot goes to the next client in round-robin order (a client with
//! `weight` W is served W calls per turn), so one client's backlog delays only itself. Each
//! client's queue has its own bound and every call its own timeout (`queue_timeout`), so a
//! client that keeps its queue full gets the queue error while others keep being served.
//!
//! A freed slot is handed to the chosen waiter directly (never released and re-taken), so no
//! newcomer can overtake the queue. A waiter that gives up (timeout, or its request was dropped)
//! leaves the queue, and if a slot reached it in the meantime, passes it on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// Why a call got no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The client's own queue is full.
    QueueFull { queued: usize },
    /// No slot came within the timeout.
    Timeout,
}

pub struct FairSlots {
    pub max: u32,
    pub timeout: Duration,
    /// Waiting calls allowed per client before its next one is refused at once.
    pub per_client_queue: usize,
    server: Arc<str>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_use: u32,
    queues: HashMap<Arc<str>, Queue>,
    /// Clients with waiting calls, in serving order; the front one is served next.
    turn: VecDeque<Arc<str>>,
    next_ticket: u64,
}

struct Queue {
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    weight: u32,
    /// Calls served in the client's current turn.
    served: u32,
}

/// A held slot; dropping it hands the slot to the next waiter, or frees it.
pub struct SlotPermit {
    slots: Arc<FairSlots>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl FairSlots {
    pub fn new(server: &str, max: u32, timeout: Duration, per_client_queue: usize) -> FairSlots {
        FairSlots {
            max,
            timeout,
            per_client_queue,
            server: Arc::from(server),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits for a slot for one call of `client` (served `weight` calls per turn).
    pub async fn acquire(self: &Arc<Self>, client: &str, weight: u32) -> Result<SlotPermit, Wait> {
        let (ticket, rx) = {
            let mut st = self.lock();
            if st.in_use < self.max && st.turn.is_empty() {
                st.in_use += 1;
                return Ok(SlotPermit {
                    slots: self.clone(),
                });
            }
            let key: Arc<str> = Arc::from(client);
            let bound = self.per_client_queue;
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            let q = st.queues.entry(key.clone()).or_insert_with(|| Queue {
                waiters: VecDeque::new(),
                weight: weight.max(1),
                served: 0,
            });
            let queued = q.waiters.len();
            if queued >= bound {
                return Err(Wait::QueueFull { queued });
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.push_back((ticket, tx));
            let newly_waiting = q.waiters.len() == 1;
            self.gauge(client, q.waiters.len());
            if newly_waiting {
                st.turn.push_back(key);
            }
            (ticket, rx)
        };
        let mut waiting = Waiting {
            slots: self,
            client,
            ticket,
            rx,
            done: false,
        };
        let granted = tokio::time::timeout(self.timeout, &mut waiting.rx).await;
        waiting.done = true;
        match granted {
            Ok(Ok(())) => Ok(SlotPermit {
                slots: self.clone(),
            }),
            _ => match waiting.leave() {
                // The slot arrived as the wait ended: keep it rather than pass it around.
                true => Ok(SlotPermit {
                    slots: self.clone(),
                }),
                false => Err(Wait::Timeout),
            },
        }
    }

    /// Hands a freed slot to the next waiter in turn, or frees it.
    fn release(&self) {
        let mut st = self.lock();
        loop {
            let Some(client) = st.turn.front().cloned() else {
                st.in_use = st.in_use.saturating_sub(1);
                return;
            };
            let Some(q) = st.queues.get_mut(&client) else {
                st.turn.pop_front();
                continue;
            };
            let next = q.waiters.pop_front();
            q.served += 1;
            let left = q.waiters.len();
            self.gauge(&client, left);
            if left == 0 {
                st.queues.remove(&client);
                st.turn.pop_front();
            } else if q.served >= q.weight {
                q.served = 0;
                st.turn.rotate_left(1);
            }
            if let Some((_, tx)) = next {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
    }

    /// Takes `ticket` of `client` out of its queue; false when it was no longer there.
    fn withdraw(&self, client: &str, ticket: u64) -> bool {
        let mut st = self.lock();
        let Some(q) = st.queues.get_mut(client) else {
            return false;
        };
        let Some(i) = q.waiters.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        q.waiters.remove(i);
        let left = q.waiters.len();
        self.gauge(client, left);
        if left == 0 {
            st.queues.remove(client);
            st.turn.retain(|c| &**c != client);
        }
        true
    }

    fn gauge(&self, client: &str, queued: usize) {
        crate::metrics::global().calls_queued(&self.server, client, queued);
    }

    /// Calls waiting, by client (for tests and diagnostics).
    #[cfg(test)]
    fn waiting(&self) -> HashMap<String, usize> {
        self.lock()
            .queues
            .iter()
            .map(|(k, q)| (k.to_string(), q.waiters.len()))
            .collect()
    }
}

/// A call in a queue. Dropped before its wait ended (the request was abandoned), it leaves the
/// queue and passes on a slot that reached it.
struct Waiting<'a> {
    slots: &'a Arc<FairSlots>,
    client: &'a str,
    ticket: u64,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Waiting<'_> {
    /// Leaves the queue; true when a slot was handed over first (the caller now holds it).
    fn leave(&mut self) -> bool {
        if self.slots.withdraw(self.client, self.ticket) {
            return false;
        }
        // Gone from the queue: `release` took it out and sent the slot while holding the lock.
        self.rx.try_recv().is_ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done && self.leave() {
            self.slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: u32, timeout_ms: u64, bound: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots::new(
            "s",
            max,
            Duration::from_millis(timeout_ms),
            bound,
        ))
    }

    /// Queues `n` calls of `client`, each recording its turn in `order` once served.
    fn queue(
        s: &Arc<FairSlots>,
        client: &'static str,
        weight: u32,
        n: usize,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (s, order) = (s.clone(), order.clone());
                tokio::spawn(async move {
                    let p = s.acquire(client, weight).await.unwrap();
                    order.lock().unwrap().push(client);
                    tokio::task::yield_now().await;
                    drop(p);
                })
            })
            .collect()
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn queued_calls_are_served_round_robin_by_client_and_weight() {
        let s = slots(1, 10_000, 100);
        let held = s.acquire("x", 1).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = queue(&s, "a", 1, 6, &order);
        settle().await;
        tasks.extend(queue(&s, "b", 2, 4, &order));
        settle().await;
        tasks.extend(queue(&s, "c", 1, 1, &order));
        settle().await;
        assert_eq!(s.waiting().get("a"), Some(&6));
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        // a queued first; b (weight 2) gets two per turn; c's one call waits one round, not
        // behind a's whole backlog.
        assert_eq!(
            order,
            ["a", "b", "b", "c", "a", "b", "b", "a", "a", "a", "a"]
        );
        assert!(s.waiting().is_empty());
    }

    #[tokio::test]
    async fn each_client_has_its_own_queue_bound_and_timeout() {
        let s = slots(1, 50, 2);
        let held = s.acquire("x", 1).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting_a: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.acquire("a", 1).await.map(drop) })
            })
            .collect();
        settle().await;
        assert_eq!(
            s.acquire("a", 1).await.err(),
            Some(Wait::QueueFull { queued: 2 })
        );
        // b's queue is its own: it waits, and times out on its own clock.
        let b = s.acquire("b", 1).await.err();
        assert_eq!(b, Some(Wait::Timeout));
        for w in waiting_a {
            assert_eq!(w.await.unwrap().err(), Some(Wait::Timeout));
        }
        assert!(s.waiting().is_empty(), "timed-out calls left their queues");
        drop(held);
        // Every slot came back.
        drop(queue(&s, "a", 1, 1, &order));
        let p = s.acquire("b", 1).await;
        assert!(p.is_ok());
    }

    #[tokio::test]
    async fn an_abandoned_wait_passes_its_slot_on() {
        let s = slots(1, 10_000, 10);
        let held = s.acquire("x", 1).await.unwrap();
        let s2 = s.clone();
        let abandoned = tokio::spawn(async move {
            let _p = s2.acquire("a", 1).await;
            std::future::pending::<()>().await;
        });
        settle().await;
        let s3 = s.clone();
        let next = tokio::spawn(async move { s3.acquire("b", 1).await.map(drop) });
        settle().await;
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), next)
                .await
                .is_ok_and(|r| r.unwrap().is_ok()),
            "b never got the slot"
        );
        assert!(s.acquire("c", 1).await.is_ok(), "the slot was lost");
    }
}
