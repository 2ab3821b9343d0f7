//! Persistence of the control plane behind the [`Store`] trait: teams, API keys (SHA-256 hashes
//! only), sandbox records, idempotency keys, the control plane's sandbox log entries, snapshots,
//! template builds (who owns which template, each build and its log) and the history of the
//! cluster's node events ([`NodeEventRecord`]). SQL
//! lives only in the backend modules ([`sqlite`] today; Postgres later), never in the lifecycle
//! or HTTP code.
//!
//! State changes are compare-and-set ([`Store::set_state`], [`Store::set_running`]) so that two
//! tasks racing on one sandbox (a kill and the expiry, say) cannot both win. Which transitions are
//! legal is decided by [`SandboxState::transition`] in the caller, not here.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paddock_domain::{Resources, SandboxId, SandboxState, TemplateName};

pub mod sqlite;

pub use sqlite::SqliteStore;

/// Identifier of a team (the owner of API keys and sandboxes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TeamId(String);

impl TeamId {
    /// Generates a fresh random team id (32 hex characters).
    pub fn generate() -> Self {
        TeamId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Wraps an id read back from storage.
    pub fn from_stored(raw: String) -> Self {
        TeamId(raw)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TeamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the control plane remembers about one sandbox. Environment variables are not kept:
/// they go to the node once and may hold secrets. The envd access token is kept because connect
/// must return it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The sandbox id.
    pub id: SandboxId,
    /// Owning team.
    pub team_id: TeamId,
    /// Template the sandbox runs.
    pub template: TemplateName,
    /// The template reference exactly as the client asked for it (reported as `alias`).
    pub alias: Option<String>,
    /// Lifecycle state.
    pub state: SandboxState,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// envd access token (`envdAccessToken`).
    pub access_token: String,
    /// When the sandbox started (creation time until it runs).
    pub started_at: DateTime<Utc>,
    /// When the sandbox is killed unless its timeout is changed.
    pub end_at: DateTime<Utc>,
    /// Limits applied by the node.
    pub resources: Resources,
    /// The node/client id reported as `clientID`.
    pub client_id: String,
    /// Why the sandbox stopped or failed, once it has.
    pub end_reason: Option<String>,
}

/// Sort order of a listing, by start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first (ties broken by ascending id).
    #[default]
    Desc,
    /// Oldest first (ties broken by ascending id).
    Asc,
}

/// Position after which a page continues: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `started_at` of the last row, in Unix milliseconds.
    pub started_at_ms: i64,
    /// Id of the last row.
    pub id: String,
}

/// A filtered, paginated listing of one team's sandboxes.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Whose sandboxes.
    pub team_id: TeamId,
    /// States to include (must not be empty).
    pub states: Vec<SandboxState>,
    /// Metadata pairs that must all match exactly.
    pub metadata: Vec<(String, String)>,
    /// Only this template (by name or requested alias).
    pub template: Option<String>,
    /// Only sandboxes started at or after this time (inclusive, as E2B's `startedAfter`).
    pub started_after: Option<DateTime<Utc>>,
    /// Sort order.
    pub order: Order,
    /// Continue after this row.
    pub cursor: Option<Cursor>,
    /// Maximum number of rows to return.
    pub limit: u32,
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("corrupt stored value in column {column}: {value:?}")]
    Corrupt {
        /// Which column.
        column: &'static str,
        /// The raw value.
        value: String,
    },
    /// This store does not keep that kind of data.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
    /// Metadata could not be encoded or decoded as JSON.
    #[error("metadata json")]
    Json(#[from] serde_json::Error),
    /// The data directory or database file could not be prepared.
    #[error("cannot prepare database at {path}")]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The blocking database task panicked or was cancelled.
    #[error("database task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A new sandbox as the create path records it ([`Store::insert_new_sandbox`]).
#[derive(Debug, Clone)]
pub struct NewSandbox {
    /// The record, in state `creating`.
    pub record: SandboxRecord,
    /// Its lifecycle settings.
    pub lifecycle: SandboxLifecycle,
    /// Its first log entry.
    pub log: paddock_node_contract::logs::LogEntry,
    /// The `Idempotency-Key` that created it, and when.
    pub idempotency: Option<(String, DateTime<Utc>)>,
    /// What the node is sent for it.
    pub sent: SentToNode,
}

/// What the control plane sent a node for a sandbox and how the node keeps it while paused.
/// Kept in the store, so that nothing is read back out of a node's memory (the node may be
/// another host, or gone): forks copy the env vars and egress policy from here, and resumes,
/// shutdowns and `GET /sandboxes/{id}` read the pause mode from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentToNode {
    /// The environment variables the sandbox was created with.
    pub env_vars: std::collections::HashMap<String, String>,
    /// Its egress policy as last sent (at create or by `PUT .../network`).
    pub egress: paddock_domain::EgressPolicy,
    /// How it is paused (`None` while it is not).
    pub pause_mode: Option<paddock_node_contract::PauseMode>,
}

/// What a sandbox does at its end time and on traffic while paused (`autoPause`, `autoResume`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxLifecycle {
    /// Pause instead of kill when the end time is reached.
    pub auto_pause: bool,
    /// Traffic arriving at the proxy resumes the sandbox when it is paused.
    pub auto_resume: bool,
    /// `autoPause` pauses to disk (`autoPauseMemory: false`): files only, memory freed.
    pub pause_to_disk: bool,
}

/// A snapshot a team took of a sandbox (a template on the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot's template name (its id is `<name>:default`).
    pub name: TemplateName,
    /// Owning team.
    pub team_id: TeamId,
    /// The sandbox it was taken from.
    pub sandbox_id: SandboxId,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
    /// Bytes its own layer takes on the node's disk.
    pub size_bytes: u64,
}

/// Filters and page of `GET /snapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// Only snapshots of this sandbox.
    pub sandbox_id: Option<SandboxId>,
    /// Only the snapshot of this name.
    pub name: Option<TemplateName>,
    /// Continue after this `(created_at, name)` (from the previous page's last entry).
    pub after: Option<(DateTime<Utc>, TemplateName)>,
    /// Page size.
    pub limit: i64,
}

/// Where a template build is (`TemplateBuildStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// Requested (`POST /v3/templates`); files may be uploading; not started yet.
    Waiting,
    /// Started; the node is building it.
    Building,
    /// Built and published.
    Ready,
    /// Failed (see its [`BuildReason`]).
    Error,
}

impl BuildStatus {
    /// The status as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Waiting => "waiting",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Error => "error",
        }
    }

    /// Parses [`BuildStatus::as_str`]'s output.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "waiting" => BuildStatus::Waiting,
            "building" => BuildStatus::Building,
            "ready" => BuildStatus::Ready,
            "error" => BuildStatus::Error,
            _ => return None,
        })
    }
}

/// The id of a template build: a UUID (version 4), lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);

impl BuildId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let mut b = rand::random::<[u8; 16]>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        BuildId(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    /// Accepts any UUID in its 36-character hyphenated form (lowercased); `None` otherwise.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 36
            && raw.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        ok.then(|| BuildId(raw.to_ascii_lowercase()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a build failed (`BuildStatusReason`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildReason {
    /// What went wrong.
    pub message: String,
    /// The step that failed (`base`, `1`..`N`, `finalize`), when known.
    pub step: Option<String>,
    /// The last log lines before the failure.
    pub log_entries: Vec<paddock_node_contract::build::BuildLog>,
}

/// A template a team builds: the name is the team's from the first build request on
/// (private), whether or not a build has succeeded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// The template's name (its id).
    pub name: TemplateName,
    /// Owning team.
    pub team_id: TeamId,
    /// When the first build was requested.
    pub created_at: DateTime<Utc>,
}

/// One build of a team's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// The build id.
    pub id: BuildId,
    /// The template it builds.
    pub template: TemplateName,
    /// The team that asked for it.
    pub team_id: TeamId,
    /// Where it is.
    pub status: BuildStatus,
    /// The tags asked for (at least `default`).
    pub tags: Vec<String>,
    /// Limits of the build's sandboxes and of the template's.
    pub resources: Resources,
    /// Why it failed, once it has.
    pub reason: Option<BuildReason>,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
    /// When it became `ready` or `error`.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The outcome of [`Store::request_build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildClaim {
    /// The build was recorded (and the name is the team's).
    Created,
    /// Another team owns the template name.
    OwnedByOther,
    /// A build of the template with one of the same tags is already waiting or building.
    InProgress,
}

/// The outcome of [`Store::delete_template_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateDeletion {
    /// The template and its builds (and their logs) are gone.
    Deleted,
    /// A build of it is running; nothing was deleted.
    Building,
    /// The team has no such template.
    NotFound,
}

/// A tag of a team's template: the build `name:tag` starts sandboxes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The template.
    pub template: TemplateName,
    /// The tag (`default` is the one `name` alone means).
    pub tag: String,
    /// The (successful) build it names.
    pub build_id: BuildId,
    /// When it was assigned to that build.
    pub created_at: DateTime<Utc>,
}

/// The outcome of [`Store::remove_tags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagRemoval {
    /// The tags are gone; these builds lost their last tag with them.
    Removed {
        /// Builds that no tag names any more.
        orphaned: Vec<BuildId>,
    },
    /// This tag is not assigned; nothing was removed.
    UnknownTag(String),
}

/// Which of a build's log lines to read: a page from `offset` (counted among the lines that
/// pass the level filter) or from a time cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLogQuery {
    /// Lines to skip (after filtering).
    pub offset: u64,
    /// Most lines returned.
    pub limit: u64,
    /// Minimum level.
    pub min_level: Option<paddock_node_contract::logs::LogLevel>,
    /// Unix ms, inclusive: lines at or after it (forward) or at or before it (backward).
    pub cursor_ms: Option<i64>,
    /// Newest first (from the cursor back) instead of oldest first.
    pub backward: bool,
}

/// A node registry event as the history keeps it (`GET /nodes/events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEventRecord {
    /// Its position in the history: increasing, never reused (also after pruning).
    pub seq: i64,
    /// The event.
    pub event: crate::cluster::RegistryEvent,
}

/// A page of the node event history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEventQuery {
    /// Only events of this node.
    pub node_id: Option<String>,
    /// Only events of this kind.
    pub kind: Option<crate::cluster::RegistryEventKind>,
    /// Events to skip (newest first, after the filters).
    pub offset: u64,
    /// Most events returned.
    pub limit: u64,
}

/// The persistence operations of the control plane. Implementations must be safe to call from
/// many tasks at once; every method is one short transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Returns the id of the team with this name, creating the team if it does not exist.
    async fn ensure_team(&self, name: &str) -> Result<TeamId, StoreError>;
    /// Registers an API key hash for a team (no-op if already registered for it).
    async fn add_api_key(&self, team: &TeamId, key_hash: &str) -> Result<(), StoreError>;
    /// Makes `key_hash` the only API key of `team`: every other key of the team is revoked in
    /// the same transaction.
    async fn set_only_api_key(&self, team: &TeamId, key_hash: &str) -> Result<(), StoreError>;
    /// The team an API key hash belongs to.
    async fn team_for_key(&self, key_hash: &str) -> Result<Option<TeamId>, StoreError>;

    /// Inserts a new sandbox record.
    async fn insert_sandbox(&self, record: &SandboxRecord) -> Result<(), StoreError>;
    /// Reads one sandbox record, whatever its state.
    async fn sandbox(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError>;
    /// Moves a sandbox from `from` to `to` if it is still in `from`; records `reason` when given.
    /// Returns whether the row changed.
    async fn set_state(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Moves a sandbox from `creating` to `running`, recording the applied limits and its real
    /// start and end times. Returns whether the row changed.
    async fn set_running(
        &self,
        id: &SandboxId,
        resources: Resources,
        started_at: DateTime<Utc>,
        end_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Sets the end time of a sandbox that is in `state`. Returns whether the row changed.
    async fn set_end_at(
        &self,
        id: &SandboxId,
        state: SandboxState,
        end_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// One page of a team's sandboxes.
    async fn list_sandboxes(&self, query: &ListQuery) -> Result<Vec<SandboxRecord>, StoreError>;
    /// How many of a team's sandboxes are in `state`.
    async fn count_in_state(&self, team: &TeamId, state: SandboxState) -> Result<u64, StoreError>;
    /// Every sandbox (of any team) in one of `states`.
    async fn sandboxes_in_states(
        &self,
        states: &[SandboxState],
    ) -> Result<Vec<SandboxRecord>, StoreError>;
    /// The earliest end time among sandboxes in `state`.
    async fn next_end_at(&self, state: SandboxState) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Sandboxes in `state` whose end time is at or before `now`.
    async fn ended_by(
        &self,
        state: SandboxState,
        now: DateTime<Utc>,
    ) -> Result<Vec<SandboxId>, StoreError>;

    /// Deletes `stopped` sandbox records that stopped before `before`; returns how many.
    async fn prune_stopped(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The sandbox created for an `Idempotency-Key` of a team at or after `since`.
    async fn idempotent_sandbox(
        &self,
        team: &TeamId,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SandboxId>, StoreError>;
    /// Remembers which sandbox an `Idempotency-Key` created (replacing an older entry).
    async fn record_idempotency(
        &self,
        team: &TeamId,
        key: &str,
        sandbox: &SandboxId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Records the lifecycle settings of an existing sandbox. Default: ignored (every sandbox
    /// then has the default lifecycle: kill at the end time, no auto-resume).
    async fn set_lifecycle(
        &self,
        id: &SandboxId,
        lifecycle: SandboxLifecycle,
    ) -> Result<(), StoreError> {
        let _ = (id, lifecycle);
        Ok(())
    }

    /// Records a new sandbox as one write: its row, its lifecycle settings (when not the
    /// default), its first log entry and its `Idempotency-Key`. Default: one call of each.
    async fn insert_new_sandbox(&self, new: &NewSandbox) -> Result<(), StoreError> {
        self.insert_sandbox(&new.record).await?;
        if new.lifecycle != SandboxLifecycle::default() {
            self.set_lifecycle(&new.record.id, new.lifecycle).await?;
        }
        self.append_sandbox_log(&new.record.id, &new.log).await?;
        if let Some((key, at)) = &new.idempotency {
            self.record_idempotency(&new.record.team_id, key, &new.record.id, *at)
                .await?;
        }
        Ok(())
    }

    /// [`Store::set_running`], and when the row changed, appends `entry` to its log, as one
    /// write. Default: the two calls.
    async fn set_running_logged(
        &self,
        id: &SandboxId,
        resources: Resources,
        started_at: DateTime<Utc>,
        end_at: DateTime<Utc>,
        entry: &paddock_node_contract::logs::LogEntry,
    ) -> Result<bool, StoreError> {
        let changed = self.set_running(id, resources, started_at, end_at).await?;
        if changed {
            self.append_sandbox_log(id, entry).await?;
        }
        Ok(changed)
    }

    /// Appends a control-plane entry to the log of an existing sandbox; entries go when the
    /// record goes. Default: ignored (no control-plane log entries are kept).
    async fn append_sandbox_log(
        &self,
        id: &SandboxId,
        entry: &paddock_node_contract::logs::LogEntry,
    ) -> Result<(), StoreError> {
        let _ = (id, entry);
        Ok(())
    }

    /// The control-plane log entries of a sandbox, oldest first (the newest 10 000 at most).
    /// Default: none.
    async fn sandbox_logs(
        &self,
        id: &SandboxId,
    ) -> Result<Vec<paddock_node_contract::logs::LogEntry>, StoreError> {
        let _ = id;
        Ok(Vec::new())
    }

    /// The lifecycle settings of a sandbox (the default when unknown). Default: the default.
    async fn lifecycle(&self, id: &SandboxId) -> Result<SandboxLifecycle, StoreError> {
        let _ = id;
        Ok(SandboxLifecycle::default())
    }

    /// What was sent to the node for a sandbox and how it is paused; `None` for an unknown id.
    async fn sent_to_node(&self, id: &SandboxId) -> Result<Option<SentToNode>, StoreError>;

    /// Records how the sandbox is paused now (`None`: not paused).
    async fn set_pause_mode(
        &self,
        id: &SandboxId,
        mode: Option<paddock_node_contract::PauseMode>,
    ) -> Result<(), StoreError>;

    /// Records the egress policy last sent to the node for the sandbox.
    async fn set_egress(
        &self,
        id: &SandboxId,
        egress: &paddock_domain::EgressPolicy,
    ) -> Result<(), StoreError>;

    /// How many of the team's sandbox records (kept for a week after they stop) were started
    /// from each template, and when the last one was: `name → (count, last start)`. Default:
    /// none.
    async fn template_usage(
        &self,
        team: &TeamId,
    ) -> Result<std::collections::HashMap<TemplateName, (u64, DateTime<Utc>)>, StoreError> {
        let _ = team;
        Ok(std::collections::HashMap::new())
    }

    /// Records a snapshot; `false` if a snapshot of that name exists. Default: unsupported.
    async fn insert_snapshot(&self, rec: &SnapshotRecord) -> Result<bool, StoreError> {
        let _ = rec;
        Err(StoreError::Unsupported("snapshots"))
    }

    /// A snapshot by name, whichever team owns it. Default: none.
    async fn snapshot(&self, name: &TemplateName) -> Result<Option<SnapshotRecord>, StoreError> {
        let _ = name;
        Ok(None)
    }

    /// A team's snapshots, newest first. Default: none.
    async fn snapshots(
        &self,
        team: &TeamId,
        query: &SnapshotQuery,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let _ = (team, query);
        Ok(Vec::new())
    }

    /// Forgets a snapshot; `false` if it was not recorded. Default: nothing recorded.
    async fn delete_snapshot(&self, name: &TemplateName) -> Result<bool, StoreError> {
        let _ = name;
        Ok(false)
    }

    /// Records a requested build of `build.template` for `build.team_id` in one transaction:
    /// the name becomes the team's ([`TemplateRecord`]) unless another team owns it, and no
    /// build of it with one of the same tags may be waiting or building (builds with other tags
    /// may, as in E2B; a `waiting` build requested before `abandoned_before` was never started:
    /// it is marked `error` and does not count).
    /// Default: unsupported.
    async fn request_build(
        &self,
        build: &BuildRecord,
        abandoned_before: DateTime<Utc>,
    ) -> Result<BuildClaim, StoreError> {
        let _ = (build, abandoned_before);
        Err(StoreError::Unsupported("template builds"))
    }

    /// A built template's record, whichever team owns it. Default: none.
    async fn template_record(
        &self,
        name: &TemplateName,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        let _ = name;
        Ok(None)
    }

    /// The templates a team builds, by name. Default: none.
    async fn team_templates(&self, team: &TeamId) -> Result<Vec<TemplateRecord>, StoreError> {
        let _ = team;
        Ok(Vec::new())
    }

    /// Forgets one of `team`'s templates with its builds and their logs, unless a build of it
    /// is `building`. Default: nothing recorded.
    async fn delete_template_record(
        &self,
        team: &TeamId,
        name: &TemplateName,
    ) -> Result<TemplateDeletion, StoreError> {
        let _ = (team, name);
        Ok(TemplateDeletion::NotFound)
    }

    /// One build. Default: none.
    async fn build(&self, id: &BuildId) -> Result<Option<BuildRecord>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// The builds of a template, newest first. Default: none.
    async fn builds_of(&self, name: &TemplateName) -> Result<Vec<BuildRecord>, StoreError> {
        let _ = name;
        Ok(Vec::new())
    }

    /// Moves a build from `from` to `to` if it is still in `from`, recording `reason` (and the
    /// finish time when `to` is `ready` or `error`). Returns whether the row changed. Default:
    /// unsupported.
    async fn set_build_status(
        &self,
        id: &BuildId,
        from: BuildStatus,
        to: BuildStatus,
        reason: Option<&BuildReason>,
    ) -> Result<bool, StoreError> {
        let _ = (id, from, to, reason);
        Err(StoreError::Unsupported("template builds"))
    }

    /// Appends log lines to a build's log, in order. Default: ignored.
    async fn append_build_logs(
        &self,
        id: &BuildId,
        logs: &[paddock_node_contract::build::BuildLog],
    ) -> Result<(), StoreError> {
        let _ = (id, logs);
        Ok(())
    }

    /// A page of a build's log lines. Default: none.
    async fn build_logs(
        &self,
        id: &BuildId,
        query: &BuildLogQuery,
    ) -> Result<Vec<paddock_node_contract::build::BuildLog>, StoreError> {
        let _ = (id, query);
        Ok(Vec::new())
    }

    /// Marks every `waiting` or `building` build `error` with `reason` (at startup: nothing
    /// can be running yet); returns how many. Default: none.
    async fn fail_unfinished_builds(&self, reason: &BuildReason) -> Result<u64, StoreError> {
        let _ = reason;
        Ok(0)
    }

    /// Points each of `tags` of `template` at `build` (moving tags that named other builds),
    /// in one transaction; returns the builds that no tag names any more because of it.
    /// Default: unsupported.
    async fn assign_tags(
        &self,
        template: &TemplateName,
        build: &BuildId,
        tags: &[String],
        at: DateTime<Utc>,
    ) -> Result<Vec<BuildId>, StoreError> {
        let _ = (template, build, tags, at);
        Err(StoreError::Unsupported("template tags"))
    }

    /// Removes `tags` from `template`, all or (when one is not assigned) none. Default:
    /// unsupported.
    async fn remove_tags(
        &self,
        template: &TemplateName,
        tags: &[String],
    ) -> Result<TagRemoval, StoreError> {
        let _ = (template, tags);
        Err(StoreError::Unsupported("template tags"))
    }

    /// A template's tags, by tag. Default: none.
    async fn template_tags(&self, template: &TemplateName) -> Result<Vec<TagRecord>, StoreError> {
        let _ = template;
        Ok(Vec::new())
    }

    /// One tag of a template. Default: none.
    async fn tag(
        &self,
        template: &TemplateName,
        tag: &str,
    ) -> Result<Option<TagRecord>, StoreError> {
        let _ = (template, tag);
        Ok(None)
    }

    /// Appends a node registry event to the history. Default: unsupported (no history is
    /// kept; the recorder stops at the first event).
    async fn append_node_event(
        &self,
        event: &crate::cluster::RegistryEvent,
    ) -> Result<(), StoreError> {
        let _ = event;
        Err(StoreError::Unsupported("node events"))
    }

    /// A page of the node event history, newest first. Default: unsupported.
    async fn node_events(
        &self,
        query: &NodeEventQuery,
    ) -> Result<Vec<NodeEventRecord>, StoreError> {
        let _ = query;
        Err(StoreError::Unsupported("node events"))
    }

    /// Deletes node events that happened before `before`; returns how many. Default: none.
    async fn prune_node_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = before;
        Ok(0)
    }

    /// The storage of lifecycle events, webhooks and webhook deliveries of this backend.
    /// Default: none (events are then only streamed live; the webhook API answers 501).
    fn event_store(&self) -> Option<std::sync::Arc<dyn crate::events::EventStore>> {
        None
    }
}
