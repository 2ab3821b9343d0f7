//! Template builds in SQLite (migration 6): `built_templates` (which team owns each template
//! name it builds), `template_builds` (one row per build: status, tags, resources, failure
//! reason as JSON) and `build_logs` (each build's log lines, numbered from 0 in arrival order).
//! Deleting a template deletes its builds and their logs (`ON DELETE CASCADE`). The files are
//! the node's; these tables are what the build API answers from and what makes a built
//! template private to its team.

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, TemplateName};
use paddock_node_contract::build::{BuildLog, LogLevel};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{exec, from_ms, now_ms, query_one, to_ms};
use crate::store::{
    BuildClaim, BuildId, BuildLogQuery, BuildReason, BuildRecord, BuildStatus, StoreError, TeamId,
    TemplateDeletion, TemplateRecord,
};

/// The schema of migration 6.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE built_templates (
    name        TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(id),
    created_at  INTEGER NOT NULL
);
CREATE INDEX built_templates_team ON built_templates(team_id, name);
CREATE TABLE template_builds (
    id           TEXT PRIMARY KEY,
    template     TEXT NOT NULL REFERENCES built_templates(name) ON DELETE CASCADE,
    team_id      TEXT NOT NULL,
    status       TEXT NOT NULL,
    tags         TEXT NOT NULL DEFAULT '[]',
    cpu_count    INTEGER NOT NULL,
    memory_mb    INTEGER NOT NULL,
    disk_mb      INTEGER NOT NULL,
    pids_max     INTEGER NOT NULL,
    reason       TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX template_builds_template ON template_builds(template, created_at);
CREATE INDEX template_builds_status ON template_builds(status);
CREATE TABLE build_logs (
    build_id  TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    level     TEXT NOT NULL,
    step      TEXT NOT NULL,
    message   TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;
"#;

const BUILD_COLUMNS: &str = "id, template, team_id, status, tags, cpu_count, memory_mb, \
    disk_mb, pids_max, reason, created_at, updated_at, finished_at";

fn corrupt(column: &'static str, value: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        column,
        value: value.into(),
    }
}

fn parse_level(raw: &str) -> Option<LogLevel> {
    Some(match raw {
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        _ => return None,
    })
}

const LEVELS: [LogLevel; 4] = [
    LogLevel::Debug,
    LogLevel::Info,
    LogLevel::Warn,
    LogLevel::Error,
];

/// Raw column values of one build row, decoded after the statement is done.
struct RawBuild {
    id: String,
    template: String,
    team_id: String,
    status: String,
    tags: String,
    resources: [i64; 4],
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

impl RawBuild {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawBuild {
            id: r.get(0)?,
            template: r.get(1)?,
            team_id: r.get(2)?,
            status: r.get(3)?,
            tags: r.get(4)?,
            resources: [r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
            reason: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            finished_at: r.get(12)?,
        })
    }

    fn decode(self) -> Result<BuildRecord, StoreError> {
        let [cpu, mem, disk, pids] = self.resources;
        let num = |column: &'static str, v: i64| {
            u64::try_from(v).map_err(|_| corrupt(column, v.to_string()))
        };
        Ok(BuildRecord {
            id: BuildId::parse(&self.id).ok_or_else(|| corrupt("template_builds.id", &*self.id))?,
            template: TemplateName::parse(&self.template)
                .map_err(|_| corrupt("template_builds.template", &*self.template))?,
            team_id: TeamId::from_stored(self.team_id),
            status: BuildStatus::parse(&self.status)
                .ok_or_else(|| corrupt("template_builds.status", &*self.status))?,
            tags: serde_json::from_str(&self.tags)?,
            resources: Resources {
                cpu_count: u32::try_from(cpu)
                    .map_err(|_| corrupt("template_builds.cpu_count", cpu.to_string()))?,
                memory_mb: num("template_builds.memory_mb", mem)?,
                disk_mb: num("template_builds.disk_mb", disk)?,
                pids_max: num("template_builds.pids_max", pids)?,
            },
            reason: self
                .reason
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            created_at: from_ms(self.created_at, "template_builds.created_at")?,
            updated_at: from_ms(self.updated_at, "template_builds.updated_at")?,
            finished_at: self
                .finished_at
                .map(|ms| from_ms(ms, "template_builds.finished_at"))
                .transpose()?,
        })
    }
}

fn query_builds(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<BuildRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(params_from_iter(values), RawBuild::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(RawBuild::decode).collect()
}

fn template_row(r: &Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn decode_template(raw: (String, String, i64)) -> Result<TemplateRecord, StoreError> {
    let (name, team, created) = raw;
    Ok(TemplateRecord {
        name: TemplateName::parse(&name).map_err(|_| corrupt("built_templates.name", &*name))?,
        team_id: TeamId::from_stored(team),
        created_at: from_ms(created, "built_templates.created_at")?,
    })
}

fn reason_json(reason: Option<&BuildReason>) -> Result<Option<String>, StoreError> {
    Ok(reason.map(serde_json::to_string).transpose()?)
}

/// See [`crate::Store::request_build`].
pub(super) fn request(
    conn: &mut Connection,
    b: &BuildRecord,
    abandoned_before: DateTime<Utc>,
) -> Result<BuildClaim, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let owner: Option<String> = query_one(
        &tx,
        "SELECT team_id FROM built_templates WHERE name = ?1",
        [b.template.as_str()],
        |r| r.get(0),
    )
    .optional()?;
    if owner.as_deref().is_some_and(|o| o != b.team_id.as_str()) {
        return Ok(BuildClaim::OwnedByOther);
    }
    let abandoned = BuildReason {
        message: "the build was never started".into(),
        step: None,
        log_entries: Vec::new(),
    };
    let now = now_ms();
    exec(
        &tx,
        "UPDATE template_builds SET status = 'error', reason = ?1, updated_at = ?2, \
         finished_at = ?2 WHERE template = ?3 AND status = 'waiting' AND created_at < ?4",
        params![
            serde_json::to_string(&abandoned)?,
            now,
            b.template.as_str(),
            to_ms(abandoned_before)
        ],
    )?;
    // As in E2B, builds of one template conflict only when they share a tag (each build is
    // its own hidden template; its tags are pointed at it when it ends).
    let in_flight: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT tags FROM template_builds WHERE template = ?1 \
             AND status IN ('waiting', 'building')",
        )?;
        let rows = stmt
            .query_map([b.template.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        rows
    };
    for raw in in_flight {
        let tags: Vec<String> = serde_json::from_str(&raw)?;
        if tags.iter().any(|t| b.tags.contains(t)) {
            return Ok(BuildClaim::InProgress);
        }
    }
    exec(
        &tx,
        "INSERT OR IGNORE INTO built_templates (name, team_id, created_at) VALUES (?1, ?2, ?3)",
        params![b.template.as_str(), b.team_id.as_str(), to_ms(b.created_at)],
    )?;
    exec(
        &tx,
        &format!(
            "INSERT INTO template_builds ({BUILD_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            b.id.as_str(),
            b.template.as_str(),
            b.team_id.as_str(),
            b.status.as_str(),
            serde_json::to_string(&b.tags)?,
            i64::from(b.resources.cpu_count),
            i64::try_from(b.resources.memory_mb).unwrap_or(i64::MAX),
            i64::try_from(b.resources.disk_mb).unwrap_or(i64::MAX),
            i64::try_from(b.resources.pids_max).unwrap_or(i64::MAX),
            reason_json(b.reason.as_ref())?,
            to_ms(b.created_at),
            to_ms(b.updated_at),
            b.finished_at.map(to_ms),
        ],
    )?;
    tx.commit()?;
    Ok(BuildClaim::Created)
}

/// One template record by name.
pub(super) fn template(
    conn: &mut Connection,
    name: &TemplateName,
) -> Result<Option<TemplateRecord>, StoreError> {
    query_one(
        conn,
        "SELECT name, team_id, created_at FROM built_templates WHERE name = ?1",
        [name.as_str()],
        template_row,
    )
    .optional()?
    .map(decode_template)
    .transpose()
}

/// A team's template records, by name.
pub(super) fn team_templates(
    conn: &mut Connection,
    team: &TeamId,
) -> Result<Vec<TemplateRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, team_id, created_at FROM built_templates WHERE team_id = ?1 ORDER BY name",
    )?;
    let raws = stmt
        .query_map([team.as_str()], template_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(decode_template).collect()
}

/// See [`crate::Store::delete_template_record`].
pub(super) fn delete_template(
    conn: &mut Connection,
    team: &TeamId,
    name: &TemplateName,
) -> Result<TemplateDeletion, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let owned: bool = query_one(
        &tx,
        "SELECT EXISTS (SELECT 1 FROM built_templates WHERE name = ?1 AND team_id = ?2)",
        params![name.as_str(), team.as_str()],
        |r| r.get(0),
    )?;
    if !owned {
        return Ok(TemplateDeletion::NotFound);
    }
    let building: bool = query_one(
        &tx,
        "SELECT EXISTS (SELECT 1 FROM template_builds WHERE template = ?1 AND status = 'building')",
        [name.as_str()],
        |r| r.get(0),
    )?;
    if building {
        return Ok(TemplateDeletion::Building);
    }
    exec(
        &tx,
        "DELETE FROM built_templates WHERE name = ?1",
        [name.as_str()],
    )?;
    tx.commit()?;
    Ok(TemplateDeletion::Deleted)
}

/// One build by id.
pub(super) fn build(
    conn: &mut Connection,
    id: &BuildId,
) -> Result<Option<BuildRecord>, StoreError> {
    let sql = format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE id = ?1");
    Ok(
        query_builds(conn, &sql, vec![Value::Text(id.as_str().to_string())])?
            .into_iter()
            .next(),
    )
}

/// A template's builds, newest first.
pub(super) fn builds_of(
    conn: &mut Connection,
    name: &TemplateName,
) -> Result<Vec<BuildRecord>, StoreError> {
    let sql = format!(
        "SELECT {BUILD_COLUMNS} FROM template_builds WHERE template = ?1 \
         ORDER BY created_at DESC, rowid DESC"
    );
    query_builds(conn, &sql, vec![Value::Text(name.as_str().to_string())])
}

/// Compare-and-set of a build's status.
pub(super) fn set_status(
    conn: &mut Connection,
    id: &BuildId,
    from: BuildStatus,
    to: BuildStatus,
    reason: Option<&BuildReason>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let finished = matches!(to, BuildStatus::Ready | BuildStatus::Error).then_some(now);
    let n = exec(
        conn,
        "UPDATE template_builds SET status = ?1, reason = COALESCE(?2, reason), updated_at = ?3, \
         finished_at = COALESCE(?4, finished_at) WHERE id = ?5 AND status = ?6",
        params![
            to.as_str(),
            reason_json(reason)?,
            now,
            finished,
            id.as_str(),
            from.as_str()
        ],
    )?;
    Ok(n == 1)
}

/// Appends lines after the build's last one, in one transaction. Lines of a build that no
/// longer exists (its template was deleted) are dropped.
pub(super) fn append_logs(
    conn: &mut Connection,
    id: &BuildId,
    logs: &[BuildLog],
) -> Result<(), StoreError> {
    if logs.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let exists: bool = query_one(
        &tx,
        "SELECT EXISTS (SELECT 1 FROM template_builds WHERE id = ?1)",
        [id.as_str()],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    let next: i64 = query_one(
        &tx,
        "SELECT COALESCE(MAX(seq) + 1, 0) FROM build_logs WHERE build_id = ?1",
        [id.as_str()],
        |r| r.get(0),
    )?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO build_logs (build_id, seq, ts, level, step, message) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, log) in logs.iter().enumerate() {
            stmt.execute(params![
                id.as_str(),
                next + i as i64,
                to_ms(log.timestamp),
                log.level.as_str(),
                log.step,
                log.message
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Builds the statement and parameters of a log page (kept apart for unit testing).
fn logs_sql(id: &BuildId, q: &BuildLogQuery) -> (String, Vec<Value>) {
    let mut values = vec![Value::Text(id.as_str().to_string())];
    let mut sql =
        String::from("SELECT ts, level, step, message FROM build_logs WHERE build_id = ?");
    if let Some(min) = q.min_level {
        let wanted: Vec<&str> = LEVELS
            .iter()
            .filter(|l| **l >= min)
            .map(|l| {
                values.push(Value::Text(l.as_str().to_string()));
                "?"
            })
            .collect();
        sql.push_str(&format!(" AND level IN ({})", wanted.join(", ")));
    }
    if let Some(cursor) = q.cursor_ms {
        sql.push_str(if q.backward {
            " AND ts <= ?"
        } else {
            " AND ts >= ?"
        });
        values.push(Value::Integer(cursor));
    }
    sql.push_str(if q.backward {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq ASC"
    });
    sql.push_str(" LIMIT ? OFFSET ?");
    values.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    values.push(Value::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    (sql, values)
}

/// A page of a build's log.
pub(super) fn logs(
    conn: &mut Connection,
    id: &BuildId,
    q: &BuildLogQuery,
) -> Result<Vec<BuildLog>, StoreError> {
    let (sql, values) = logs_sql(id, q);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(values), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(ts, level, step, message)| {
            Ok(BuildLog {
                timestamp: from_ms(ts, "build_logs.ts")?,
                level: parse_level(&level).ok_or_else(|| corrupt("build_logs.level", level))?,
                step,
                message,
            })
        })
        .collect()
}

/// Marks every unfinished build `error`.
pub(super) fn fail_unfinished(
    conn: &mut Connection,
    reason: &BuildReason,
) -> Result<u64, StoreError> {
    let now = now_ms();
    let n = exec(
        conn,
        "UPDATE template_builds SET status = 'error', reason = ?1, updated_at = ?2, \
         finished_at = ?2 WHERE status IN ('waiting', 'building')",
        params![serde_json::to_string(reason)?, now],
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::*;
    use crate::store::Store;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        (dir, store)
    }

    fn build(team: &TeamId, name: &str, created_ms: i64) -> BuildRecord {
        let at = from_ms(created_ms, "t").expect("time");
        BuildRecord {
            id: BuildId::generate(),
            template: TemplateName::parse(name).expect("name"),
            team_id: team.clone(),
            status: BuildStatus::Waiting,
            tags: vec!["default".into(), "v1".into()],
            resources: Resources {
                cpu_count: 4,
                memory_mb: 1024,
                disk_mb: 20_000,
                pids_max: 4096,
            },
            reason: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
        }
    }

    fn log(ms: i64, level: LogLevel, step: &str, message: &str) -> BuildLog {
        BuildLog {
            timestamp: from_ms(ms, "t").expect("time"),
            level,
            step: step.into(),
            message: message.into(),
        }
    }

    fn page(offset: u64, limit: u64, min_level: Option<LogLevel>) -> BuildLogQuery {
        BuildLogQuery {
            offset,
            limit,
            min_level,
            cursor_ms: None,
            backward: false,
        }
    }

    #[tokio::test]
    async fn builds_round_trip_and_claim_the_name_for_their_team() {
        let (dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let b = store.ensure_team("b").await.expect("team");
        let first = build(&a, "app", 1_700_000_000_000);
        assert_eq!(
            store
                .request_build(&first, from_ms(0, "t").expect("t"))
                .await
                .expect("request"),
            BuildClaim::Created
        );
        drop(store);
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("reopen");
        assert_eq!(
            store.build(&first.id).await.expect("read"),
            Some(first.clone())
        );
        let rec = store
            .template_record(&first.template)
            .await
            .expect("read")
            .expect("claimed");
        assert_eq!((rec.team_id, rec.created_at), (a.clone(), first.created_at));
        // Another team cannot take the name, the owner cannot start a second build meanwhile.
        let epoch = from_ms(0, "t").expect("t");
        assert_eq!(
            store
                .request_build(&build(&b, "app", 1_700_000_000_001), epoch)
                .await
                .expect("request"),
            BuildClaim::OwnedByOther
        );
        assert_eq!(
            store
                .request_build(&build(&a, "app", 1_700_000_000_002), epoch)
                .await
                .expect("request"),
            BuildClaim::InProgress
        );
        assert_eq!(
            store.team_templates(&a).await.expect("list").len(),
            1,
            "one record per name"
        );
        assert!(store.team_templates(&b).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn only_builds_sharing_a_tag_are_in_progress_for_each_other() {
        let (_dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let epoch = from_ms(0, "t").expect("t");
        let tagged = |tags: &[&str], ms| BuildRecord {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..build(&a, "app", ms)
        };
        let claim = |b: BuildRecord| {
            let store = &store;
            async move { store.request_build(&b, epoch).await.expect("request") }
        };
        assert_eq!(claim(tagged(&["v1"], 1_000)).await, BuildClaim::Created);
        // Another tag of the same template goes ahead while v1 waits (E2B builds them side by
        // side); a build that shares a tag with a waiting or building one does not.
        assert_eq!(
            claim(tagged(&["v2", "x"], 1_001)).await,
            BuildClaim::Created
        );
        assert_eq!(claim(tagged(&["v1"], 1_002)).await, BuildClaim::InProgress);
        assert_eq!(
            claim(tagged(&["default", "x"], 1_003)).await,
            BuildClaim::InProgress
        );
        assert_eq!(
            claim(tagged(&["default"], 1_004)).await,
            BuildClaim::Created
        );
        assert_eq!(
            claim(tagged(&["default"], 1_005)).await,
            BuildClaim::InProgress
        );
    }

    #[tokio::test]
    async fn statuses_are_compare_and_set_and_abandoned_waits_do_not_block() {
        let (_dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let old = build(&a, "app", 1_000);
        let epoch = from_ms(0, "t").expect("t");
        store.request_build(&old, epoch).await.expect("request");
        // Requested long ago and never started: a new request marks it error and goes ahead.
        let new = build(&a, "app", 5_000);
        assert_eq!(
            store
                .request_build(&new, from_ms(2_000, "t").expect("t"))
                .await
                .expect("request"),
            BuildClaim::Created
        );
        let old = store.build(&old.id).await.expect("read").expect("kept");
        assert_eq!(old.status, BuildStatus::Error);
        assert!(old.finished_at.is_some());
        assert_eq!(
            old.reason.expect("reason").message,
            "the build was never started"
        );

        let (w, b, r) = (
            BuildStatus::Waiting,
            BuildStatus::Building,
            BuildStatus::Ready,
        );
        assert!(store
            .set_build_status(&new.id, w, b, None)
            .await
            .expect("cas"));
        assert!(!store
            .set_build_status(&new.id, w, b, None)
            .await
            .expect("cas"));
        assert!(store
            .set_build_status(&new.id, b, r, None)
            .await
            .expect("cas"));
        let done = store.build(&new.id).await.expect("read").expect("kept");
        assert_eq!(done.status, BuildStatus::Ready);
        assert!(done.finished_at.is_some() && done.reason.is_none());
        let all = store.builds_of(&new.template).await.expect("list");
        assert_eq!(
            all.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
            [new.id.clone(), old.id.clone()],
            "newest first"
        );
    }

    #[tokio::test]
    async fn log_pages_filter_by_level_before_the_offset() {
        let (_dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let rec = build(&a, "app", 1_000);
        store
            .request_build(&rec, from_ms(0, "t").expect("t"))
            .await
            .expect("request");
        let levels = [LogLevel::Debug, LogLevel::Info, LogLevel::Warn];
        let lines: Vec<BuildLog> = (0..30)
            .map(|i| log(1_000 + i, levels[i as usize % 3], "1", &format!("line {i}")))
            .collect();
        store
            .append_build_logs(&rec.id, &lines[..10])
            .await
            .expect("append");
        store
            .append_build_logs(&rec.id, &lines[10..])
            .await
            .expect("append");
        let all = store
            .build_logs(&rec.id, &page(0, 100, None))
            .await
            .expect("read");
        assert_eq!(all, lines, "every line, in order, across batches");
        let p = store
            .build_logs(&rec.id, &page(25, 10, None))
            .await
            .expect("read");
        assert_eq!(p, lines[25..]);
        // Offsets count the lines that pass the filter (the SDK advances by what it got).
        let warn = store
            .build_logs(&rec.id, &page(2, 3, Some(LogLevel::Warn)))
            .await
            .expect("read");
        let msgs: Vec<&str> = warn.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(msgs, ["line 8", "line 11", "line 14"]);
        let info_up = store
            .build_logs(&rec.id, &page(0, 100, Some(LogLevel::Info)))
            .await
            .expect("read");
        assert_eq!(info_up.len(), 20);
        // Cursors: inclusive, forward oldest first, backward newest first.
        let fwd = BuildLogQuery {
            cursor_ms: Some(1_027),
            ..page(0, 100, None)
        };
        let msgs: Vec<String> = store
            .build_logs(&rec.id, &fwd)
            .await
            .expect("read")
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(msgs, ["line 27", "line 28", "line 29"]);
        let back = BuildLogQuery {
            cursor_ms: Some(1_001),
            backward: true,
            ..page(0, 100, None)
        };
        let msgs: Vec<String> = store
            .build_logs(&rec.id, &back)
            .await
            .expect("read")
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(msgs, ["line 1", "line 0"]);
    }

    #[tokio::test]
    async fn deleting_a_template_takes_its_builds_and_logs_unless_one_runs() {
        let (_dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let b = store.ensure_team("b").await.expect("team");
        let rec = build(&a, "app", 1_000);
        store
            .request_build(&rec, from_ms(0, "t").expect("t"))
            .await
            .expect("request");
        store
            .append_build_logs(&rec.id, &[log(1, LogLevel::Info, "base", "hi")])
            .await
            .expect("append");
        assert_eq!(
            store
                .delete_template_record(&b, &rec.template)
                .await
                .expect("delete"),
            TemplateDeletion::NotFound,
            "another team's"
        );
        store
            .set_build_status(&rec.id, BuildStatus::Waiting, BuildStatus::Building, None)
            .await
            .expect("cas");
        assert_eq!(
            store
                .delete_template_record(&a, &rec.template)
                .await
                .expect("delete"),
            TemplateDeletion::Building
        );
        let reason = BuildReason {
            message: "boom".into(),
            step: Some("2".into()),
            log_entries: vec![log(5, LogLevel::Error, "2", "exit 1")],
        };
        assert!(store
            .set_build_status(
                &rec.id,
                BuildStatus::Building,
                BuildStatus::Error,
                Some(&reason)
            )
            .await
            .expect("cas"));
        assert_eq!(
            store
                .build(&rec.id)
                .await
                .expect("read")
                .expect("kept")
                .reason,
            Some(reason)
        );
        assert_eq!(
            store
                .delete_template_record(&a, &rec.template)
                .await
                .expect("delete"),
            TemplateDeletion::Deleted
        );
        assert_eq!(store.build(&rec.id).await.expect("read"), None);
        assert_eq!(
            store.template_record(&rec.template).await.expect("read"),
            None
        );
        assert!(store
            .build_logs(&rec.id, &page(0, 100, None))
            .await
            .expect("read")
            .is_empty());
        // Lines of a deleted build are dropped, not an error.
        store
            .append_build_logs(&rec.id, &[log(9, LogLevel::Info, "3", "late")])
            .await
            .expect("append");
        assert!(store
            .build_logs(&rec.id, &page(0, 100, None))
            .await
            .expect("read")
            .is_empty());
    }

    #[tokio::test]
    async fn unfinished_builds_fail_at_startup() {
        let (_dir, store) = open();
        let a = store.ensure_team("a").await.expect("team");
        let epoch = from_ms(0, "t").expect("t");
        let waiting = build(&a, "one", 1_000);
        let building = build(&a, "two", 1_000);
        let ready = build(&a, "three", 1_000);
        for b in [&waiting, &building, &ready] {
            store.request_build(b, epoch).await.expect("request");
        }
        store
            .set_build_status(
                &building.id,
                BuildStatus::Waiting,
                BuildStatus::Building,
                None,
            )
            .await
            .expect("cas");
        store
            .set_build_status(&ready.id, BuildStatus::Waiting, BuildStatus::Ready, None)
            .await
            .expect("cas");
        let reason = BuildReason {
            message: "stopped".into(),
            step: None,
            log_entries: Vec::new(),
        };
        assert_eq!(
            store.fail_unfinished_builds(&reason).await.expect("fail"),
            2
        );
        for (b, want) in [
            (&waiting, BuildStatus::Error),
            (&building, BuildStatus::Error),
            (&ready, BuildStatus::Ready),
        ] {
            let got = store.build(&b.id).await.expect("read").expect("kept");
            assert_eq!(got.status, want, "{}", b.template);
        }
    }

    #[test]
    fn build_ids_are_v4_uuids_and_parse_back() {
        let id = BuildId::generate();
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(&id.as_str()[14..15], "4");
        assert!("89ab".contains(&id.as_str()[19..20]));
        assert_eq!(BuildId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(
            BuildId::parse(&id.as_str().to_ascii_uppercase()),
            Some(id.clone())
        );
        assert_ne!(BuildId::generate(), id);
        for bad in ["", "x", &id.as_str()[1..], &id.as_str().replace('-', "_")] {
            assert_eq!(BuildId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn log_sql_filters_levels_from_the_minimum() {
        let id = BuildId::generate();
        let (sql, values) = logs_sql(&id, &page(5, 7, Some(LogLevel::Warn)));
        assert!(sql.contains("level IN (?, ?)"), "{sql}");
        assert_eq!(
            values[1..3],
            [Value::Text("warn".into()), Value::Text("error".into())]
        );
        assert_eq!(values[3..], [Value::Integer(7), Value::Integer(5)]);
    }
}
