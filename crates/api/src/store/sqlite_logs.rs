//! The control plane's own sandbox log entries in SQLite (table `sandbox_logs`, migration 3):
//! lifecycle records written by the control plane only, never by a sandbox. Rows belong to their
//! sandbox record (`ON DELETE CASCADE`), so they are kept exactly as long as the record is.

use std::collections::BTreeMap;

use paddock_domain::SandboxId;
use paddock_node_contract::logs::{LogEntry, LogLevel};
use rusqlite::{params, Connection};

use super::{exec, from_ms, to_ms};
use crate::store::StoreError;

/// The schema of migration 3.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE sandbox_logs (
    seq         INTEGER PRIMARY KEY,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    ts          INTEGER NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL,
    fields      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sandbox_logs_sandbox_ts ON sandbox_logs(sandbox_id, ts, seq);
"#;

/// Most entries read back for one sandbox (the newest ones).
pub(super) const MAX_READ: i64 = 10_000;

/// Appends one entry.
pub(super) fn append(
    conn: &Connection,
    id: &SandboxId,
    entry: &LogEntry,
) -> Result<(), StoreError> {
    let fields = serde_json::to_string(&entry.fields)?;
    exec(
        conn,
        "INSERT INTO sandbox_logs (sandbox_id, ts, level, message, fields) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.as_str(),
            to_ms(entry.timestamp),
            entry.level.as_str(),
            entry.message,
            fields
        ],
    )?;
    Ok(())
}

/// The newest [`MAX_READ`] entries of a sandbox, oldest first (ties in insertion order).
pub(super) fn read(conn: &mut Connection, id: &SandboxId) -> Result<Vec<LogEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, level, message, fields FROM \
         (SELECT seq, ts, level, message, fields FROM sandbox_logs WHERE sandbox_id = ?1 \
          ORDER BY ts DESC, seq DESC LIMIT ?2) \
         ORDER BY ts, seq",
    )?;
    let rows = stmt.query_map(params![id.as_str(), MAX_READ], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (ts, level, message, fields) = row?;
        let level = LogLevel::parse(&level).ok_or(StoreError::Corrupt {
            column: "sandbox_logs.level",
            value: level,
        })?;
        let fields: BTreeMap<String, String> = serde_json::from_str(&fields)?;
        out.push(LogEntry {
            timestamp: from_ms(ts, "sandbox_logs.ts")?,
            level,
            message,
            fields,
        });
    }
    Ok(out)
}
