//! What the lifecycle emits, and the one-line hooks it calls: [`EventKind`] (what happened and
//! the `eventData` it carries, in E2B's keys: `sandbox_metadata`, `execution`, `kill_reason`,
//! `set_timeout`), `Core::emit` (load the record, record the event) and
//! `Core::emit_transition` (called by `Core::advance` for every state change: a running or
//! paused sandbox that starts stopping or fails is `killed`, whatever the cause).

use chrono::{DateTime, SecondsFormat, Utc};
use paddock_domain::{SandboxId, SandboxState};
use serde_json::{json, Map, Value};

use paddock_node_contract::ExitReason;

use super::EventType;
use crate::lifecycle::Core;
use crate::store::SandboxRecord;

/// What happened to a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// It runs (after a create).
    Created,
    /// It stopped existing for clients; `reason` is the free-text reason recorded on it.
    Killed {
        /// E.g. `killed by request`, `timeout reached`, `sandbox exited by itself`, `node lost`.
        reason: String,
    },
    /// Its end time was set (timeout, refresh, connect).
    TimeoutUpdated {
        /// The new end time.
        end_at: DateTime<Utc>,
    },
    /// Its egress policy was replaced.
    NetworkUpdated {
        /// `allowOut` as applied.
        allow_out: Vec<String>,
        /// `denyOut` as applied.
        deny_out: Vec<String>,
        /// `allow_internet_access` as sent.
        allow_internet_access: Option<bool>,
    },
    /// It was paused (on request or at its timeout with `autoPause`).
    Paused,
    /// It was resumed (connect, resume, or traffic with `autoResume`).
    Resumed,
    /// A snapshot of it was taken; it keeps running.
    Checkpointed {
        /// The snapshot's id, when it has one.
        snapshot_id: Option<String>,
    },
}

/// E2B's `kill_reason` for a free-text reason recorded on a sandbox. E2B's own values where one
/// applies (`request`, `timeout`, `unknown`), Paddock's for causes E2B does not have: `exited`,
/// `oom` and `node_lost` (a node's [`ExitReason`]s, by their names), `shutdown`, `restart`.
pub fn kill_reason(reason: &str) -> &'static str {
    if let Some(why) = ExitReason::ALL.iter().find(|r| r.describe() == reason) {
        return why.as_str();
    }
    let r = reason.to_ascii_lowercase();
    if r.contains("by request") {
        "request"
    } else if r.contains("timeout") {
        "timeout"
    } else if r.contains("exited") {
        "exited"
    } else if r.contains("shut down") {
        "shutdown"
    } else if r.contains("after restart") {
        "restart"
    } else {
        "unknown"
    }
}

impl EventKind {
    /// The event type this becomes.
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::Created => EventType::Created,
            EventKind::Killed { .. } => EventType::Killed,
            EventKind::TimeoutUpdated { .. } | EventKind::NetworkUpdated { .. } => {
                EventType::Updated
            }
            EventKind::Paused => EventType::Paused,
            EventKind::Resumed => EventType::Resumed,
            EventKind::Checkpointed { .. } => EventType::Checkpointed,
        }
    }

    /// A timeout update: the sandbox now ends at `end_at`.
    pub fn ends(end_at: DateTime<Utc>) -> Self {
        EventKind::TimeoutUpdated { end_at }
    }

    /// A network update from the body of `PUT /sandboxes/{id}/network`.
    pub fn network(body: &crate::wire::NetworkBody) -> Self {
        EventKind::NetworkUpdated {
            allow_out: body.allow_out.clone().unwrap_or_default(),
            deny_out: body.deny_out.clone().unwrap_or_default(),
            allow_internet_access: body.allow_internet_access,
        }
    }

    /// The `eventData` of this event for the sandbox `rec`, whose current execution started at
    /// `execution_started`, at `now`.
    pub(crate) fn data(
        &self,
        rec: &SandboxRecord,
        execution_started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Map<String, Value> {
        let mut data = Map::new();
        if !rec.metadata.is_empty() {
            data.insert("sandbox_metadata".into(), json!(rec.metadata));
        }
        let execution = || {
            json!({
                "started_at": execution_started.to_rfc3339_opts(SecondsFormat::Secs, true),
                "vcpu_count": rec.resources.cpu_count,
                "memory_mb": rec.resources.memory_mb,
                "execution_time": (now - execution_started).num_milliseconds().max(0),
            })
        };
        match self {
            EventKind::Created | EventKind::Resumed => {}
            EventKind::Killed { reason } => {
                data.insert("kill_reason".into(), json!(kill_reason(reason)));
                data.insert("reason".into(), json!(reason));
                data.insert("execution".into(), execution());
            }
            EventKind::Paused => {
                data.insert("execution".into(), execution());
            }
            EventKind::TimeoutUpdated { end_at } => {
                data.insert("set_timeout".into(), json!(super::rfc3339(*end_at)));
            }
            EventKind::NetworkUpdated {
                allow_out,
                deny_out,
                allow_internet_access,
            } => {
                data.insert(
                    "set_network".into(),
                    json!({
                        "allow_out": allow_out,
                        "deny_out": deny_out,
                        "allow_internet_access": allow_internet_access,
                    }),
                );
            }
            EventKind::Checkpointed { snapshot_id } => {
                if let Some(snapshot) = snapshot_id {
                    data.insert("snapshot_id".into(), json!(snapshot));
                }
            }
        }
        data
    }
}

impl Core {
    /// Records that `kind` happened to sandbox `id` (read from the store). Never fails: a
    /// missing record or a store failure is logged and nothing is emitted.
    pub(crate) async fn emit(&self, id: &SandboxId, kind: EventKind) {
        match self.store.sandbox(id).await {
            Ok(Some(rec)) => {
                self.events.record(&rec, kind).await;
            }
            Ok(None) => {
                tracing::warn!(sandbox_id = %id, event_type = %kind.event_type(), "no record for a lifecycle event; not emitted")
            }
            Err(e) => {
                tracing::error!(sandbox_id = %id, event_type = %kind.event_type(), error = %crate::error::chain(&e), "reading the record for a lifecycle event failed; not emitted")
            }
        }
    }

    /// The event of a state change made by `Core::advance`, if it makes one: a sandbox that
    /// was running or paused and starts stopping (kill, timeout, shutdown, restart) or fails
    /// (it exited by itself) is `killed`.
    pub(crate) async fn emit_transition(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        reason: Option<&str>,
    ) {
        let was_alive = matches!(from, SandboxState::Running | SandboxState::Paused);
        let ends = matches!(to, SandboxState::Stopping | SandboxState::Error);
        if was_alive && ends {
            let reason = reason.unwrap_or("unknown").to_string();
            self.emit(id, EventKind::Killed { reason }).await;
        }
    }

    /// Runs the webhook delivery worker (which also prunes old events) until shutdown.
    pub(crate) async fn run_events(&self) {
        let destinations = std::sync::Arc::new(self.config.webhook_destinations.clone());
        super::dispatch::run(&self.events, destinations, self.shutdown.subscribe()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TeamId;
    use paddock_domain::{Resources, TemplateName};

    fn rec(meta: &[(&str, &str)]) -> SandboxRecord {
        let t: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().expect("time");
        SandboxRecord {
            id: SandboxId::generate(),
            team_id: TeamId::from_stored("t".into()),
            template: TemplateName::parse("base").expect("valid"),
            alias: None,
            state: SandboxState::Running,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            access_token: String::new(),
            started_at: t,
            end_at: t,
            resources: Resources {
                cpu_count: 2,
                memory_mb: 512,
                disk_mb: 1024,
                pids_max: 100,
            },
            client_id: String::new(),
            end_reason: None,
        }
    }

    #[test]
    fn kill_reasons_map_to_e2b_words() {
        assert_eq!(kill_reason("killed by request"), "request");
        assert_eq!(kill_reason("timeout reached"), "timeout");
        assert_eq!(kill_reason("sandbox exited by itself"), "exited");
        assert_eq!(kill_reason("sandbox ran out of memory"), "oom");
        assert_eq!(kill_reason("node lost"), "node_lost");
        for why in ExitReason::ALL {
            assert_eq!(kill_reason(why.describe()), why.as_str());
        }
        assert_eq!(kill_reason("server shut down"), "shutdown");
        assert_eq!(kill_reason("not running after restart"), "restart");
        assert_eq!(kill_reason("cosmic rays"), "unknown");
    }

    #[test]
    fn killed_and_paused_carry_the_execution() {
        let r = rec(&[("role", "web")]);
        let started: DateTime<Utc> = "2025-01-01T00:00:10Z".parse().expect("time");
        let now: DateTime<Utc> = "2025-01-01T00:00:12.5Z".parse().expect("time");
        let d = EventKind::Killed {
            reason: "timeout reached".into(),
        }
        .data(&r, started, now);
        assert_eq!(d["kill_reason"], "timeout");
        assert_eq!(d["reason"], "timeout reached");
        assert_eq!(d["sandbox_metadata"], json!({"role": "web"}));
        assert_eq!(
            d["execution"],
            json!({"started_at": "2025-01-01T00:00:10Z", "vcpu_count": 2,
                   "memory_mb": 512, "execution_time": 2500})
        );
        let p = EventKind::Paused.data(&rec(&[]), started, now);
        assert!(p.contains_key("execution"));
        assert!(!p.contains_key("sandbox_metadata"));
        assert!(EventKind::Created.data(&rec(&[]), started, now).is_empty());
    }

    #[test]
    fn updates_say_what_changed() {
        let r = rec(&[]);
        let now = Utc::now();
        let end: DateTime<Utc> = "2025-08-06T20:59:59Z".parse().expect("time");
        let d = EventKind::TimeoutUpdated { end_at: end }.data(&r, now, now);
        assert_eq!(d["set_timeout"], "2025-08-06T20:59:59.000Z");
        let body = crate::wire::NetworkBody {
            allow_out: Some(vec!["1.1.1.1".into()]),
            deny_out: Some(vec!["0.0.0.0/0".into()]),
            ..Default::default()
        };
        let kind = EventKind::network(&body);
        assert_eq!(kind.event_type(), EventType::Updated);
        let d = kind.data(&r, now, now);
        assert_eq!(d["set_network"]["allow_out"], json!(["1.1.1.1"]));
        assert_eq!(d["set_network"]["allow_internet_access"], Value::Null);
        let c = EventKind::Checkpointed {
            snapshot_id: Some("snap1".into()),
        };
        assert_eq!(c.event_type(), EventType::Checkpointed);
        assert_eq!(c.data(&r, now, now)["snapshot_id"], "snap1");
    }
}
