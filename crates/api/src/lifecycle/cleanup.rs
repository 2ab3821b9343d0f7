//! Node cleanup that failed, and old records. A sandbox whose `Node::kill` failed stays in
//! `error` (its node resources possibly still held) and is queued in [`Retries`]; the expiry task
//! calls [`Core::retry_cleanups`], which kills it again with exponential backoff and settles it
//! `stopped` once the node succeeds. Records found in `error` or `stopping` that nobody queued
//! (e.g. an operation that died half-way) are adopted after a grace period, so a transient state
//! of an operation in progress is left to that operation.
//!
//! [`Core::prune_stopped`] deletes `stopped` records older than [`STOPPED_RETENTION`].

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use paddock_domain::{SandboxId, SandboxState};

use super::{Core, Error};

/// Delay before the first retry of a failed kill; doubled after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest delay between two retries.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a record may sit in `error` or `stopping` unqueued before it is adopted.
const ADOPT_AFTER: Duration = Duration::from_secs(30);
/// How long `stopped` records are kept.
pub(crate) const STOPPED_RETENTION: chrono::Duration = chrono::Duration::days(7);
/// How often the expiry task prunes `stopped` records.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Reason recorded when a retried cleanup settles a sandbox that had none.
const RETRIED_REASON: &str = "node cleanup retried";

/// Sandboxes waiting for another node cleanup attempt.
#[derive(Default)]
pub(crate) struct Retries(Mutex<HashMap<SandboxId, Pending>>);

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Failed attempts so far (0 for adopted records).
    failures: u32,
    /// When to try next.
    due: Instant,
}

impl Retries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The delay after `failures` failed attempts: 0.5 s, 1 s, 2 s, ... up to a minute.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

impl Core {
    /// Asks the node to release an `error` sandbox and settles it `stopped`; if the node fails,
    /// the record stays `error` and the kill is retried later.
    pub(crate) async fn clean_up_or_retry(
        &self,
        id: &SandboxId,
        reason: &str,
    ) -> Result<(), Error> {
        match self.node.kill(id).await {
            Ok(()) => self.settle_stopped(id, SandboxState::Error, reason).await,
            Err(err) => {
                tracing::warn!(sandbox_id = %id, error = %err, "node cleanup failed; will retry");
                self.schedule_cleanup_retry(id);
                Ok(())
            }
        }
    }

    /// Queues another node cleanup of `id` after the first backoff delay.
    pub(crate) fn schedule_cleanup_retry(&self, id: &SandboxId) {
        let mut retries = self.cleanups.lock();
        let failures = retries.get(id).map_or(0, |p| p.failures) + 1;
        retries.insert(
            id.clone(),
            Pending {
                failures,
                due: Instant::now() + backoff(failures),
            },
        );
        drop(retries);
        self.expiry_wake.notify_one();
    }

    /// Retries every due cleanup; returns how long until the next one is due, if any.
    pub(crate) async fn retry_cleanups(&self) -> Result<Option<Duration>, Error> {
        let stuck = self
            .store
            .sandboxes_in_states(&[SandboxState::Error, SandboxState::Stopping])
            .await?;
        let now = Instant::now();
        let due: Vec<SandboxId> = {
            let mut retries = self.cleanups.lock();
            let stuck_ids: HashSet<&SandboxId> = stuck.iter().map(|r| &r.id).collect();
            // Settled meanwhile (or pruned): nothing left to do.
            retries.retain(|id, _| stuck_ids.contains(id));
            for rec in &stuck {
                retries.entry(rec.id.clone()).or_insert(Pending {
                    failures: 0,
                    due: now + ADOPT_AFTER,
                });
            }
            retries
                .iter()
                .filter(|(_, p)| p.due <= now)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in due {
            let Some(rec) = stuck.iter().find(|r| r.id == id) else {
                continue;
            };
            match self.node.kill(&id).await {
                Ok(()) => {
                    self.cleanups.lock().remove(&id);
                    let reason = rec.end_reason.as_deref().unwrap_or(RETRIED_REASON);
                    self.settle_stopped(&id, rec.state, reason).await?;
                    tracing::info!(sandbox_id = %id, "retried node cleanup succeeded");
                }
                Err(err) => {
                    tracing::warn!(sandbox_id = %id, error = %err, "node cleanup failed again");
                    let mut retries = self.cleanups.lock();
                    let failures = retries.get(&id).map_or(0, |p| p.failures) + 1;
                    retries.insert(
                        id,
                        Pending {
                            failures,
                            due: Instant::now() + backoff(failures),
                        },
                    );
                }
            }
        }
        let now = Instant::now();
        Ok(self
            .cleanups
            .lock()
            .values()
            .map(|p| p.due.saturating_duration_since(now))
            .min())
    }

    /// Deletes `stopped` records that stopped more than [`STOPPED_RETENTION`] ago.
    pub(crate) async fn prune_stopped(&self) -> Result<u64, Error> {
        let pruned = self
            .store
            .prune_stopped(Utc::now() - STOPPED_RETENTION)
            .await?;
        if pruned > 0 {
            tracing::info!(pruned, "deleted old stopped sandbox records");
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(10), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
