//! Sandbox lifecycle events, E2B-compatible: every transition of a sandbox (`created`, `killed`,
//! `updated`, `paused`, `resumed`, `checkpointed`) is recorded once, per team, kept for
//! [`RETENTION`], readable through `GET /events/sandboxes[/{id}]` (JSON or Server-Sent Events)
//! and delivered to the team's webhooks.
//!
//! This module owns:
//! - the event model ([`EventType`], [`SandboxEvent`], [`EventKind`]) and its two wire shapes:
//!   the API/SSE shape ([`SandboxEvent::to_api`], camelCase, `version: "v1"`) and the webhook
//!   payload ([`SandboxEvent::webhook_body`], snake_case, `version: "v2"`, as E2B delivers it);
//! - [`Events`], the hub the lifecycle emits into: it records the event (and queues its webhook
//!   deliveries) in the [`EventStore`] in one transaction, then fans it out live on a tokio
//!   broadcast channel and wakes the delivery worker. Emitting never fails and never blocks on
//!   the network: a recording failure is logged and the event still goes out live;
//! - the [`EventStore`] trait the persistent backends implement (SQLite: `store::sqlite_events`);
//! - [`stream`] (SSE with `Last-Event-ID` resume), [`webhook`] (validation, wire shapes,
//!   signature), [`destination`] (which addresses webhooks may reach) and [`dispatch`]
//!   (at-least-once delivery with retries, and pruning);
//! - the lifecycle's one-line hooks (`Core::emit`, `Core::emit_transition`) in `emit`.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, Notify};

use crate::store::{SandboxRecord, Store, StoreError, TeamId};

pub mod destination;
pub mod dispatch;
mod emit;
pub mod store;
pub mod stream;
pub mod webhook;

pub use destination::WebhookDestinations;
pub use dispatch::RetryPolicy;
pub use emit::EventKind;
pub use store::{EventQuery, EventStore, PendingDelivery, Webhook};

/// How long events are kept (E2B's default retention).
pub const RETENTION: chrono::Duration = chrono::Duration::days(7);

/// How many live events a subscriber may fall behind before it reloads from the store.
const LIVE_CAPACITY: usize = 1024;

/// The E2B lifecycle event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `sandbox.lifecycle.created`: the sandbox runs.
    Created,
    /// `sandbox.lifecycle.killed`: the sandbox is gone (killed, timed out, exited, ...).
    Killed,
    /// `sandbox.lifecycle.updated`: its timeout or network changed.
    Updated,
    /// `sandbox.lifecycle.paused`.
    Paused,
    /// `sandbox.lifecycle.resumed`.
    Resumed,
    /// `sandbox.lifecycle.checkpointed`: a snapshot of it was taken.
    Checkpointed,
}

impl EventType {
    /// Every type, in E2B's order.
    pub const ALL: [EventType; 6] = [
        EventType::Created,
        EventType::Killed,
        EventType::Updated,
        EventType::Paused,
        EventType::Resumed,
        EventType::Checkpointed,
    ];

    /// The wire name (`sandbox.lifecycle.created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "sandbox.lifecycle.created",
            EventType::Killed => "sandbox.lifecycle.killed",
            EventType::Updated => "sandbox.lifecycle.updated",
            EventType::Paused => "sandbox.lifecycle.paused",
            EventType::Resumed => "sandbox.lifecycle.resumed",
            EventType::Checkpointed => "sandbox.lifecycle.checkpointed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// E2B's legacy `event_label` of the webhook payload (`create`, `kill`, ...).
    pub fn label(self) -> &'static str {
        match self {
            EventType::Created => "create",
            EventType::Killed => "kill",
            EventType::Updated => "update",
            EventType::Paused => "pause",
            EventType::Resumed => "resume",
            EventType::Checkpointed => "checkpoint",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxEvent {
    /// Position in the store (ascending in recording order); `None` when recording failed.
    pub seq: Option<i64>,
    /// Event id (a UUID); the SSE `id:`.
    pub id: String,
    /// What happened.
    pub event_type: EventType,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// The sandbox.
    pub sandbox_id: String,
    /// The sandbox's team.
    pub team_id: TeamId,
    /// The template it runs (`sandboxTemplateId`).
    pub template_id: String,
    /// `sandboxBuildId`: Paddock has no template builds; the template name stands in.
    pub build_id: String,
    /// Id of the sandbox's current execution: new at `created` and at every `resumed`.
    pub execution_id: String,
    /// `eventData` (`sandbox_metadata`, `execution`, `kill_reason`, `set_timeout`, ...).
    pub data: Map<String, Value>,
}

/// RFC 3339 in UTC with milliseconds, as the API renders event times.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl SandboxEvent {
    fn data_or_null(&self) -> Value {
        if self.data.is_empty() {
            Value::Null
        } else {
            Value::Object(self.data.clone())
        }
    }

    /// The API and SSE shape: E2B's `SandboxEvent` (camelCase, `version: "v1"`).
    pub fn to_api(&self) -> Value {
        json!({
            "version": "v1",
            "id": self.id,
            "type": self.event_type.as_str(),
            "eventData": self.data_or_null(),
            "sandboxBuildId": self.build_id,
            "sandboxExecutionId": self.execution_id,
            "sandboxId": self.sandbox_id,
            "sandboxTeamId": self.team_id.as_str(),
            "sandboxTemplateId": self.template_id,
            "timestamp": rfc3339(self.timestamp),
        })
    }

    /// The webhook payload, exactly the bytes that are signed and sent: E2B's delivered shape
    /// (snake_case, `version: "v2"`, with the legacy `event_category`/`event_label`).
    pub fn webhook_body(&self) -> String {
        json!({
            "id": self.id,
            "version": "v2",
            "type": self.event_type.as_str(),
            "timestamp": rfc3339(self.timestamp),
            "event_category": "lifecycle",
            "event_label": self.event_type.label(),
            "event_data": self.data_or_null(),
            "sandbox_id": self.sandbox_id,
            "sandbox_execution_id": self.execution_id,
            "sandbox_template_id": self.template_id,
            "sandbox_build_id": self.build_id,
            "sandbox_team_id": self.team_id.as_str(),
        })
        .to_string()
    }
}

/// A random UUID (version 4) in its usual 8-4-4-4-12 hex form.
pub(crate) fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The event hub: records, fans out live, wakes the webhook delivery worker.
pub struct Events {
    store: Option<Arc<dyn EventStore>>,
    live: broadcast::Sender<Arc<SandboxEvent>>,
    /// Held while an event is recorded and broadcast, and while a subscriber joins: live
    /// events reach subscribers in store order, and a subscriber knows exactly which stored
    /// events it will also receive live.
    order: tokio::sync::Mutex<()>,
    /// Wakes the delivery worker when deliveries were queued.
    pub(crate) wake: Notify,
    policy: Mutex<RetryPolicy>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("persistent", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Events {
    /// A hub over the event storage of `store` (none: events are only streamed live and
    /// webhooks are unavailable).
    pub fn new(store: &Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Events {
            store: store.event_store(),
            live: broadcast::channel(LIVE_CAPACITY).0,
            order: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            policy: Mutex::new(RetryPolicy::default()),
        })
    }

    /// The persistent event storage, if the store has one.
    pub fn store(&self) -> Option<&Arc<dyn EventStore>> {
        self.store.as_ref()
    }

    /// Replaces the webhook retry policy (takes effect for the next attempts).
    pub fn set_retry_policy(&self, policy: RetryPolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// The webhook retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `kind` happened to the sandbox of `rec` and publishes it: stored with its
    /// webhook deliveries (one transaction), broadcast live, delivery worker woken. Never
    /// fails: a store failure is logged and the event is still published live (without a
    /// `seq`). Returns the event.
    pub async fn record(&self, rec: &SandboxRecord, kind: EventKind) -> Arc<SandboxEvent> {
        let event_type = kind.event_type();
        let _order = self.order.lock().await;
        let now = Utc::now();
        let sandbox_id = rec.id.to_string();
        let fresh_execution = matches!(event_type, EventType::Created | EventType::Resumed);
        let current = match (&self.store, fresh_execution) {
            (Some(store), false) => match store.current_execution(&sandbox_id).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(sandbox_id, error = %crate::error::chain(&e), "reading the sandbox's execution failed");
                    None
                }
            },
            _ => None,
        };
        let (execution_id, execution_started) = match current {
            Some((id, started)) => (id, started),
            None if fresh_execution => (new_uuid(), now),
            None => (new_uuid(), rec.started_at),
        };
        let mut event = SandboxEvent {
            seq: None,
            id: new_uuid(),
            event_type,
            timestamp: now,
            sandbox_id,
            team_id: rec.team_id.clone(),
            template_id: rec.template.to_string(),
            build_id: rec.template.to_string(),
            execution_id,
            data: kind.data(rec, execution_started, now),
        };
        if let Some(store) = &self.store {
            match store.record_event(&event, &event.webhook_body()).await {
                Ok((seq, queued)) => {
                    event.seq = Some(seq);
                    if queued > 0 {
                        self.wake.notify_one();
                    }
                }
                Err(e) => tracing::error!(
                    sandbox_id = %event.sandbox_id,
                    event_type = %event.event_type,
                    error = %crate::error::chain(&e),
                    "recording a lifecycle event failed; it is only published live"
                ),
            }
        }
        let event = Arc::new(event);
        // No subscriber is not an error.
        let _ = self.live.send(Arc::clone(&event));
        tracing::debug!(sandbox_id = %event.sandbox_id, event_type = %event.event_type, "lifecycle event");
        event
    }

    /// Joins the live fan-out. Returns the receiver and the highest stored `seq` at that
    /// moment: every event recorded later reaches the receiver, none recorded earlier does.
    pub async fn subscribe(
        &self,
    ) -> Result<(broadcast::Receiver<Arc<SandboxEvent>>, i64), StoreError> {
        let _order = self.order.lock().await;
        let rx = self.live.subscribe();
        let max = match &self.store {
            Some(store) => store.max_event_seq().await?,
            None => 0,
        };
        Ok((rx, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(t.as_str().starts_with("sandbox.lifecycle."));
        }
        assert_eq!(EventType::parse("sandbox.lifecycle.exploded"), None);
        assert_eq!(EventType::parse("create"), None);
        assert_eq!(EventType::Killed.label(), "kill");
    }

    #[test]
    fn uuids_are_version_4() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    fn sample() -> SandboxEvent {
        let mut data = Map::new();
        data.insert("kill_reason".into(), json!("timeout"));
        SandboxEvent {
            seq: Some(7),
            id: "0b7c6f2e-0000-4000-8000-000000000001".into(),
            event_type: EventType::Killed,
            timestamp: "2025-08-06T20:59:36.123Z".parse().expect("time"),
            sandbox_id: "iabc".into(),
            team_id: TeamId::from_stored("team1".into()),
            template_id: "base".into(),
            build_id: "base".into(),
            execution_id: "exec".into(),
            data,
        }
    }

    #[test]
    fn api_shape_is_camel_case_v1() {
        let v = sample().to_api();
        assert_eq!(v["version"], "v1");
        assert_eq!(v["type"], "sandbox.lifecycle.killed");
        assert_eq!(v["sandboxId"], "iabc");
        assert_eq!(v["sandboxTeamId"], "team1");
        assert_eq!(v["sandboxTemplateId"], "base");
        assert_eq!(v["sandboxExecutionId"], "exec");
        assert_eq!(v["eventData"]["kill_reason"], "timeout");
        assert_eq!(v["timestamp"], "2025-08-06T20:59:36.123Z");
        let mut empty = sample();
        empty.data.clear();
        assert_eq!(empty.to_api()["eventData"], Value::Null);
    }

    #[test]
    fn webhook_shape_is_snake_case_v2() {
        let body = sample().webhook_body();
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["version"], "v2");
        assert_eq!(v["type"], "sandbox.lifecycle.killed");
        assert_eq!(v["event_category"], "lifecycle");
        assert_eq!(v["event_label"], "kill");
        assert_eq!(v["event_data"]["kill_reason"], "timeout");
        assert_eq!(v["sandbox_id"], "iabc");
        assert_eq!(v["sandbox_team_id"], "team1");
        assert!(!body.contains('\n'));
    }
}
