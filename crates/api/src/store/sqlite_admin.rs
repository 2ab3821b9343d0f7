//! The housekeeping statements of the SQLite store, kept apart from the per-request ones:
//! replacing a team's API keys and pruning old `stopped` records.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{exec, now_ms, to_ms};
use crate::store::{StoreError, TeamId};

/// Deletes every API key of `team` except `key_hash` and registers `key_hash` for it, in one
/// transaction.
pub(super) fn set_only_api_key(
    conn: &mut Connection,
    team: &TeamId,
    key_hash: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    exec(
        &tx,
        "DELETE FROM api_keys WHERE team_id = ?1 AND key_hash <> ?2",
        params![team.as_str(), key_hash],
    )?;
    exec(
        &tx,
        "INSERT INTO api_keys (key_hash, team_id, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key_hash) DO UPDATE SET team_id = excluded.team_id",
        params![key_hash, team.as_str(), now_ms()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Deletes `stopped` sandboxes whose last change is older than `before`, with the idempotency
/// keys that point at them.
pub(super) fn prune_stopped(
    conn: &mut Connection,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    exec(
        &tx,
        "DELETE FROM idempotency_keys WHERE sandbox_id IN \
         (SELECT id FROM sandboxes WHERE state = 'stopped' AND updated_at < ?1)",
        [to_ms(before)],
    )?;
    let deleted = exec(
        &tx,
        "DELETE FROM sandboxes WHERE state = 'stopped' AND updated_at < ?1",
        [to_ms(before)],
    )?;
    tx.commit()?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}
