//! Per-sandbox transition locks. Every operation that changes one sandbox's state or end time
//! (pause and the timeout's auto-pause, resume and connect, kill and the timeout's kill,
//! set_timeout and refresh, snapshot, fork, network update) runs under its sandbox's lock and
//! reads the record again after taking it, so one transition sees the finished result of the
//! one before: e.g. a connect cannot extend a record still marked running while the timeout's
//! freeze of that sandbox is under way (it waits, finds it paused and resumes it).
//!
//! The compare-and-set on the record ([`super::Core::advance`]) still decides between writers
//! that do not take the lock (the exit watcher, shutdown); the lock is about what a caller
//! reads before it acts. The map holds an entry only while someone holds or waits for its
//! lock: entries nobody references are dropped on every lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paddock_domain::SandboxId;
use tokio::sync::OwnedMutexGuard;

/// Held while one transition of a sandbox runs.
pub(crate) type Held = OwnedMutexGuard<()>;

/// The per-sandbox locks.
#[derive(Default)]
pub(crate) struct SandboxLocks(Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>);

impl SandboxLocks {
    /// Waits for the lock of sandbox `id` (locks are not reentrant: an operation that holds it
    /// calls the `*_locked` forms of the others).
    pub(crate) async fn lock(&self, id: &SandboxId) -> Held {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Drop locks nobody holds or waits for any more, so the map stays small.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(locks.entry(id.clone()).or_default())
        };
        lock.lock_owned().await
    }

    /// How many sandboxes have an entry (held or awaited locks, and released ones not yet
    /// dropped).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_sandbox_and_the_map_does_not_grow() {
        let locks = Arc::new(SandboxLocks::default());
        let (a, b) = (SandboxId::generate(), SandboxId::generate());
        let held = locks.lock(&a).await;
        // Another sandbox is independent.
        drop(locks.lock(&b).await);
        // A second locker of `a` waits until the first lets go.
        let waiter = tokio::spawn({
            let (locks, a) = (Arc::clone(&locks), a.clone());
            async move { locks.lock(&a).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        drop(waiter.await.expect("got the lock"));
        for _ in 0..100 {
            drop(locks.lock(&SandboxId::generate()).await);
        }
        drop(locks.lock(&a).await);
        assert!(locks.entries() <= 1, "released locks are dropped");
    }
}
