//! Per-server resources shared by a server's instances, with reference counts: the first
//! instance of a server creates the resource (a firewalled network), the last one to go
//! removes it.
//!
//! Each server has its own async lock, held while its resource is created or removed, so a
//! start that races the removal of the previous resource waits for it and then creates a fresh
//! one; servers never wait for each other.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::BoxFuture;

struct Slot<T> {
    refs: usize,
    value: Option<T>,
}

pub struct Leases<T> {
    /// One slot per server name ever used (bounded by the policy); never removed, so every
    /// waiter of a server always locks the same slot.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot<T>>>>>,
}

impl<T> Default for Leases<T> {
    fn default() -> Self {
        Leases {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send> Leases<T> {
    fn slot(&self, server: &str) -> Arc<tokio::sync::Mutex<Slot<T>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(server.to_owned())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Slot {
                    refs: 0,
                    value: None,
                }))
            })
            .clone()
    }

    /// Takes a reference to `server`'s resource, creating it first when there is none.
    pub async fn acquire<E, F, Fut>(&self, server: &str, create: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let slot = self.slot(server);
        let mut s = slot.lock().await;
        if let Some(v) = s.value.clone() {
            s.refs += 1;
            return Ok(v);
        }
        let v = create().await?;
        s.value = Some(v.clone());
        s.refs = 1;
        Ok(v)
    }

    /// Drops one reference; the last one hands the resource to `destroy`.
    pub async fn release<F, Fut>(&self, server: &str, destroy: F)
    where
        F: FnOnce(T) -> Fut,
        Fut: Future<Output = ()>,
    {
        let slot = self.slot(server);
        let mut s = slot.lock().await;
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            if let Some(v) = s.value.take() {
                destroy(v).await;
            }
        }
    }

    /// Runs `use_it` on `server`'s resource if there is one (`None` otherwise), holding the
    /// server's lock: the resource is neither created nor removed meanwhile.
    pub async fn with_current<R, F, Fut>(&self, server: &str, use_it: F) -> Option<R>
    where
        F: FnOnce(T) -> Fut,
        Fut: Future<Output = R>,
    {
        let slot = self.slot(server);
        let s = slot.lock().await;
        let v = s.value.clone()?;
        Some(use_it(v).await)
    }

    /// Takes every resource regardless of references (shutdown, after every instance is gone).
    pub async fn drain(&self) -> Vec<(String, T)> {
        let slots: Vec<(String, Arc<tokio::sync::Mutex<Slot<T>>>)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = Vec::new();
        for (name, slot) in slots {
            let mut s = slot.lock().await;
            s.refs = 0;
            if let Some(v) = s.value.take() {
                out.push((name, v));
            }
        }
        out
    }
}

/// One instance's reference to its server's resource. Released explicitly once the instance is
/// gone; if it is dropped instead (an error path, a cancelled start), the release runs in the
/// background.
pub struct Lease {
    release: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>>,
}

impl Lease {
    pub fn new(release: impl FnOnce() -> BoxFuture<'static, ()> + Send + Sync + 'static) -> Lease {
        Lease {
            release: Some(Box::new(release)),
        }
    }

    pub async fn release(mut self) {
        if let Some(r) = self.release.take() {
            r().await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(r());
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("held", &self.release.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn the_first_creates_and_the_last_removes() {
        let leases: Leases<u32> = Leases::default();
        let created = AtomicUsize::new(0);
        let removed = AtomicUsize::new(0);
        for _ in 0..3 {
            let v = leases
                .acquire("git", || async {
                    created.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(7)
                })
                .await
                .unwrap();
            assert_eq!(v, 7);
        }
        assert_eq!(created.load(Ordering::SeqCst), 1);
        for _ in 0..2 {
            leases
                .release("git", |_| async {
                    removed.fetch_add(1, Ordering::SeqCst);
                })
                .await;
        }
        assert_eq!(removed.load(Ordering::SeqCst), 0, "still one reference");
        leases
            .release("git", |_| async {
                removed.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert_eq!(removed.load(Ordering::SeqCst), 1);
        // A failed creation leaves nothing behind, and the next start tries again.
        let r: Result<u32, &str> = leases.acquire("git", || async { Err("no") }).await;
        assert!(r.is_err());
        let v = leases
            .acquire("git", || async {
                created.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(8)
            })
            .await
            .unwrap();
        assert_eq!(v, 8);
        assert_eq!(leases.drain().await, vec![("git".to_owned(), 8)]);
        assert!(leases.drain().await.is_empty());
    }
}
