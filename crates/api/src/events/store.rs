//! The persistence contract of events, webhooks and webhook deliveries ([`EventStore`]), which a
//! persistent [`crate::Store`] backend offers through `Store::event_store`. SQL lives in the
//! backend (`store::sqlite_events`), never here.
//!
//! Deliveries are a queue per webhook: one row per (webhook, event), queued in the same
//! transaction that records the event (so an event that is stored is never missing its
//! deliveries, even across a crash), sent in order, removed once delivered, kept as `failed`
//! after the last attempt until pruned.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{EventType, SandboxEvent};
use crate::store::{StoreError, TeamId};

/// Which events to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Whose events.
    pub team_id: TeamId,
    /// Only this sandbox's.
    pub sandbox_id: Option<String>,
    /// Only these types (empty: all).
    pub types: Vec<EventType>,
    /// Oldest first (else newest first).
    pub ascending: bool,
    /// Only events after this `seq` (streams resuming; use with `ascending`).
    pub after_seq: Option<i64>,
    /// Events to skip.
    pub offset: u64,
    /// Most events to return.
    pub limit: u32,
}

/// A registered webhook. `secret` never leaves the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Webhook id (a UUID).
    pub id: String,
    /// Owning team.
    pub team_id: TeamId,
    /// Name given by the client.
    pub name: String,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// Whether events are delivered.
    pub enabled: bool,
    /// The event types delivered (never empty).
    pub events: Vec<EventType>,
    /// The signature secret (`e2b-signature`).
    pub secret: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("team_id", &self.team_id)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("enabled", &self.enabled)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The oldest undelivered payload of one enabled webhook, with what is needed to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// Delivery row id.
    pub seq: i64,
    /// The webhook.
    pub webhook_id: String,
    /// Its current URL.
    pub url: String,
    /// Its current secret.
    pub secret: String,
    /// The payload, byte for byte as it is signed and sent.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_at: DateTime<Utc>,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("seq", &self.seq)
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("attempts", &self.attempts)
            .field("next_at", &self.next_at)
            .finish_non_exhaustive()
    }
}

/// Storage of events, webhooks and deliveries. Every method is one short transaction.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores `event` (its `seq` is ignored) and queues `webhook_body` for every enabled
    /// webhook of the event's team subscribed to its type, in one transaction. Returns the
    /// event's `seq` and how many deliveries were queued.
    async fn record_event(
        &self,
        event: &SandboxEvent,
        webhook_body: &str,
    ) -> Result<(i64, usize), StoreError>;
    /// The execution id of the sandbox's latest `created` or `resumed` event, with its time.
    async fn current_execution(
        &self,
        sandbox_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError>;
    /// A page of events.
    async fn events(&self, query: &EventQuery) -> Result<Vec<SandboxEvent>, StoreError>;
    /// The `seq` of one of the team's events, by event id.
    async fn event_seq(&self, team: &TeamId, event_id: &str) -> Result<Option<i64>, StoreError>;
    /// The highest `seq` stored (0 when there is none).
    async fn max_event_seq(&self) -> Result<i64, StoreError>;
    /// Whether the team may read this sandbox's events: it owns the sandbox's record or has
    /// events of it.
    async fn sandbox_visible(&self, team: &TeamId, sandbox_id: &str) -> Result<bool, StoreError>;
    /// Deletes events, and failed deliveries, older than `before`; returns how many events.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Registers a webhook.
    async fn insert_webhook(&self, hook: &Webhook) -> Result<(), StoreError>;
    /// The team's webhooks, oldest first.
    async fn webhooks(&self, team: &TeamId) -> Result<Vec<Webhook>, StoreError>;
    /// One of the team's webhooks.
    async fn webhook(&self, team: &TeamId, id: &str) -> Result<Option<Webhook>, StoreError>;
    /// Replaces a webhook's settings (matched by id and team); a disabled webhook's pending
    /// deliveries are dropped. Returns whether it exists.
    async fn update_webhook(&self, hook: &Webhook) -> Result<bool, StoreError>;
    /// Deletes one of the team's webhooks with its deliveries; returns whether it existed.
    async fn delete_webhook(&self, team: &TeamId, id: &str) -> Result<bool, StoreError>;

    /// The head (oldest pending delivery) of every enabled webhook's queue, due or not.
    async fn delivery_heads(&self) -> Result<Vec<PendingDelivery>, StoreError>;
    /// Removes a delivered payload.
    async fn delivery_succeeded(&self, seq: i64) -> Result<(), StoreError>;
    /// Records a failed attempt: retried at `retry_at`, or given up (`failed`) when `None`.
    async fn delivery_failed(
        &self,
        seq: i64,
        attempts: u32,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
    ) -> Result<(), StoreError>;
}
