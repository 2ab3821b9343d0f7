//! The history of the cluster's node events in SQLite (table `node_events`): every
//! [`RegistryEvent`] the control plane's registry published (`node.joined`, `node.left`,
//! `node.unhealthy`, `node.status_changed`), newest first for `GET /nodes/events`, pruned after
//! [`crate::events::RETENTION`] by the recorder (`cluster::history`).
//!
//! `seq` is `AUTOINCREMENT`, so a number is never reused after pruning. Times are Unix
//! milliseconds; kinds and statuses are their wire words.

use chrono::{DateTime, Utc};
use paddock_placement::NodeStatus;
use rusqlite::{params, Connection, Row};

use super::{exec, from_ms, to_ms};
use crate::cluster::{RegistryEvent, RegistryEventKind};
use crate::store::{NodeEventQuery, NodeEventRecord, StoreError};

/// The schema of the node events migration.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE node_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    type      TEXT NOT NULL,
    node_id   TEXT NOT NULL,
    status    TEXT NOT NULL,
    previous  TEXT,
    ts        INTEGER NOT NULL
);
CREATE INDEX node_events_node_seq ON node_events(node_id, seq);
CREATE INDEX node_events_ts ON node_events(ts);
"#;

/// Every status a node can show, to read the stored words back.
const STATUSES: [NodeStatus; 5] = [
    NodeStatus::Ready,
    NodeStatus::Draining,
    NodeStatus::Connecting,
    NodeStatus::Unhealthy,
    NodeStatus::Standby,
];

fn status_named(raw: String, column: &'static str) -> Result<NodeStatus, StoreError> {
    STATUSES
        .into_iter()
        .find(|s| s.as_str() == raw)
        .ok_or(StoreError::Corrupt { column, value: raw })
}

type Raw = (i64, String, String, String, Option<String>, i64);

fn row(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode((seq, kind, node_id, status, previous, ts): Raw) -> Result<NodeEventRecord, StoreError> {
    let kind = RegistryEventKind::parse(&kind).ok_or(StoreError::Corrupt {
        column: "node_events.type",
        value: kind.clone(),
    })?;
    Ok(NodeEventRecord {
        seq,
        event: RegistryEvent {
            kind,
            node_id,
            status: status_named(status, "node_events.status")?,
            previous: previous
                .map(|p| status_named(p, "node_events.previous"))
                .transpose()?,
            at: from_ms(ts, "node_events.ts")?,
        },
    })
}

/// Appends one event.
pub(super) fn insert(conn: &mut Connection, e: &RegistryEvent) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO node_events (type, node_id, status, previous, ts) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            e.kind.as_str(),
            e.node_id,
            e.status.as_str(),
            e.previous.map(NodeStatus::as_str),
            to_ms(e.at),
        ],
    )?;
    Ok(())
}

/// A page of the history, newest first.
pub(super) fn list(
    conn: &mut Connection,
    q: &NodeEventQuery,
) -> Result<Vec<NodeEventRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, type, node_id, status, previous, ts FROM node_events \
         WHERE (?1 IS NULL OR node_id = ?1) AND (?2 IS NULL OR type = ?2) \
         ORDER BY seq DESC LIMIT ?3 OFFSET ?4",
    )?;
    let rows = stmt.query_map(
        params![
            q.node_id.as_deref(),
            q.kind.map(RegistryEventKind::as_str),
            i64::try_from(q.limit).unwrap_or(i64::MAX),
            i64::try_from(q.offset).unwrap_or(i64::MAX),
        ],
        row,
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode(r?)?);
    }
    Ok(out)
}

/// Deletes the events before `before`; returns how many.
pub(super) fn prune(conn: &mut Connection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let n = exec(
        conn,
        "DELETE FROM node_events WHERE ts < ?1",
        [to_ms(before)],
    )?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    fn event(kind: RegistryEventKind, node: &str, at_ms: i64) -> RegistryEvent {
        RegistryEvent {
            kind,
            node_id: node.into(),
            status: NodeStatus::Unhealthy,
            previous: (kind != RegistryEventKind::Joined).then_some(NodeStatus::Ready),
            at: from_ms(at_ms, "t").expect("time"),
        }
    }

    fn query(
        node: Option<&str>,
        kind: Option<RegistryEventKind>,
        offset: u64,
        limit: u64,
    ) -> NodeEventQuery {
        NodeEventQuery {
            node_id: node.map(str::to_string),
            kind,
            offset,
            limit,
        }
    }

    #[tokio::test]
    async fn node_events_round_trip_newest_first_and_are_pruned() {
        use RegistryEventKind::{Joined, Left, Unhealthy};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let all = [
            event(Joined, "n1", 1_000),
            event(Joined, "n2", 2_000),
            event(Unhealthy, "n1", 3_000),
            event(Left, "n1", 4_000),
        ];
        for e in &all {
            store.append_node_event(e).await.expect("append");
        }
        let page = store
            .node_events(&query(None, None, 0, 10))
            .await
            .expect("list");
        let events: Vec<RegistryEvent> = page.iter().map(|r| r.event.clone()).collect();
        let newest_first: Vec<RegistryEvent> = all.iter().rev().cloned().collect();
        assert_eq!(events, newest_first);
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq));
        assert_eq!(page[3].event.previous, None);

        let n1 = store
            .node_events(&query(Some("n1"), None, 1, 10))
            .await
            .expect("list");
        let kinds: Vec<RegistryEventKind> = n1.iter().map(|r| r.event.kind).collect();
        assert_eq!(kinds, [Unhealthy, Joined]);
        let joins = store
            .node_events(&query(None, Some(Joined), 0, 1))
            .await
            .expect("list");
        assert_eq!(joins.len(), 1);
        assert_eq!(joins[0].event.node_id, "n2");

        let before = from_ms(3_000, "t").expect("time");
        assert_eq!(store.prune_node_events(before).await.expect("prune"), 2);
        let left = store
            .node_events(&query(None, None, 0, 10))
            .await
            .expect("list");
        assert_eq!(left.len(), 2);
        // Numbers are not reused after pruning.
        store
            .append_node_event(&event(Joined, "n3", 5_000))
            .await
            .expect("append");
        let newest = store
            .node_events(&query(None, None, 0, 1))
            .await
            .expect("list");
        assert!(newest[0].seq > page[0].seq);
    }
}
