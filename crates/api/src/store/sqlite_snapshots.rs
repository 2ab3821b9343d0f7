//! Snapshots in SQLite (table `snapshots`, migration 5): which team owns each snapshot template,
//! which sandbox it was taken from, and how big its layer is. The files are the node's (a
//! template in its store); this table is what `GET /snapshots` lists and what lets a team
//! delete only its own snapshots. Migration 5 also records whether `autoPause` pauses to disk
//! (`autoPauseMemory: false`).

use paddock_domain::{SandboxId, TemplateName};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{exec, from_ms, query_one, to_ms};
use crate::store::{SnapshotQuery, SnapshotRecord, StoreError, TeamId};

/// The schema of migration 5.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE snapshots (
    name        TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(id),
    sandbox_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL
);
CREATE INDEX snapshots_team_created ON snapshots(team_id, created_at);
ALTER TABLE sandboxes ADD COLUMN pause_to_disk INTEGER NOT NULL DEFAULT 0;
"#;

const COLUMNS: &str = "name, team_id, sandbox_id, created_at, size_bytes";

fn row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn decode(raw: (String, String, String, i64, i64)) -> Result<SnapshotRecord, StoreError> {
    let (name, team, sandbox, created, size) = raw;
    Ok(SnapshotRecord {
        name: TemplateName::parse(&name).map_err(|_| StoreError::Corrupt {
            column: "snapshots.name",
            value: name.clone(),
        })?,
        team_id: TeamId::from_stored(team),
        sandbox_id: SandboxId::parse(&sandbox).map_err(|_| StoreError::Corrupt {
            column: "snapshots.sandbox_id",
            value: sandbox.clone(),
        })?,
        created_at: from_ms(created, "snapshots.created_at")?,
        size_bytes: u64::try_from(size).unwrap_or(0),
    })
}

/// Records a snapshot; `false` if the name is taken.
pub(super) fn insert(conn: &mut Connection, rec: &SnapshotRecord) -> Result<bool, StoreError> {
    let n = exec(
        conn,
        "INSERT OR IGNORE INTO snapshots (name, team_id, sandbox_id, created_at, size_bytes) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            rec.name.as_str(),
            rec.team_id.as_str(),
            rec.sandbox_id.as_str(),
            to_ms(rec.created_at),
            i64::try_from(rec.size_bytes).unwrap_or(i64::MAX),
        ],
    )?;
    Ok(n == 1)
}

/// One snapshot by name, whoever owns it.
pub(super) fn get(
    conn: &mut Connection,
    name: &TemplateName,
) -> Result<Option<SnapshotRecord>, StoreError> {
    query_one(
        conn,
        &format!("SELECT {COLUMNS} FROM snapshots WHERE name = ?1"),
        [name.as_str()],
        row,
    )
    .optional()?
    .map(decode)
    .transpose()
}

/// The team's snapshots, newest first, after `after` (a cursor: the `(created_at, name)` of
/// the last one of the previous page).
pub(super) fn list(
    conn: &mut Connection,
    team: &TeamId,
    query: &SnapshotQuery,
) -> Result<Vec<SnapshotRecord>, StoreError> {
    let (after_ms, after_name) = match &query.after {
        Some((at, name)) => (to_ms(*at), name.as_str().to_string()),
        None => (i64::MAX, String::new()),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE team_id = ?1 \
         AND (?2 IS NULL OR sandbox_id = ?2) AND (?3 IS NULL OR name = ?3) \
         AND (created_at < ?4 OR (created_at = ?4 AND name > ?5)) \
         ORDER BY created_at DESC, name ASC LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![
            team.as_str(),
            query.sandbox_id.as_ref().map(SandboxId::as_str),
            query.name.as_ref().map(TemplateName::as_str),
            after_ms,
            after_name,
            query.limit,
        ],
        row,
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode(r?)?);
    }
    Ok(out)
}

/// Forgets a snapshot; `false` if it was not there.
pub(super) fn delete(conn: &mut Connection, name: &TemplateName) -> Result<bool, StoreError> {
    Ok(exec(
        conn,
        "DELETE FROM snapshots WHERE name = ?1",
        [name.as_str()],
    )? == 1)
}
