//! The SQLite [`EventStore`]: lifecycle events (`sandbox_events`), webhooks (`webhooks`) and
//! the per-webhook delivery queue (`webhook_deliveries`), created by [`MIGRATION`].
//!
//! `seq` columns are `AUTOINCREMENT`, so a number is never reused after pruning: an event's
//! `seq` is a stable stream position (`Last-Event-ID` resumes after it). Times are Unix
//! milliseconds, `data` a JSON object, a webhook's `events` a JSON array of type names.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{exec, from_ms, now_ms, query_one, to_ms, SqliteStore};
use crate::events::store::{EventQuery, EventStore, PendingDelivery, Webhook};
use crate::events::{EventType, SandboxEvent};
use crate::store::{StoreError, TeamId};

/// The schema of the events migration.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE sandbox_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    team_id       TEXT NOT NULL,
    sandbox_id    TEXT NOT NULL,
    type          TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    template_id   TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    execution_id  TEXT NOT NULL,
    data          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sandbox_events_team_seq ON sandbox_events(team_id, seq);
CREATE INDEX sandbox_events_sandbox_seq ON sandbox_events(sandbox_id, seq);
CREATE INDEX sandbox_events_ts ON sandbox_events(ts);
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX webhooks_team ON webhooks(team_id, created_at);
CREATE TABLE webhook_deliveries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id    TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL,
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries(webhook_id, state, seq);
"#;

const EVENT_COLUMNS: &str =
    "seq, id, team_id, sandbox_id, type, ts, template_id, build_id, execution_id, data";
const WEBHOOK_COLUMNS: &str = "id, team_id, name, url, enabled, events, secret, created_at";

/// Raw columns of one event row, decoded after the statement is done.
struct RawEvent {
    seq: i64,
    id: String,
    team_id: String,
    sandbox_id: String,
    event_type: String,
    ts: i64,
    template_id: String,
    build_id: String,
    execution_id: String,
    data: String,
}

impl RawEvent {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawEvent {
            seq: row.get(0)?,
            id: row.get(1)?,
            team_id: row.get(2)?,
            sandbox_id: row.get(3)?,
            event_type: row.get(4)?,
            ts: row.get(5)?,
            template_id: row.get(6)?,
            build_id: row.get(7)?,
            execution_id: row.get(8)?,
            data: row.get(9)?,
        })
    }

    fn decode(self) -> Result<SandboxEvent, StoreError> {
        let event_type = EventType::parse(&self.event_type).ok_or(StoreError::Corrupt {
            column: "sandbox_events.type",
            value: self.event_type.clone(),
        })?;
        let data: serde_json::Value = serde_json::from_str(&self.data)?;
        let serde_json::Value::Object(data) = data else {
            return Err(StoreError::Corrupt {
                column: "sandbox_events.data",
                value: self.data,
            });
        };
        Ok(SandboxEvent {
            seq: Some(self.seq),
            id: self.id,
            event_type,
            timestamp: from_ms(self.ts, "sandbox_events.ts")?,
            sandbox_id: self.sandbox_id,
            team_id: TeamId::from_stored(self.team_id),
            template_id: self.template_id,
            build_id: self.build_id,
            execution_id: self.execution_id,
            data,
        })
    }
}

/// Raw columns of one webhook row.
struct RawWebhook {
    id: String,
    team_id: String,
    name: String,
    url: String,
    enabled: bool,
    events: String,
    secret: String,
    created_at: i64,
}

impl RawWebhook {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawWebhook {
            id: row.get(0)?,
            team_id: row.get(1)?,
            name: row.get(2)?,
            url: row.get(3)?,
            enabled: row.get(4)?,
            events: row.get(5)?,
            secret: row.get(6)?,
            created_at: row.get(7)?,
        })
    }

    fn decode(self) -> Result<Webhook, StoreError> {
        let names: Vec<String> = serde_json::from_str(&self.events)?;
        let events = names
            .iter()
            .map(|n| {
                EventType::parse(n).ok_or(StoreError::Corrupt {
                    column: "webhooks.events",
                    value: n.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Webhook {
            id: self.id,
            team_id: TeamId::from_stored(self.team_id),
            name: self.name,
            url: self.url,
            enabled: self.enabled,
            events,
            secret: self.secret,
            created_at: from_ms(self.created_at, "webhooks.created_at")?,
        })
    }
}

fn events_json(events: &[EventType]) -> Result<String, StoreError> {
    let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    Ok(serde_json::to_string(&names)?)
}

/// Builds the event listing statement and its parameters (kept apart for unit testing).
fn events_sql(q: &EventQuery) -> (String, Vec<SqlValue>) {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM sandbox_events WHERE team_id = ?");
    let mut values = vec![SqlValue::Text(q.team_id.as_str().to_string())];
    if let Some(sandbox) = &q.sandbox_id {
        sql.push_str(" AND sandbox_id = ?");
        values.push(SqlValue::Text(sandbox.clone()));
    }
    if !q.types.is_empty() {
        let marks: Vec<&str> = q
            .types
            .iter()
            .map(|t| {
                values.push(SqlValue::Text(t.as_str().to_string()));
                "?"
            })
            .collect();
        sql.push_str(&format!(" AND type IN ({})", marks.join(", ")));
    }
    if let Some(after) = q.after_seq {
        sql.push_str(" AND seq > ?");
        values.push(SqlValue::Integer(after));
    }
    let dir = if q.ascending { "ASC" } else { "DESC" };
    sql.push_str(&format!(" ORDER BY seq {dir} LIMIT ? OFFSET ?"));
    values.push(SqlValue::Integer(i64::from(q.limit)));
    values.push(SqlValue::Integer(
        i64::try_from(q.offset).unwrap_or(i64::MAX),
    ));
    (sql, values)
}

fn query_webhooks(
    conn: &Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Webhook>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(values, RawWebhook::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(RawWebhook::decode).collect()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn record_event(
        &self,
        event: &SandboxEvent,
        webhook_body: &str,
    ) -> Result<(i64, usize), StoreError> {
        let (e, body) = (event.clone(), webhook_body.to_string());
        self.with_conn_quick(move |conn| {
            let data = serde_json::to_string(&e.data)?;
            let tx = conn.transaction()?;
            exec(
                &tx,
                "INSERT INTO sandbox_events (id, team_id, sandbox_id, type, ts, template_id, \
                 build_id, execution_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    e.id,
                    e.team_id.as_str(),
                    e.sandbox_id,
                    e.event_type.as_str(),
                    to_ms(e.timestamp),
                    e.template_id,
                    e.build_id,
                    e.execution_id,
                    data,
                ],
            )?;
            let seq = tx.last_insert_rowid();
            let queued = exec(
                &tx,
                "INSERT INTO webhook_deliveries (webhook_id, event_id, body, next_at, created_at) \
                 SELECT w.id, ?1, ?2, ?3, ?3 FROM webhooks w \
                 WHERE w.team_id = ?4 AND w.enabled = 1 \
                 AND EXISTS (SELECT 1 FROM json_each(w.events) j WHERE j.value = ?5) \
                 ORDER BY w.created_at, w.id",
                params![
                    e.id,
                    body,
                    now_ms(),
                    e.team_id.as_str(),
                    e.event_type.as_str()
                ],
            )?;
            tx.commit()?;
            Ok((seq, queued))
        })
        .await
    }

    async fn current_execution(
        &self,
        sandbox_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let sandbox_id = sandbox_id.to_string();
        self.with_conn(move |conn| {
            let found: Option<(String, i64)> = query_one(
                conn,
                "SELECT execution_id, ts FROM sandbox_events WHERE sandbox_id = ?1 \
                     AND type IN (?2, ?3) ORDER BY seq DESC LIMIT 1",
                params![
                    sandbox_id,
                    EventType::Created.as_str(),
                    EventType::Resumed.as_str()
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            found
                .map(|(id, ts)| Ok((id, from_ms(ts, "sandbox_events.ts")?)))
                .transpose()
        })
        .await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<SandboxEvent>, StoreError> {
        let (sql, values) = events_sql(query);
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let raws = stmt
                .query_map(params_from_iter(values), RawEvent::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter().map(RawEvent::decode).collect()
        })
        .await
    }

    async fn event_seq(&self, team: &TeamId, event_id: &str) -> Result<Option<i64>, StoreError> {
        let (team, event_id) = (team.clone(), event_id.to_string());
        self.with_conn(move |conn| {
            Ok(query_one(
                conn,
                "SELECT seq FROM sandbox_events WHERE id = ?1 AND team_id = ?2",
                params![event_id, team.as_str()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn max_event_seq(&self) -> Result<i64, StoreError> {
        self.with_conn(|conn| {
            Ok(query_one(
                conn,
                "SELECT COALESCE(MAX(seq), 0) FROM sandbox_events",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn sandbox_visible(&self, team: &TeamId, sandbox_id: &str) -> Result<bool, StoreError> {
        let (team, sandbox_id) = (team.clone(), sandbox_id.to_string());
        self.with_conn(move |conn| {
            Ok(query_one(
                conn,
                "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1 AND team_id = ?2) \
                 OR EXISTS (SELECT 1 FROM sandbox_events WHERE sandbox_id = ?1 AND team_id = ?2)",
                params![sandbox_id, team.as_str()],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let pruned = exec(
                &tx,
                "DELETE FROM sandbox_events WHERE ts < ?1",
                [to_ms(before)],
            )?;
            exec(
                &tx,
                "DELETE FROM webhook_deliveries WHERE state = 'failed' AND created_at < ?1",
                [to_ms(before)],
            )?;
            tx.commit()?;
            Ok(u64::try_from(pruned).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn insert_webhook(&self, hook: &Webhook) -> Result<(), StoreError> {
        let hook = hook.clone();
        self.with_conn(move |conn| {
            exec(
                conn,
                &format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLUMNS}, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)"
                ),
                params![
                    hook.id,
                    hook.team_id.as_str(),
                    hook.name,
                    hook.url,
                    hook.enabled,
                    events_json(&hook.events)?,
                    hook.secret,
                    to_ms(hook.created_at),
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn webhooks(&self, team: &TeamId) -> Result<Vec<Webhook>, StoreError> {
        let team = team.clone();
        self.with_conn(move |conn| {
            query_webhooks(
                conn,
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE team_id = ?1 \
                     ORDER BY created_at, id"
                ),
                &[&team.as_str()],
            )
        })
        .await
    }

    async fn webhook(&self, team: &TeamId, id: &str) -> Result<Option<Webhook>, StoreError> {
        let (team, id) = (team.clone(), id.to_string());
        self.with_conn(move |conn| {
            Ok(query_webhooks(
                conn,
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1 AND team_id = ?2"),
                &[&id, &team.as_str()],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn update_webhook(&self, hook: &Webhook) -> Result<bool, StoreError> {
        let hook = hook.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let changed = exec(
                &tx,
                "UPDATE webhooks SET name = ?1, url = ?2, enabled = ?3, events = ?4, secret = ?5, \
                 updated_at = ?6 WHERE id = ?7 AND team_id = ?8",
                params![
                    hook.name,
                    hook.url,
                    hook.enabled,
                    events_json(&hook.events)?,
                    hook.secret,
                    now_ms(),
                    hook.id,
                    hook.team_id.as_str(),
                ],
            )?;
            if changed == 1 && !hook.enabled {
                exec(
                    &tx,
                    "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND state = 'pending'",
                    [&hook.id],
                )?;
            }
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_webhook(&self, team: &TeamId, id: &str) -> Result<bool, StoreError> {
        let (team, id) = (team.clone(), id.to_string());
        self.with_conn(move |conn| {
            // Deliveries go with it (ON DELETE CASCADE; foreign keys are on).
            let deleted = exec(
                conn,
                "DELETE FROM webhooks WHERE id = ?1 AND team_id = ?2",
                params![id, team.as_str()],
            )?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn delivery_heads(&self) -> Result<Vec<PendingDelivery>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.seq, d.webhook_id, w.url, w.secret, d.body, d.attempts, d.next_at \
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                 WHERE w.enabled = 1 AND d.state = 'pending' AND d.seq = \
                 (SELECT MIN(d2.seq) FROM webhook_deliveries d2 \
                  WHERE d2.webhook_id = d.webhook_id AND d2.state = 'pending') \
                 ORDER BY d.seq",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(seq, webhook_id, url, secret, body, attempts, next_at)| {
                    Ok(PendingDelivery {
                        seq,
                        webhook_id,
                        url,
                        secret,
                        body,
                        attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt {
                            column: "webhook_deliveries.attempts",
                            value: attempts.to_string(),
                        })?,
                        next_at: from_ms(next_at, "webhook_deliveries.next_at")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delivery_succeeded(&self, seq: i64) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            exec(conn, "DELETE FROM webhook_deliveries WHERE seq = ?1", [seq])?;
            Ok(())
        })
        .await
    }

    async fn delivery_failed(
        &self,
        seq: i64,
        attempts: u32,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
    ) -> Result<(), StoreError> {
        let error = error.to_string();
        self.with_conn(move |conn| {
            exec(
                conn,
                "UPDATE webhook_deliveries SET attempts = ?1, last_error = ?2, \
                 next_at = COALESCE(?3, next_at), \
                 state = CASE WHEN ?3 IS NULL THEN 'failed' ELSE 'pending' END \
                 WHERE seq = ?4",
                params![i64::from(attempts), error, retry_at.map(to_ms), seq],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::new_uuid;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("paddock.db")).expect("open");
        (dir, store)
    }

    fn team(name: &str) -> TeamId {
        TeamId::from_stored(name.into())
    }

    fn event(team_id: &str, sandbox: &str, t: EventType, ms: i64) -> SandboxEvent {
        let mut data = serde_json::Map::new();
        data.insert("k".into(), json!(ms));
        SandboxEvent {
            seq: None,
            id: new_uuid(),
            event_type: t,
            timestamp: from_ms(ms, "test").expect("time"),
            sandbox_id: sandbox.into(),
            team_id: team(team_id),
            template_id: "base".into(),
            build_id: "base".into(),
            execution_id: format!("exec-{ms}"),
            data,
        }
    }

    fn query(team_id: &str) -> EventQuery {
        EventQuery {
            team_id: team(team_id),
            sandbox_id: None,
            types: vec![],
            ascending: true,
            after_seq: None,
            offset: 0,
            limit: 100,
        }
    }

    fn hook(team_id: &str, events: Vec<EventType>) -> Webhook {
        Webhook {
            id: new_uuid(),
            team_id: team(team_id),
            name: "h".into(),
            url: "http://127.0.0.1:9/".into(),
            enabled: true,
            events,
            secret: "s".into(),
            created_at: from_ms(now_ms(), "test").expect("time"),
        }
    }

    #[tokio::test]
    async fn events_round_trip_filter_order_and_page() {
        let (_dir, s) = store();
        let mut seqs = Vec::new();
        for (i, (t, sbx, ty)) in [
            ("a", "s1", EventType::Created),
            ("a", "s1", EventType::Paused),
            ("b", "s9", EventType::Created),
            ("a", "s2", EventType::Created),
            ("a", "s1", EventType::Killed),
        ]
        .into_iter()
        .enumerate()
        {
            let e = event(t, sbx, ty, 1_000 + i as i64);
            let (seq, queued) = s.record_event(&e, "{}").await.expect("record");
            assert_eq!(queued, 0, "no webhooks yet");
            seqs.push((seq, e));
        }
        assert!(seqs.windows(2).all(|w| w[0].0 < w[1].0), "seq ascends");
        let all = s.events(&query("a")).await.expect("read");
        assert_eq!(all.len(), 4, "team b's event is not team a's");
        assert_eq!(all[0].id, seqs[0].1.id);
        assert_eq!(all[0].seq, Some(seqs[0].0));
        assert_eq!(all[0].data["k"], 1000);
        assert_eq!(all[0].timestamp, seqs[0].1.timestamp);
        assert_eq!(all[0].execution_id, "exec-1000");

        let desc = s
            .events(&EventQuery {
                ascending: false,
                limit: 2,
                offset: 1,
                ..query("a")
            })
            .await
            .expect("read");
        let ids: Vec<&str> = desc.iter().map(|e| e.sandbox_id.as_str()).collect();
        assert_eq!(ids, ["s2", "s1"], "newest first, one skipped");
        assert_eq!(desc[1].event_type, EventType::Paused);

        let s1_kills = s
            .events(&EventQuery {
                sandbox_id: Some("s1".into()),
                types: vec![EventType::Killed, EventType::Resumed],
                ..query("a")
            })
            .await
            .expect("read");
        assert_eq!(s1_kills.len(), 1);
        assert_eq!(s1_kills[0].event_type, EventType::Killed);

        let after = s
            .events(&EventQuery {
                after_seq: Some(seqs[1].0),
                ..query("a")
            })
            .await
            .expect("read");
        assert_eq!(after.len(), 2);

        assert_eq!(
            s.event_seq(&team("a"), &seqs[1].1.id).await.expect("seq"),
            Some(seqs[1].0)
        );
        assert_eq!(
            s.event_seq(&team("b"), &seqs[1].1.id).await.expect("seq"),
            None,
            "another team's event id is unknown"
        );
        assert_eq!(s.max_event_seq().await.expect("max"), seqs[4].0);
        assert!(s.sandbox_visible(&team("a"), "s1").await.expect("vis"));
        assert!(!s.sandbox_visible(&team("b"), "s1").await.expect("vis"));
        let (exec, _) = s
            .current_execution("s1")
            .await
            .expect("exec")
            .expect("has one");
        assert_eq!(exec, "exec-1000", "the created event's execution");

        assert_eq!(
            s.prune_events(from_ms(1_002, "t").expect("t"))
                .await
                .expect("prune"),
            2
        );
        assert_eq!(s.events(&query("a")).await.expect("read").len(), 2);
        assert_eq!(
            s.prune_events(from_ms(10_000, "t").expect("t"))
                .await
                .expect("prune"),
            3
        );
        assert_eq!(s.max_event_seq().await.expect("max"), 0);
        let e = event("a", "s3", EventType::Created, 5_000);
        let (seq, _) = s.record_event(&e, "{}").await.expect("record");
        assert!(seq > seqs[4].0, "seq is never reused");
    }

    #[tokio::test]
    async fn deliveries_queue_per_webhook_in_order() {
        let (_dir, s) = store();
        let kills = hook("a", vec![EventType::Killed]);
        let all = hook("a", EventType::ALL.to_vec());
        let other_team = hook("b", EventType::ALL.to_vec());
        let mut disabled = hook("a", EventType::ALL.to_vec());
        disabled.enabled = false;
        for h in [&kills, &all, &other_team, &disabled] {
            s.insert_webhook(h).await.expect("insert");
        }
        let (_, queued) = s
            .record_event(&event("a", "s1", EventType::Created, 1), "first")
            .await
            .expect("record");
        assert_eq!(queued, 1, "only the enabled all-events hook of team a");
        let (_, queued) = s
            .record_event(&event("a", "s1", EventType::Killed, 2), "second")
            .await
            .expect("record");
        assert_eq!(queued, 2);

        let heads = s.delivery_heads().await.expect("heads");
        assert_eq!(heads.len(), 2, "{heads:?}");
        let head_all = heads.iter().find(|d| d.webhook_id == all.id).expect("all");
        assert_eq!(head_all.body, "first", "oldest first");
        assert_eq!(head_all.attempts, 0);
        assert_eq!(head_all.secret, "s");

        // A failure keeps it at the head with its retry time; success moves the queue on.
        let retry_at = Utc::now() + chrono::Duration::seconds(30);
        s.delivery_failed(head_all.seq, 1, Some(retry_at), "HTTP 500")
            .await
            .expect("fail");
        let heads = s.delivery_heads().await.expect("heads");
        let again = heads.iter().find(|d| d.webhook_id == all.id).expect("all");
        assert_eq!((again.seq, again.attempts), (head_all.seq, 1));
        assert_eq!(to_ms(again.next_at), to_ms(retry_at));
        s.delivery_succeeded(again.seq).await.expect("ok");
        let heads = s.delivery_heads().await.expect("heads");
        let next = heads.iter().find(|d| d.webhook_id == all.id).expect("all");
        assert_eq!(next.body, "second");
        // Giving up moves on too.
        s.delivery_failed(next.seq, 5, None, "gone")
            .await
            .expect("fail");
        assert!(s
            .delivery_heads()
            .await
            .expect("heads")
            .iter()
            .all(|d| d.webhook_id != all.id));

        // Disabling drops pending deliveries; deleting removes the rest.
        let mut k = s
            .webhook(&team("a"), &kills.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(k, kills);
        k.enabled = false;
        assert!(s.update_webhook(&k).await.expect("update"));
        assert!(s.delivery_heads().await.expect("heads").is_empty());
        assert!(s
            .delete_webhook(&team("a"), &kills.id)
            .await
            .expect("delete"));
        assert!(!s
            .delete_webhook(&team("a"), &kills.id)
            .await
            .expect("delete"));
        assert!(!s
            .delete_webhook(&team("a"), &other_team.id)
            .await
            .expect("not team a's"));
        let listed = s.webhooks(&team("a")).await.expect("list");
        assert_eq!(listed.len(), 2);
        assert!(s.webhook(&team("b"), &all.id).await.expect("get").is_none());
    }
}
