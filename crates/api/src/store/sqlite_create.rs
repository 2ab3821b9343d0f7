//! The rows a sandbox create writes, as plain functions on a connection, so that the create
//! path can batch them: [`insert_new`] records a new sandbox (row, lifecycle settings, first
//! log entry, `Idempotency-Key`) and [`set_running_logged`] moves it to `running` with its log
//! entry, each in one transaction and one trip to the blocking pool, where the separate
//! [`Store`](super::Store) calls took one trip each.

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, SandboxId};
use paddock_node::logs::LogEntry;
use rusqlite::{params, Connection};

use super::{exec, logs, now_ms, to_ms, SANDBOX_COLUMNS};
use crate::store::{NewSandbox, SandboxLifecycle, SandboxRecord, StoreError, TeamId};

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
