//! The SQLite [`Store`]: one connection in WAL mode (`synchronous=NORMAL`, busy timeout) behind a
//! mutex, used from async code through `spawn_blocking` (lookups by key and one-row writes of
//! the create path run at once when the connection is free); every call is one short critical
//! section. The schema is migrated forward by `PRAGMA user_version`. Times are stored as Unix
//! milliseconds, metadata as a JSON object (filtered with `json_each`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use paddock_domain::{Resources, SandboxId, SandboxState, TemplateName};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{
    ListQuery, Order, SandboxLifecycle, SandboxRecord, SentToNode, Store, StoreError, TeamId,
};

/// Schema migrations; `user_version` is the number of entries applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE teams (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(id),
    created_at  INTEGER NOT NULL
);
CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY,
    team_id      TEXT NOT NULL REFERENCES teams(id),
    template     TEXT NOT NULL,
    alias        TEXT,
    state        TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    access_token TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    end_at       INTEGER NOT NULL,
    cpu_count    INTEGER NOT NULL,
    memory_mb    INTEGER NOT NULL,
    disk_mb      INTEGER NOT NULL,
    pids_max     INTEGER NOT NULL,
    client_id    TEXT NOT NULL,
    end_reason   TEXT,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX sandboxes_team_state_started ON sandboxes(team_id, state, started_at);
CREATE INDEX sandboxes_state_end ON sandboxes(state, end_at);
CREATE TABLE idempotency_keys (
    team_id     TEXT NOT NULL,
    key         TEXT NOT NULL,
    sandbox_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (team_id, key)
);
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN auto_pause INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
"#,
    logs::MIGRATION,
    events::MIGRATION,
    snapshots::MIGRATION,
    builds::MIGRATION,
    tags::MIGRATION,
    create::MIGRATION,
    node_events::MIGRATION,
];

const SANDBOX_COLUMNS: &str = "id, team_id, template, alias, state, metadata, access_token, \
    started_at, end_at, cpu_count, memory_mb, disk_mb, pids_max, client_id, end_reason";

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Prepared statements kept per connection (more than the store has).
const STATEMENT_CACHE: usize = 256;

/// `Connection::execute` through the connection's statement cache.
pub(super) fn exec<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the connection's statement cache.
pub(super) fn query_one<P, T, F>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
) -> rusqlite::Result<T>
where
    P: rusqlite::Params,
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare_cached(sql)?.query_row(params, f)
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement goes through the cache (`exec`, `prepare_cached`): parsing SQL was a
        // visible part of a create's CPU time.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The database file inside a data directory: `<data_dir>/paddock.db`.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("paddock.db")
    }

    /// Runs `f` with the connection: at once on this thread when the connection is free,
    /// else on the blocking pool. Only for what the create path and every request do and
    /// what takes microseconds (a lookup by key, a one-row write): the trip to the blocking
    /// pool costs more than the query itself (0.1–0.5 ms on the 2-CPU hosts).
    async fn with_conn_quick<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let started = std::time::Instant::now();
        // The guard must be gone before the await below (it is not `Send`).
        let f = match self.conn.try_lock() {
            Ok(mut guard) => return timed::<F, T>(started, "inline", f(&mut guard)),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                return timed::<F, T>(started, "inline", f(&mut poisoned.into_inner()))
            }
            Err(std::sync::TryLockError::WouldBlock) => f,
        };
        self.with_conn(f).await
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent (every write is
            // its own statement or transaction), so a poisoned lock is still usable.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await?;
        timed::<F, T>(started, "pool", result)
    }
}

/// Records a store call that started at `started` in `paddock_store_seconds`, under the name of
/// the store method whose closure `F` is, and passes its result on.
fn timed<F, T>(
    started: std::time::Instant,
    access: &str,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    paddock_telemetry::STORE_CALL.observe(
        &[operation_name(std::any::type_name::<F>()), access],
        started.elapsed(),
    );
    result
}

/// The store method a closure's type name
/// (`<...SqliteStore as ...Store>::sandbox<'_, '_>::{{closure}}::{{closure}}`) sits in: the last
/// path segment before the first `{{closure}}`, without its parameters; `other` for a name of
/// another shape
/// (type names are not a stable format, so a change costs labels, never correctness).
fn operation_name(type_name: &'static str) -> &'static str {
    let Some(end) = type_name.find("::{{closure}}") else {
        return "other";
    };
    let path = &type_name[..end];
    // `...>::ensure_team<'_, '_>`: the method, without its (lifetime) parameters.
    let last = path.rsplit("::").next().unwrap_or("other");
    let name = last.split('<').next().unwrap_or(last);
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        name
    } else {
        "other"
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::debug!(version = index + 1, "applied database migration");
    }
    Ok(())
}

fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64, column: &'static str) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or(StoreError::Corrupt {
            column,
            value: ms.to_string(),
        })
}

fn now_ms() -> i64 {
    to_ms(Utc::now())
}

/// Raw column values of one sandbox row, decoded after the statement is done.
struct RawSandbox {
    id: String,
    team_id: String,
    template: String,
    alias: Option<String>,
    state: String,
    metadata: String,
    access_token: String,
    started_at: i64,
    end_at: i64,
    cpu_count: i64,
    memory_mb: i64,
    disk_mb: i64,
    pids_max: i64,
    client_id: String,
    end_reason: Option<String>,
}

impl RawSandbox {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawSandbox {
            id: row.get(0)?,
            team_id: row.get(1)?,
            template: row.get(2)?,
            alias: row.get(3)?,
            state: row.get(4)?,
            metadata: row.get(5)?,
            access_token: row.get(6)?,
            started_at: row.get(7)?,
            end_at: row.get(8)?,
            cpu_count: row.get(9)?,
            memory_mb: row.get(10)?,
            disk_mb: row.get(11)?,
            pids_max: row.get(12)?,
            client_id: row.get(13)?,
            end_reason: row.get(14)?,
        })
    }

    fn decode(self) -> Result<SandboxRecord, StoreError> {
        let corrupt = |column: &'static str, value: String| StoreError::Corrupt { column, value };
        let id = SandboxId::parse(&self.id).map_err(|_| corrupt("id", self.id.clone()))?;
        let template = TemplateName::parse(&self.template)
            .map_err(|_| corrupt("template", self.template.clone()))?;
        let state: SandboxState = self
            .state
            .parse()
            .map_err(|_| corrupt("state", self.state.clone()))?;
        let number = |column: &'static str, v: i64| {
            u64::try_from(v).map_err(|_| corrupt(column, v.to_string()))
        };
        Ok(SandboxRecord {
            id,
            team_id: TeamId::from_stored(self.team_id),
            template,
            alias: self.alias,
            state,
            metadata: serde_json::from_str(&self.metadata)?,
            access_token: self.access_token,
            started_at: from_ms(self.started_at, "started_at")?,
            end_at: from_ms(self.end_at, "end_at")?,
            resources: Resources {
                cpu_count: u32::try_from(self.cpu_count)
                    .map_err(|_| corrupt("cpu_count", self.cpu_count.to_string()))?,
                memory_mb: number("memory_mb", self.memory_mb)?,
                disk_mb: number("disk_mb", self.disk_mb)?,
                pids_max: number("pids_max", self.pids_max)?,
            },
            client_id: self.client_id,
            end_reason: self.end_reason,
        })
    }
}

fn query_sandboxes(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<SandboxRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(params_from_iter(values), RawSandbox::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(RawSandbox::decode).collect()
}

fn state_placeholders(states: &[SandboxState], values: &mut Vec<Value>) -> String {
    let marks: Vec<&str> = states
        .iter()
        .map(|s| {
            values.push(Value::Text(s.as_str().to_string()));
            "?"
        })
        .collect();
    marks.join(", ")
}

/// Builds the listing statement and its parameters (kept apart for unit testing).
fn list_sql(q: &ListQuery) -> (String, Vec<Value>) {
    let mut values = vec![Value::Text(q.team_id.as_str().to_string())];
    let mut sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes s WHERE team_id = ?");
    if !q.states.is_empty() {
        let marks = state_placeholders(&q.states, &mut values);
        sql.push_str(&format!(" AND state IN ({marks})"));
    }
    for (key, value) in &q.metadata {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM json_each(s.metadata) j \
             WHERE j.key = ? AND j.type = 'text' AND j.value = ?)",
        );
        values.push(Value::Text(key.clone()));
        values.push(Value::Text(value.clone()));
    }
    if let Some(template) = &q.template {
        sql.push_str(" AND (template = ? OR alias = ?)");
        values.push(Value::Text(template.clone()));
        values.push(Value::Text(template.clone()));
    }
    if let Some(after) = q.started_after {
        // Inclusive, as E2B's: a sandbox started at exactly `startedAfter` (the time the API
        // reported for it, in milliseconds like the stored column) is listed.
        sql.push_str(" AND started_at >= ?");
        values.push(Value::Integer(to_ms(after)));
    }
    let cmp = match q.order {
        Order::Desc => "<",
        Order::Asc => ">",
    };
    if let Some(cursor) = &q.cursor {
        sql.push_str(&format!(
            " AND (started_at {cmp} ? OR (started_at = ? AND id > ?))"
        ));
        values.push(Value::Integer(cursor.started_at_ms));
        values.push(Value::Integer(cursor.started_at_ms));
        values.push(Value::Text(cursor.id.clone()));
    }
    let dir = match q.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    sql.push_str(&format!(" ORDER BY started_at {dir}, id ASC LIMIT ?"));
    values.push(Value::Integer(i64::from(q.limit)));
    (sql, values)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ensure_team(&self, name: &str) -> Result<TeamId, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let existing: Option<String> =
                query_one(&tx, "SELECT id FROM teams WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let id = match existing {
                Some(id) => TeamId::from_stored(id),
                None => {
                    let id = TeamId::generate();
                    exec(
                        &tx,
                        "INSERT INTO teams (id, name, created_at) VALUES (?1, ?2, ?3)",
                        params![id.as_str(), name, now_ms()],
                    )?;
                    id
                }
            };
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn add_api_key(&self, team: &TeamId, key_hash: &str) -> Result<(), StoreError> {
        let (team, key_hash) = (team.clone(), key_hash.to_string());
        self.with_conn(move |conn| {
            exec(
                conn,
                "INSERT INTO api_keys (key_hash, team_id, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key_hash) DO UPDATE SET team_id = excluded.team_id",
                params![key_hash, team.as_str(), now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_only_api_key(&self, team: &TeamId, key_hash: &str) -> Result<(), StoreError> {
        let (team, key_hash) = (team.clone(), key_hash.to_string());
        self.with_conn(move |conn| admin::set_only_api_key(conn, &team, &key_hash))
            .await
    }

    async fn team_for_key(&self, key_hash: &str) -> Result<Option<TeamId>, StoreError> {
        let key_hash = key_hash.to_string();
        self.with_conn_quick(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT team_id FROM api_keys WHERE key_hash = ?1")?;
            let team: Option<String> = stmt.query_row([&key_hash], |r| r.get(0)).optional()?;
            Ok(team.map(TeamId::from_stored))
        })
        .await
    }

    async fn insert_sandbox(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.with_conn(move |conn| create::insert_row(conn, &r))
            .await
    }

    async fn sandbox(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let id = id.as_str().to_string();
        self.with_conn_quick(move |conn| {
            let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?");
            Ok(query_sandboxes(conn, &sql, vec![Value::Text(id)])?
                .into_iter()
                .next())
        })
        .await
    }

    async fn set_state(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let id = id.as_str().to_string();
        let reason = reason.map(str::to_string);
        self.with_conn(move |conn| {
            let changed = exec(
                conn,
                "UPDATE sandboxes SET state = ?1, end_reason = COALESCE(?2, end_reason), \
                 updated_at = ?3 WHERE id = ?4 AND state = ?5",
                params![to.as_str(), reason, now_ms(), id, from.as_str()],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn set_running(
        &self,
        id: &SandboxId,
        resources: Resources,
        started_at: DateTime<Utc>,
        end_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| {
            create::set_running_row(conn, &id, resources, started_at, end_at)
        })
        .await
    }

    async fn set_end_at(
        &self,
        id: &SandboxId,
        state: SandboxState,
        end_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let id = id.as_str().to_string();
        self.with_conn(move |conn| {
            let changed = exec(
                conn,
                "UPDATE sandboxes SET end_at = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4",
                params![to_ms(end_at), now_ms(), id, state.as_str()],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn list_sandboxes(&self, query: &ListQuery) -> Result<Vec<SandboxRecord>, StoreError> {
        let (sql, values) = list_sql(query);
        self.with_conn(move |conn| query_sandboxes(conn, &sql, values))
            .await
    }

    async fn count_in_state(&self, team: &TeamId, state: SandboxState) -> Result<u64, StoreError> {
        let team = team.clone();
        self.with_conn(move |conn| {
            let n: i64 = query_one(
                conn,
                "SELECT COUNT(*) FROM sandboxes WHERE team_id = ?1 AND state = ?2",
                params![team.as_str(), state.as_str()],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn sandboxes_in_states(
        &self,
        states: &[SandboxState],
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut values = Vec::new();
        let marks = state_placeholders(states, &mut values);
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state IN ({marks}) ORDER BY started_at"
        );
        self.with_conn(move |conn| query_sandboxes(conn, &sql, values))
            .await
    }

    async fn next_end_at(&self, state: SandboxState) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with_conn(move |conn| {
            let ms: Option<i64> = query_one(
                conn,
                "SELECT MIN(end_at) FROM sandboxes WHERE state = ?1",
                [state.as_str()],
                |r| r.get(0),
            )?;
            ms.map(|ms| from_ms(ms, "end_at")).transpose()
        })
        .await
    }

    async fn ended_by(
        &self,
        state: SandboxState,
        now: DateTime<Utc>,
    ) -> Result<Vec<SandboxId>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM sandboxes WHERE state = ?1 AND end_at <= ?2 ORDER BY end_at",
            )?;
            let ids = stmt
                .query_map(params![state.as_str(), to_ms(now)], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.into_iter()
                .map(|raw| {
                    SandboxId::parse(&raw).map_err(|_| StoreError::Corrupt {
                        column: "id",
                        value: raw,
                    })
                })
                .collect()
        })
        .await
    }

    async fn prune_stopped(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with_conn(move |conn| admin::prune_stopped(conn, before))
            .await
    }

    async fn idempotent_sandbox(
        &self,
        team: &TeamId,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SandboxId>, StoreError> {
        let (team, key) = (team.clone(), key.to_string());
        self.with_conn(move |conn| {
            let raw: Option<String> = query_one(
                conn,
                "SELECT sandbox_id FROM idempotency_keys \
                     WHERE team_id = ?1 AND key = ?2 AND created_at >= ?3",
                params![team.as_str(), key, to_ms(since)],
                |r| r.get(0),
            )
            .optional()?;
            raw.map(|raw| {
                SandboxId::parse(&raw).map_err(|_| StoreError::Corrupt {
                    column: "sandbox_id",
                    value: raw,
                })
            })
            .transpose()
        })
        .await
    }

    async fn record_idempotency(
        &self,
        team: &TeamId,
        key: &str,
        sandbox: &SandboxId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (team, key, sandbox) = (team.clone(), key.to_string(), sandbox.clone());
        self.with_conn(move |conn| create::record_idempotency_row(conn, &team, &key, &sandbox, at))
            .await
    }

    async fn set_lifecycle(
        &self,
        id: &SandboxId,
        lifecycle: SandboxLifecycle,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| create::set_lifecycle_row(conn, &id, lifecycle))
            .await
    }

    async fn insert_new_sandbox(&self, new: &super::NewSandbox) -> Result<(), StoreError> {
        let new = new.clone();
        self.with_conn_quick(move |conn| create::insert_new(conn, &new))
            .await
    }

    async fn set_running_logged(
        &self,
        id: &SandboxId,
        resources: Resources,
        started_at: DateTime<Utc>,
        end_at: DateTime<Utc>,
        entry: &paddock_node_contract::logs::LogEntry,
    ) -> Result<bool, StoreError> {
        let (id, entry) = (id.clone(), entry.clone());
        self.with_conn_quick(move |conn| {
            create::set_running_logged(conn, &id, resources, started_at, end_at, &entry)
        })
        .await
    }

    async fn lifecycle(&self, id: &SandboxId) -> Result<SandboxLifecycle, StoreError> {
        let id = id.as_str().to_string();
        self.with_conn(move |conn| {
            let found = query_one(
                conn,
                "SELECT auto_pause, auto_resume, pause_to_disk FROM sandboxes WHERE id = ?1",
                [id],
                |r| {
                    Ok(SandboxLifecycle {
                        auto_pause: r.get(0)?,
                        auto_resume: r.get(1)?,
                        pause_to_disk: r.get(2)?,
                    })
                },
            )
            .optional()?;
            Ok(found.unwrap_or_default())
        })
        .await
    }

    async fn sent_to_node(&self, id: &SandboxId) -> Result<Option<SentToNode>, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| create::sent_row(conn, &id))
            .await
    }

    async fn set_pause_mode(
        &self,
        id: &SandboxId,
        mode: Option<paddock_node_contract::PauseMode>,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| {
            exec(
                conn,
                "UPDATE sandboxes SET pause_mode = ?1, updated_at = ?2 WHERE id = ?3",
                rusqlite::params![mode.map(|m| m.as_str()), now_ms(), id.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_egress(
        &self,
        id: &SandboxId,
        egress: &paddock_domain::EgressPolicy,
    ) -> Result<(), StoreError> {
        let (id, text) = (id.clone(), serde_json::to_string(egress)?);
        self.with_conn(move |conn| {
            exec(
                conn,
                "UPDATE sandboxes SET egress = ?1, updated_at = ?2 WHERE id = ?3",
                rusqlite::params![text, now_ms(), id.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn append_sandbox_log(
        &self,
        id: &SandboxId,
        entry: &paddock_node_contract::logs::LogEntry,
    ) -> Result<(), StoreError> {
        let (id, entry) = (id.clone(), entry.clone());
        self.with_conn(move |conn| logs::append(conn, &id, &entry))
            .await
    }

    async fn sandbox_logs(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<paddock_node_contract::logs::LogEntry>, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| logs::read(conn, &id)).await
    }

    async fn template_usage(
        &self,
        team: &TeamId,
    ) -> Result<std::collections::HashMap<TemplateName, (u64, DateTime<Utc>)>, StoreError> {
        let team = team.as_str().to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT template, COUNT(*), MAX(started_at) FROM sandboxes WHERE team_id = ?1 \
                 GROUP BY template",
            )?;
            let rows = stmt.query_map([team], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = std::collections::HashMap::new();
            for row in rows {
                let (raw, count, last) = row?;
                // Records name templates as they were created; skip any that no longer parse.
                let Ok(name) = TemplateName::parse(&raw) else {
                    continue;
                };
                let last = from_ms(last, "sandboxes.started_at")?;
                out.insert(name, (u64::try_from(count).unwrap_or(0), last));
            }
            Ok(out)
        })
        .await
    }

    async fn insert_snapshot(&self, rec: &super::SnapshotRecord) -> Result<bool, StoreError> {
        let rec = rec.clone();
        self.with_conn(move |conn| snapshots::insert(conn, &rec))
            .await
    }

    async fn snapshot(
        &self,
        name: &TemplateName,
    ) -> Result<Option<super::SnapshotRecord>, StoreError> {
        let name = name.clone();
        self.with_conn_quick(move |conn| snapshots::get(conn, &name))
            .await
    }

    async fn snapshots(
        &self,
        team: &TeamId,
        query: &super::SnapshotQuery,
    ) -> Result<Vec<super::SnapshotRecord>, StoreError> {
        let (team, query) = (team.clone(), query.clone());
        self.with_conn(move |conn| snapshots::list(conn, &team, &query))
            .await
    }

    async fn delete_snapshot(&self, name: &TemplateName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.with_conn(move |conn| snapshots::delete(conn, &name))
            .await
    }

    async fn request_build(
        &self,
        build: &super::BuildRecord,
        abandoned_before: DateTime<Utc>,
    ) -> Result<super::BuildClaim, StoreError> {
        let build = build.clone();
        self.with_conn(move |conn| builds::request(conn, &build, abandoned_before))
            .await
    }

    async fn template_record(
        &self,
        name: &TemplateName,
    ) -> Result<Option<super::TemplateRecord>, StoreError> {
        let name = name.clone();
        self.with_conn_quick(move |conn| builds::template(conn, &name))
            .await
    }

    async fn team_templates(
        &self,
        team: &TeamId,
    ) -> Result<Vec<super::TemplateRecord>, StoreError> {
        let team = team.clone();
        self.with_conn(move |conn| builds::team_templates(conn, &team))
            .await
    }

    async fn delete_template_record(
        &self,
        team: &TeamId,
        name: &TemplateName,
    ) -> Result<super::TemplateDeletion, StoreError> {
        let (team, name) = (team.clone(), name.clone());
        self.with_conn(move |conn| builds::delete_template(conn, &team, &name))
            .await
    }

    async fn build(&self, id: &super::BuildId) -> Result<Option<super::BuildRecord>, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| builds::build(conn, &id)).await
    }

    async fn builds_of(&self, name: &TemplateName) -> Result<Vec<super::BuildRecord>, StoreError> {
        let name = name.clone();
        self.with_conn(move |conn| builds::builds_of(conn, &name))
            .await
    }

    async fn set_build_status(
        &self,
        id: &super::BuildId,
        from: super::BuildStatus,
        to: super::BuildStatus,
        reason: Option<&super::BuildReason>,
    ) -> Result<bool, StoreError> {
        let (id, reason) = (id.clone(), reason.cloned());
        self.with_conn(move |conn| builds::set_status(conn, &id, from, to, reason.as_ref()))
            .await
    }

    async fn append_build_logs(
        &self,
        id: &super::BuildId,
        logs: &[paddock_node_contract::build::BuildLog],
    ) -> Result<(), StoreError> {
        let (id, logs) = (id.clone(), logs.to_vec());
        self.with_conn(move |conn| builds::append_logs(conn, &id, &logs))
            .await
    }

    async fn build_logs(
        &self,
        id: &super::BuildId,
        query: &super::BuildLogQuery,
    ) -> Result<Vec<paddock_node_contract::build::BuildLog>, StoreError> {
        let (id, query) = (id.clone(), query.clone());
        self.with_conn(move |conn| builds::logs(conn, &id, &query))
            .await
    }

    async fn fail_unfinished_builds(&self, reason: &super::BuildReason) -> Result<u64, StoreError> {
        let reason = reason.clone();
        self.with_conn(move |conn| builds::fail_unfinished(conn, &reason))
            .await
    }

    async fn assign_tags(
        &self,
        template: &TemplateName,
        build: &super::BuildId,
        tags: &[String],
        at: DateTime<Utc>,
    ) -> Result<Vec<super::BuildId>, StoreError> {
        let (template, build, tags) = (template.clone(), build.clone(), tags.to_vec());
        self.with_conn(move |conn| tags::assign(conn, &template, &build, &tags, at))
            .await
    }

    async fn remove_tags(
        &self,
        template: &TemplateName,
        tags: &[String],
    ) -> Result<super::TagRemoval, StoreError> {
        let (template, tags) = (template.clone(), tags.to_vec());
        self.with_conn(move |conn| tags::remove(conn, &template, &tags))
            .await
    }

    async fn template_tags(
        &self,
        template: &TemplateName,
    ) -> Result<Vec<super::TagRecord>, StoreError> {
        let template = template.clone();
        self.with_conn(move |conn| tags::of_template(conn, &template))
            .await
    }

    async fn tag(
        &self,
        template: &TemplateName,
        tag: &str,
    ) -> Result<Option<super::TagRecord>, StoreError> {
        let (template, tag) = (template.clone(), tag.to_string());
        self.with_conn(move |conn| tags::one(conn, &template, &tag))
            .await
    }

    async fn append_node_event(
        &self,
        event: &crate::cluster::RegistryEvent,
    ) -> Result<(), StoreError> {
        let event = event.clone();
        self.with_conn(move |conn| node_events::insert(conn, &event))
            .await
    }

    async fn node_events(
        &self,
        query: &super::NodeEventQuery,
    ) -> Result<Vec<super::NodeEventRecord>, StoreError> {
        let query = query.clone();
        self.with_conn(move |conn| node_events::list(conn, &query))
            .await
    }

    async fn prune_node_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with_conn(move |conn| node_events::prune(conn, before))
            .await
    }

    fn event_store(&self) -> Option<Arc<dyn crate::events::EventStore>> {
        Some(Arc::new(self.clone()))
    }
}

#[path = "sqlite_admin.rs"]
mod admin;

#[path = "sqlite_logs.rs"]
mod logs;

#[path = "sqlite_create.rs"]
mod create;

#[path = "sqlite_events.rs"]
mod events;

#[path = "sqlite_snapshots.rs"]
mod snapshots;

#[path = "sqlite_builds.rs"]
mod builds;

#[path = "sqlite_tags.rs"]
mod tags;

#[path = "sqlite_node_events.rs"]
mod node_events;

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
