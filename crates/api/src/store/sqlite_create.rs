//! The rows a sandbox create writes, as plain functions on a connection, so that the create
//! path can batch them: [`insert_new`] records a new sandbox (row, lifecycle settings, first
//! log entry, `Idempotency-Key`) and [`set_running_logged`] moves it to `running` with its log
//! entry, each in one transaction and one trip to the blocking pool, where the separate
//! [`Store`](super::Store) calls took one trip each.

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, SandboxId};
use paddock_node_contract::logs::LogEntry;
use rusqlite::{params, Connection};

use super::{exec, logs, now_ms, query_one, to_ms, SANDBOX_COLUMNS};
use crate::store::{NewSandbox, SandboxLifecycle, SandboxRecord, SentToNode, StoreError, TeamId};

/// Columns of what the control plane sent the node (see [`SentToNode`]). Rows older than this
/// migration have no env vars and the default egress policy on record; their pause mode is
/// filled in from the node at the next start (`reconcile_paused`).
pub(super) const MIGRATION: &str = r#"
ALTER TABLE sandboxes ADD COLUMN env_vars TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sandboxes ADD COLUMN egress TEXT;
ALTER TABLE sandboxes ADD COLUMN pause_mode TEXT;
"#;

/// Records the env vars and egress policy sent to the node for sandbox `id`.
pub(super) fn set_sent_row(
    conn: &Connection,
    id: &SandboxId,
    sent: &SentToNode,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE sandboxes SET env_vars = ?1, egress = ?2, pause_mode = ?3 WHERE id = ?4",
        params![
            serde_json::to_string(&sent.env_vars)?,
            serde_json::to_string(&sent.egress)?,
            sent.pause_mode.map(|m| m.as_str()),
            id.as_str()
        ],
    )?;
    Ok(())
}

/// What was sent to the node for sandbox `id` (`None` when there is no such row).
pub(super) fn sent_row(
    conn: &Connection,
    id: &SandboxId,
) -> Result<Option<SentToNode>, StoreError> {
    use rusqlite::OptionalExtension as _;
    let row = query_one(
        conn,
        "SELECT env_vars, egress, pause_mode FROM sandboxes WHERE id = ?1",
        [id.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        },
    )
    .optional()?;
    let Some((env, egress, mode)) = row else {
        return Ok(None);
    };
    Ok(Some(SentToNode {
        env_vars: serde_json::from_str(&env)?,
        egress: match egress {
            Some(text) => serde_json::from_str(&text)?,
            None => Default::default(),
        },
        pause_mode: mode
            .as_deref()
            .and_then(paddock_node_contract::PauseMode::parse),
    }))
}

/// Inserts a sandbox's row.
pub(super) fn insert_row(conn: &Connection, r: &SandboxRecord) -> Result<(), StoreError> {
    let metadata = serde_json::to_string(&r.metadata)?;
    exec(
        conn,
        &format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ),
        params![
            r.id.as_str(),
            r.team_id.as_str(),
            r.template.as_str(),
            r.alias,
            r.state.as_str(),
            metadata,
            r.access_token,
            to_ms(r.started_at),
            to_ms(r.end_at),
            i64::from(r.resources.cpu_count),
            r.resources.memory_mb as i64,
            r.resources.disk_mb as i64,
            r.resources.pids_max as i64,
            r.client_id,
            r.end_reason,
            now_ms(),
        ],
    )?;
    Ok(())
}

/// Moves a sandbox from `creating` to `running`; whether the row changed.
pub(super) fn set_running_row(
    conn: &Connection,
    id: &SandboxId,
    resources: Resources,
    started_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let changed = exec(
        conn,
        "UPDATE sandboxes SET state = 'running', cpu_count = ?1, memory_mb = ?2, \
         disk_mb = ?3, pids_max = ?4, started_at = ?5, end_at = ?6, updated_at = ?7 \
         WHERE id = ?8 AND state = 'creating'",
        params![
            i64::from(resources.cpu_count),
            resources.memory_mb as i64,
            resources.disk_mb as i64,
            resources.pids_max as i64,
            to_ms(started_at),
            to_ms(end_at),
            now_ms(),
            id.as_str(),
        ],
    )?;
    Ok(changed == 1)
}

/// Records the lifecycle settings of a sandbox.
pub(super) fn set_lifecycle_row(
    conn: &Connection,
    id: &SandboxId,
    lifecycle: SandboxLifecycle,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE sandboxes SET auto_pause = ?1, auto_resume = ?2, pause_to_disk = ?3, \
         updated_at = ?4 WHERE id = ?5",
        params![
            lifecycle.auto_pause,
            lifecycle.auto_resume,
            lifecycle.pause_to_disk,
            now_ms(),
            id.as_str()
        ],
    )?;
    Ok(())
}

/// Remembers which sandbox an `Idempotency-Key` created, pruning entries older than a day.
pub(super) fn record_idempotency_row(
    conn: &Connection,
    team: &TeamId,
    key: &str,
    sandbox: &SandboxId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    exec(
        conn,
        "DELETE FROM idempotency_keys WHERE created_at < ?1",
        [to_ms(at) - 24 * 3600 * 1000],
    )?;
    exec(
        conn,
        "INSERT INTO idempotency_keys (team_id, key, sandbox_id, created_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (team_id, key) DO UPDATE SET \
         sandbox_id = excluded.sandbox_id, created_at = excluded.created_at",
        params![team.as_str(), key, sandbox.as_str(), to_ms(at)],
    )?;
    Ok(())
}

/// Records a new sandbox in one transaction (see [`crate::store::Store::insert_new_sandbox`]).
pub(super) fn insert_new(conn: &mut Connection, new: &NewSandbox) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    insert_row(&tx, &new.record)?;
    if new.sent != SentToNode::default() {
        set_sent_row(&tx, &new.record.id, &new.sent)?;
    }
    if new.lifecycle != SandboxLifecycle::default() {
        set_lifecycle_row(&tx, &new.record.id, new.lifecycle)?;
    }
    logs::append(&tx, &new.record.id, &new.log)?;
    if let Some((key, at)) = &new.idempotency {
        record_idempotency_row(&tx, &new.record.team_id, key, &new.record.id, *at)?;
    }
    tx.commit()?;
    Ok(())
}

/// Moves a sandbox to `running` and appends `entry` when it did, in one transaction.
pub(super) fn set_running_logged(
    conn: &mut Connection,
    id: &SandboxId,
    resources: Resources,
    started_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    entry: &LogEntry,
) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let changed = set_running_row(&tx, id, resources, started_at, end_at)?;
    if changed {
        logs::append(&tx, id, entry)?;
    }
    tx.commit()?;
    Ok(changed)
}
