//! Webhook delivery and event pruning: the worker run by `ControlPlane::run_background`.
//!
//! Delivery is at least once and in order per webhook: the worker reads the head (oldest
//! pending payload) of every enabled webhook's queue from the store, POSTs the due ones (each
//! webhook at most one in flight, different webhooks in parallel), removes a payload once the
//! receiver answered 2xx, and otherwise records the failure and retries it with exponential
//! backoff ([`RetryPolicy`]) before anything newer of that webhook is sent; after the last
//! attempt it is kept as `failed` and the queue moves on. The queue lives in the store, so a
//! restart loses nothing (an attempt cut short by the restart is simply made again). Each
//! attempt has its own timeout, follows no redirects and reaches only the destinations
//! [`super::destination::WebhookDestinations`] allows (checked after DNS resolution, on the
//! addresses connected to).
//!
//! Headers of a delivery, as E2B sends them: `content-type: application/json`,
//! `e2b-webhook-id`, `e2b-delivery-id` (new for every attempt), `e2b-signature-version: v1`,
//! `e2b-signature` (see [`super::webhook::signature`]).
//!
//! The same loop deletes events (and failed deliveries) older than [`super::RETENTION`], once
//! at start and then every [`PRUNE_EVERY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::destination::WebhookDestinations;
use super::store::{EventStore, PendingDelivery};
use super::{new_uuid, webhook, Events, RETENTION};

/// How often old events are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest sleep of the worker when nothing is due (a safety net; emits wake it).
const MAX_IDLE: Duration = Duration::from_secs(60);
/// Pause after a store failure before the worker tries again.
const RETRY_AFTER_STORE_FAILURE: Duration = Duration::from_secs(1);
/// Longest error message kept for a failed attempt.
const MAX_ERROR_LEN: usize = 500;

/// How webhook deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per payload, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub first_retry: Duration,
    /// Each further retry waits this many times longer.
    pub factor: u32,
    /// Longest delay between two attempts.
    pub max_retry: Duration,
    /// Timeout of one attempt (connect, send, response).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 5 s, 15 s, 45 s and 135 s apart, 10 s each at most.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            first_retry: Duration::from_secs(5),
            factor: 3,
            max_retry: Duration::from_secs(600),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `failed` failed attempts (`failed >= 1`), or
    /// `None` when the payload is given up.
    pub fn retry_after(&self, failed: u32) -> Option<Duration> {
        if failed >= self.max_attempts.max(1) {
            return None;
        }
        let exponent = failed.saturating_sub(1).min(30);
        let factor = self.factor.max(1).saturating_pow(exponent);
        Some(self.first_retry.saturating_mul(factor).min(self.max_retry))
    }
}

/// Runs the worker until `shutdown` turns true. Without an event store there is nothing to do.
pub(crate) async fn run(
    events: &Arc<Events>,
    destinations: Arc<WebhookDestinations>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(store) = events.store().cloned() else {
        let _ = shutdown.wait_for(|s| *s).await;
        return;
    };
    let client = match destinations.client() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "cannot build the webhook HTTP client; webhooks are not delivered");
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
    };
    let mut in_flight: JoinSet<()> = JoinSet::new();
    // Webhooks with an attempt in flight, by the task making it.
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut last_prune: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            match store.prune_events(Utc::now() - RETENTION).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "deleted lifecycle events older than 7 days"),
                Err(e) => {
                    tracing::error!(error = %crate::error::chain(&e), "pruning old lifecycle events failed")
                }
            }
        }
        let sleep = match store.delivery_heads().await {
            Ok(heads) => {
                let now = Utc::now();
                let mut next = MAX_IDLE;
                for head in heads {
                    if busy.values().any(|hook| *hook == head.webhook_id) {
                        continue;
                    }
                    if head.next_at <= now {
                        let hook = head.webhook_id.clone();
                        let (store, client, policy, destinations) = (
                            Arc::clone(&store),
                            client.clone(),
                            events.retry_policy(),
                            Arc::clone(&destinations),
                        );
                        let task = in_flight.spawn(async move {
                            let target = Target {
                                client: &client,
                                destinations: &destinations,
                            };
                            deliver(store.as_ref(), target, policy, head).await;
                        });
                        busy.insert(task.id(), hook);
                    } else {
                        next = next.min((head.next_at - now).to_std().unwrap_or_default());
                    }
                }
                next
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "reading pending webhook deliveries failed");
                RETRY_AFTER_STORE_FAILURE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = events.wake.notified() => {}
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        // Its outcome was not recorded: the payload is sent again.
                        tracing::error!(error = %e, "a webhook delivery task failed");
                        e.id()
                    }
                };
                busy.remove(&id);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The delivery client and the destination rule it enforces.
#[derive(Clone, Copy)]
struct Target<'a> {
    client: &'a reqwest::Client,
    destinations: &'a WebhookDestinations,
}

/// Makes one attempt at `d` and records the outcome in the store.
async fn deliver(
    store: &dyn EventStore,
    target: Target<'_>,
    policy: RetryPolicy,
    d: PendingDelivery,
) {
    let started = std::time::Instant::now();
    let outcome = attempt(target, policy, &d).await;
    let kind = match &outcome {
        Ok(()) => "delivered",
        Err(_) if policy.retry_after(d.attempts.saturating_add(1)).is_some() => "failed_will_retry",
        Err(_) => "failed_gave_up",
    };
    paddock_telemetry::WEBHOOK_ATTEMPT.observe(&[kind], started.elapsed());
    let result = match outcome {
        Ok(()) => {
            tracing::debug!(webhook_id = %d.webhook_id, delivery = d.seq, "webhook delivered");
            store.delivery_succeeded(d.seq).await
        }
        Err(error) => {
            let attempts = d.attempts.saturating_add(1);
            let retry = policy.retry_after(attempts);
            let error: String = error.chars().take(MAX_ERROR_LEN).collect();
            match retry {
                Some(after) => {
                    tracing::info!(webhook_id = %d.webhook_id, url = %d.url, attempts, retry_in_ms = after.as_millis() as u64, error = %error, "webhook delivery failed; will retry")
                }
                None => {
                    tracing::warn!(webhook_id = %d.webhook_id, url = %d.url, attempts, error = %error, "webhook delivery failed for good; giving up on this event")
                }
            }
            let retry_at = retry.map(|after| {
                Utc::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)
            });
            store
                .delivery_failed(d.seq, attempts, retry_at, &error)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(webhook_id = %d.webhook_id, error = %crate::error::chain(&e), "recording a webhook delivery outcome failed");
    }
}

/// One signed POST of the payload; `Err` with a reason unless the receiver answered 2xx.
/// The URL is checked again (it may have been stored before the rule, or by an older
/// version): IP literals never reach the checking resolver.
async fn attempt(
    target: Target<'_>,
    policy: RetryPolicy,
    d: &PendingDelivery,
) -> Result<(), String> {
    let url = reqwest::Url::parse(&d.url).map_err(|e| format!("invalid url: {e}"))?;
    target
        .destinations
        .check_url(&url)
        .map_err(|e| e.to_string())?;
    let response = target
        .client
        .post(url)
        .timeout(policy.attempt_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("e2b-webhook-id", &d.webhook_id)
        .header("e2b-delivery-id", new_uuid())
        .header("e2b-signature-version", webhook::SIGNATURE_VERSION)
        .header("e2b-signature", webhook::signature(&d.secret, &d.body))
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_stop() {
        let p = RetryPolicy::default();
        assert_eq!(p.retry_after(1), Some(Duration::from_secs(5)));
        assert_eq!(p.retry_after(2), Some(Duration::from_secs(15)));
        assert_eq!(p.retry_after(3), Some(Duration::from_secs(45)));
        assert_eq!(p.retry_after(4), Some(Duration::from_secs(135)));
        assert_eq!(p.retry_after(5), None);
        let capped = RetryPolicy {
            max_attempts: 100,
            max_retry: Duration::from_secs(60),
            ..p
        };
        assert_eq!(capped.retry_after(50), Some(Duration::from_secs(60)));
        let once = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert_eq!(
            once.retry_after(1),
            None,
            "at least one attempt, never more"
        );
    }
}
