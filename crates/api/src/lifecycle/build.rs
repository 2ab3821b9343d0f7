//! Template builds (E2B's template build API), independent of HTTP. A build goes
//! `waiting → building → ready | error`:
//!
//! 1. **request** (`POST /v3/templates`): the name (`name` or `name:tag`) becomes the team's
//!    template, private, from then on (a [`TemplateRecord`]); a `waiting` build is recorded with
//!    its resources and tags (from `name:tag` and `tags`; none = `default`), unless a build of
//!    the template with one of those tags is waiting or building (409, where E2B cancels the
//!    older build); builds with other tags run side by side, as in E2B. Names of node
//!    templates nobody built (`base`) and other teams' templates or snapshots are refused, as
//!    are the names of hidden templates (prefixes `buildcache-`, `image-`, `fork-`, and
//!    `build-<32 hex digits>`).
//! 2. **files** ([`super::build_files`]): the SDK uploads the archives of its COPY steps.
//! 3. **start** (`POST /v2/templates/{id}/builds/{buildID}`): the recipe is validated
//!    ([`Recipe::from_wire`]), every COPY archive must be present, a `fromTemplate` base must be
//!    one the team may use; the build becomes `building` and runs on a detached task tracked by
//!    [`Core::tasks`]: `Node::build` publishes the build's hidden template
//!    ([`super::tags::build_template`]) while a collector appends its log lines to the store
//!    in batches (every [`LOG_FLUSH_INTERVAL`] or [`LOG_BATCH_LINES`] lines).
//!    Every line is stored before the status leaves `building`, so a client that polls until
//!    the status is final and then drains the log misses nothing.
//! 4. **end**: the build's tags are pointed at it (publishing the template's name when one is
//!    `default`, see [`super::tags`]), then `ready`; or `error` with a reason (message, failed step, last
//!    [`REASON_LINES`] lines). Shutdown drops a running build's task (the node stops its build
//!    sandboxes when it shuts down) and records it as `error`; builds still `waiting` or
//!    `building` at the next start are marked `error` too ([`Core::fail_interrupted_builds`]).
//!
//! Every successful build stays apart from the others under its own hidden template; tags say
//! which one `name:tag` starts (see [`super::tags`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paddock_domain::{Resources, TemplateName};
use paddock_node_contract::build::{BuildLog, BuildRequest, CACHE_PREFIX, IMAGE_PREFIX};
use paddock_template::wire::BuildStartV2;
use paddock_template::{Base, BuildStep, Recipe};

use super::snapshot::FORK_PREFIX;
use super::{Core, Error};
use crate::store::{
    BuildClaim, BuildId, BuildLogQuery, BuildReason, BuildRecord, BuildStatus, Store, TeamId,
    TemplateDeletion, TemplateRecord,
};

/// Flush collected log lines to the store at least this often.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Flush collected log lines to the store once this many are waiting.
pub const LOG_BATCH_LINES: usize = 200;
/// Log lines kept in a failed build's reason.
pub const REASON_LINES: usize = 20;
/// Largest (and default) page of build log lines.
pub const MAX_LOG_PAGE: u64 = 100;
/// A `waiting` build older than this was abandoned by its client: a new request for the
/// template marks it `error` instead of being refused.
pub const ABANDONED_AFTER_SECS: i64 = 15 * 60;
/// Most vCPUs a build may ask for.
pub const MAX_CPU_COUNT: i64 = 64;
/// Least and most memory a build may ask for, in MiB.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<i64> = 128..=256 * 1024;
/// Most disk a build may ask for (`minFreeDiskMb`), in MiB.
pub const MAX_DISK_MB: i64 = 1024 * 1024;
/// Longest tag, in bytes.
pub const MAX_TAG: usize = 128;
/// The reason of builds cut short by a restart or shutdown of the server.
pub const INTERRUPTED: &str = "the server stopped during the build";

/// Prefixes of hidden templates: cached build layers, base images, forks' private snapshots.
pub(crate) const HIDDEN_PREFIXES: [&str; 3] = [CACHE_PREFIX, IMAGE_PREFIX, FORK_PREFIX];

/// Whether `name` is a hidden template (never listed, never started from by clients): one of
/// [`HIDDEN_PREFIXES`], or a build's own template ([`super::tags::is_build_template`]).
pub fn is_hidden_template(name: &TemplateName) -> bool {
    HIDDEN_PREFIXES.iter().any(|p| name.as_str().starts_with(p))
        || super::tags::is_build_template(name)
}

/// A template reference as clients send it (`name`, `name:tag`, `namespace/name:tag`): the
/// name and the tag, if any. `None` when the name is not a valid template name.
pub fn template_ref(raw: &str) -> Option<(TemplateName, Option<&str>)> {
    let bare = raw.rsplit('/').next().unwrap_or(raw);
    let (name, tag) = match bare.split_once(':') {
        Some((name, tag)) => (name, Some(tag)),
        None => (bare, None),
    };
    Some((TemplateName::parse(name).ok()?, tag))
}

/// Who a template belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Nobody: a node template (everyone's), or no template at all.
    Public,
    /// A team's snapshot.
    Snapshot(TeamId),
    /// A team's built template.
    Built(TeamId),
    /// A hidden template (see [`is_hidden_template`]).
    Hidden,
}

impl Owner {
    /// The owning team, if any.
    pub(crate) fn team(&self) -> Option<&TeamId> {
        match self {
            Owner::Snapshot(t) | Owner::Built(t) => Some(t),
            Owner::Public | Owner::Hidden => None,
        }
    }
}

/// The build state shared by all requests.
#[derive(Default)]
pub(crate) struct Builds {
    /// Serialises the changes that decide who owns a template name and whether a build runs:
    /// requests, starts (`waiting → building`) and deletions.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// The key signing upload links (see `build_files`), loaded on first use.
    pub(crate) upload_key: tokio::sync::OnceCell<[u8; 32]>,
    /// Set once the builds of a previous run were marked failed (the first reconcile).
    recovered: std::sync::atomic::AtomicBool,
}

/// `TemplateBuildRequestV3`, decoded. Its `teamID` is not kept: the API key decides the team
/// (Paddock does not expose its team ids, so a client can only send an E2B team id there).
#[derive(Debug, Clone, Default)]
pub struct BuildRequestSpec {
    /// `name` (`name` or `name:tag`).
    pub name: Option<String>,
    /// `alias` (deprecated; used when `name` is absent).
    pub alias: Option<String>,
    /// `tags`.
    pub tags: Vec<String>,
    /// `cpuCount`.
    pub cpu_count: Option<i64>,
    /// `memoryMB`.
    pub memory_mb: Option<i64>,
    /// `minFreeDiskMb`.
    pub min_free_disk_mb: Option<i64>,
}

/// Whether `tag` is a valid tag: 1 to [`MAX_TAG`] characters of `A-Z`, `a-z`, `0-9`, `.`,
/// `_` and `-`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The resources of a build: the node's template defaults, with `cpuCount` and `memoryMB`
/// replaced and the disk raised to `minFreeDiskMb` (never lowered).
pub fn build_resources(
    cpu_count: Option<i64>,
    memory_mb: Option<i64>,
    min_free_disk_mb: Option<i64>,
) -> Result<Resources, Error> {
    let mut r = Resources::default();
    if let Some(cpu) = cpu_count {
        if !(1..=MAX_CPU_COUNT).contains(&cpu) {
            return Err(Error::Invalid(format!(
                "cpuCount must be from 1 to {MAX_CPU_COUNT}, got {cpu}"
            )));
        }
        r.cpu_count = cpu as u32;
    }
    if let Some(mem) = memory_mb {
        if !MEMORY_MB_RANGE.contains(&mem) {
            return Err(Error::Invalid(format!(
                "memoryMB must be from {} to {}, got {mem}",
                MEMORY_MB_RANGE.start(),
                MEMORY_MB_RANGE.end()
            )));
        }
        r.memory_mb = mem as u64;
    }
    if let Some(disk) = min_free_disk_mb {
        if !(0..=MAX_DISK_MB).contains(&disk) {
            return Err(Error::Invalid(format!(
                "minFreeDiskMb must be from 0 to {MAX_DISK_MB}, got {disk}"
            )));
        }
        r.disk_mb = r.disk_mb.max(disk as u64);
    }
    Ok(r)
}

/// Collects a running build's log lines: batches for the store, the last lines for a
/// failure's reason.
struct LogCollector {
    id: BuildId,
    pending: Vec<BuildLog>,
    tail: VecDeque<BuildLog>,
}

impl LogCollector {
    fn new(id: BuildId) -> Self {
        LogCollector {
            id,
            pending: Vec::new(),
            tail: VecDeque::with_capacity(REASON_LINES),
        }
    }

    /// Takes a line; `true` when a batch is full.
    fn push(&mut self, line: BuildLog) -> bool {
        if self.tail.len() == REASON_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        self.pending.push(line);
        self.pending.len() >= LOG_BATCH_LINES
    }

    async fn flush(&mut self, store: &dyn Store) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        if let Err(e) = store.append_build_logs(&self.id, &batch).await {
            tracing::error!(build_id = %self.id, lines = batch.len(), error = ?e, "storing build log lines failed");
        }
    }

    fn reason(&self, message: String, step: Option<String>) -> BuildReason {
        BuildReason {
            message,
            step,
            log_entries: self.tail.iter().cloned().collect(),
        }
    }
}

/// Where image archives a build may start from (`fromImage: "/path/to/image.tar"`) must be:
/// `<data_dir>/images`. Archives elsewhere on the server are refused, so an API key does not
/// let its holder read any file of the host into a template.
pub const IMAGES_DIR: &str = "images";

impl Core {
    /// Who `name` belongs to.
    pub(crate) async fn template_owner(&self, name: &TemplateName) -> Result<Owner, Error> {
        if is_hidden_template(name) {
            return Ok(Owner::Hidden);
        }
        if let Some(s) = self.store.snapshot(name).await? {
            return Ok(Owner::Snapshot(s.team_id));
        }
        if let Some(t) = self.store.template_record(name).await? {
            return Ok(Owner::Built(t.team_id));
        }
        Ok(Owner::Public)
    }

    /// Requests a build (`POST /v3/templates`); returns the `waiting` build.
    pub(crate) async fn request_build(
        &self,
        team: &TeamId,
        spec: BuildRequestSpec,
    ) -> Result<BuildRecord, Error> {
        let raw = [spec.name, spec.alias]
            .into_iter()
            .flatten()
            .find(|n| !n.trim().is_empty())
            .ok_or_else(|| Error::Invalid("name is required".into()))?;
        let invalid_name = || {
            Error::Invalid(format!(
                "invalid template name {raw:?}: 1 to 64 characters of a-z, 0-9, '.', '_' and \
                 '-', starting with a letter or digit, optionally followed by ':<tag>'"
            ))
        };
        let (name, tag) = template_ref(&raw).ok_or_else(invalid_name)?;
        if is_hidden_template(&name) {
            return Err(Error::Invalid(format!(
                "template names starting with {} and names {}<32 hex digits> are reserved",
                HIDDEN_PREFIXES.join(", "),
                super::tags::BUILD_PREFIX
            )));
        }
        let mut tags: Vec<String> = Vec::new();
        for t in tag.into_iter().map(str::to_string).chain(spec.tags) {
            if !valid_tag(&t) {
                return Err(Error::Invalid(format!(
                    "invalid tag {t:?}: 1 to {MAX_TAG} characters of A-Z, a-z, 0-9, '.', '_' \
                     and '-'"
                )));
            }
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        if tags.is_empty() {
            tags.push("default".into());
        }
        let resources = build_resources(spec.cpu_count, spec.memory_mb, spec.min_free_disk_mb)?;

        let _admin = self.builds.admin.lock().await;
        let taken = || {
            Error::Forbidden(format!(
                "the template name '{name}' is taken by another team"
            ))
        };
        let owner = self.template_owner(&name).await?;
        match &owner {
            Owner::Snapshot(t) if t == team => {
                return Err(Error::Conflict(format!(
                    "'{name}' is one of your snapshots: delete it first or choose another name"
                )))
            }
            Owner::Snapshot(_) => return Err(taken()),
            Owner::Built(t) if t != team => return Err(taken()),
            Owner::Public => {
                if super::system_templates::is_system(&name) {
                    return Err(Error::Forbidden(format!(
                        "the template name '{name}' is reserved: every Paddock server provides \
                         it (build yours from it with `FROM {name}`)"
                    )));
                }
                if self.node.template(&name).await?.is_some() {
                    return Err(Error::Forbidden(format!(
                        "the template name '{name}' is reserved: it is a template of the node"
                    )));
                }
            }
            Owner::Built(_) | Owner::Hidden => {}
        }
        let now = Utc::now();
        let build = BuildRecord {
            id: BuildId::generate(),
            template: name.clone(),
            team_id: team.clone(),
            status: BuildStatus::Waiting,
            tags,
            resources,
            reason: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let abandoned_before = now - chrono::Duration::seconds(ABANDONED_AFTER_SECS);
        match self.store.request_build(&build, abandoned_before).await? {
            BuildClaim::Created => {}
            BuildClaim::OwnedByOther => return Err(taken()),
            BuildClaim::InProgress => {
                return Err(Error::Conflict(format!(
                    "a build of template '{name}' with tag {} is already waiting or running",
                    build.tags.join(" or ")
                )))
            }
        }
        tracing::info!(template = %name, build_id = %build.id, tags = ?build.tags, "template build requested");
        Ok(build)
    }

    /// One of the team's builds of the template `raw_template` names.
    pub(crate) async fn team_build(
        &self,
        team: &TeamId,
        raw_template: &str,
        raw_build: &str,
    ) -> Result<BuildRecord, Error> {
        let not_found = || Error::BuildNotFound(raw_build.to_string());
        let (name, _) = template_ref(raw_template).ok_or_else(not_found)?;
        let id = BuildId::parse(raw_build).ok_or_else(not_found)?;
        match self.store.build(&id).await? {
            Some(b) if b.template == name && &b.team_id == team => Ok(b),
            _ => Err(not_found()),
        }
    }

    /// Starts a `waiting` build (`POST /v2/templates/{id}/builds/{buildID}`); the build runs on
    /// a tracked task and this returns at once.
    pub(crate) async fn start_build(
        self: &Arc<Self>,
        team: &TeamId,
        raw_template: &str,
        raw_build: &str,
        body: BuildStartV2,
    ) -> Result<(), Error> {
        let mut recipe = Recipe::from_wire(body).map_err(|e| Error::Invalid(e.to_string()))?;
        let build = self.team_build(team, raw_template, raw_build).await?;
        if build.status != BuildStatus::Waiting {
            return Err(Error::Conflict(format!(
                "build '{}' is {}, not waiting: request a new build",
                build.id,
                build.status.as_str()
            )));
        }
        let files_dir = self.build_files_dir(team);
        let mut missing: Vec<&str> = Vec::new();
        for step in &recipe.steps {
            if let BuildStep::Copy { files_hash, .. } = &step.step {
                let present = tokio::fs::metadata(files_dir.join(files_hash))
                    .await
                    .is_ok_and(|m| m.is_file());
                if !present && !missing.contains(&files_hash.as_str()) {
                    missing.push(files_hash);
                }
            }
        }
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "the files of COPY steps were not uploaded (filesHash {}): get an upload link \
                 from GET /templates/{}/files/<hash> and upload them first",
                missing.join(", "),
                build.template
            )));
        }
        // The team may build from what its creates may start from; a tag is the build it names.
        if let Base::Template(raw) = &recipe.base {
            let base = self.resolve_template(team, raw).await?;
            recipe.base = Base::Template(base.node_template.to_string());
        }
        {
            let _admin = self.builds.admin.lock().await;
            if !self
                .store
                .set_build_status(&build.id, BuildStatus::Waiting, BuildStatus::Building, None)
                .await?
            {
                return Err(Error::Conflict(format!(
                    "build '{}' is no longer waiting",
                    build.id
                )));
            }
        }
        let request = BuildRequest {
            name: super::tags::build_template(&build.id),
            recipe,
            resources: build.resources,
            files_dir,
            images_dir: Some(self.config.data_dir.join(IMAGES_DIR)),
        };
        let core = Arc::clone(self);
        let record = build.clone();
        if let Err(e) = self.spawn_create(async move { core.run_build(record, request).await }) {
            let reason = BuildReason {
                message: INTERRUPTED.into(),
                step: None,
                log_entries: Vec::new(),
            };
            self.store
                .set_build_status(
                    &build.id,
                    BuildStatus::Building,
                    BuildStatus::Error,
                    Some(&reason),
                )
                .await?;
            return Err(e);
        }
        tracing::info!(template = %build.template, build_id = %build.id, "template build started");
        Ok(())
    }

    /// Runs one build to its end (see the module docs); never fails: the outcome is recorded.
    async fn run_build(self: Arc<Self>, record: BuildRecord, request: BuildRequest) {
        let id = record.id.clone();
        let name = record.template.clone();
        let started = std::time::Instant::now();
        let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let mut shutdown = self.shutdown.subscribe();
        let stopping = async move {
            // An error means the flag's sender is gone: the core itself is going away.
            let _ = shutdown.wait_for(|down| *down).await;
        };
        tokio::pin!(stopping);
        let mut build = Box::pin(self.node.build(request, sink));
        let mut collector = LogCollector::new(id.clone());
        let mut flush = tokio::time::interval(LOG_FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                result = &mut build => break Some(result),
                Some(line) = lines.recv() => {
                    if collector.push(line) {
                        collector.flush(self.store.as_ref()).await;
                    }
                }
                _ = flush.tick() => collector.flush(self.store.as_ref()).await,
                _ = &mut stopping => break None,
            }
        };
        // Shutdown: dropping the future abandons the build; the node stops its sandboxes.
        drop(build);
        lines.close();
        while let Ok(line) = lines.try_recv() {
            collector.push(line);
        }
        // Tagged before it is `ready`: a client that saw `ready` finds `name:tag` in place.
        let outcome = match outcome {
            Some(Ok(built)) => match self.tag_finished_build(&record).await {
                Ok(()) => {
                    let names: Vec<String> =
                        record.tags.iter().map(|t| format!("{name}:{t}")).collect();
                    collector.push(BuildLog {
                        timestamp: Utc::now(),
                        level: paddock_node_contract::logs::LogLevel::Info,
                        step: paddock_template::FINALIZE_STEP.into(),
                        message: format!("published as {}", names.join(", ")),
                    });
                    Some(Ok(built))
                }
                Err(e) => {
                    let _ = self
                        .node
                        .delete_template(&super::tags::build_template(&record.id))
                        .await;
                    Some(Err(paddock_node_contract::build::BuildError {
                        step: paddock_template::FINALIZE_STEP.into(),
                        message: format!("tagging the build failed: {e}"),
                    }))
                }
            },
            other => other,
        };
        collector.flush(self.store.as_ref()).await;
        let (to, reason) = match outcome {
            Some(Ok(built)) => {
                tracing::info!(
                    template = %name,
                    build_id = %id,
                    cached_steps = built.cached_steps,
                    built_steps = built.built_steps,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "template built"
                );
                (BuildStatus::Ready, None)
            }
            Some(Err(e)) => {
                tracing::warn!(template = %name, build_id = %id, step = %e.step, message = %e.message, "template build failed");
                let reason = collector.reason(e.message, Some(e.step));
                (BuildStatus::Error, Some(reason))
            }
            None => {
                tracing::warn!(template = %name, build_id = %id, "template build stopped by shutdown");
                (
                    BuildStatus::Error,
                    Some(collector.reason(INTERRUPTED.into(), None)),
                )
            }
        };
        match self
            .store
            .set_build_status(&id, BuildStatus::Building, to, reason.as_ref())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(build_id = %id, "the build's record changed while it ran")
            }
            Err(e) => {
                tracing::error!(build_id = %id, error = ?e, "recording the end of a build failed")
            }
        }
    }

    /// A build's status and a page of its log lines (read after the status, so a final status
    /// comes with a complete log).
    pub(crate) async fn build_status(
        &self,
        team: &TeamId,
        raw_template: &str,
        raw_build: &str,
        query: &BuildLogQuery,
    ) -> Result<(BuildRecord, Vec<BuildLog>), Error> {
        let build = self.team_build(team, raw_template, raw_build).await?;
        let logs = self.store.build_logs(&build.id, query).await?;
        Ok((build, logs))
    }

    /// The team's built templates with their builds (newest first).
    pub(crate) async fn built_templates(
        &self,
        team: &TeamId,
    ) -> Result<Vec<(TemplateRecord, Vec<BuildRecord>)>, Error> {
        let mut out = Vec::new();
        for rec in self.store.team_templates(team).await? {
            let builds = self.store.builds_of(&rec.name).await?;
            out.push((rec, builds));
        }
        Ok(out)
    }

    /// The builds of a template, newest first.
    pub(crate) async fn builds_of(&self, name: &TemplateName) -> Result<Vec<BuildRecord>, Error> {
        Ok(self.store.builds_of(name).await?)
    }

    /// `DELETE /templates/{id}`: deletes one of the team's built templates (on the node, then
    /// its records; 409 while a build of it runs), else one of its snapshots. `false` when the
    /// team has neither of that name; node templates are refused (403).
    pub(crate) async fn delete_template(&self, team: &TeamId, raw: &str) -> Result<bool, Error> {
        let Some((name, _)) = template_ref(raw) else {
            return Ok(false);
        };
        let admin = self.builds.admin.lock().await;
        match self.store.template_record(&name).await? {
            Some(rec) if &rec.team_id == team => {}
            Some(_) => return Ok(false),
            None => {
                drop(admin);
                return self.delete_snapshot(team, raw).await;
            }
        }
        let running =
            |builds: &[BuildRecord]| builds.iter().any(|b| b.status == BuildStatus::Building);
        if running(&self.store.builds_of(&name).await?) {
            return Err(Error::Conflict(format!(
                "template '{name}' is being built: wait for the build to end"
            )));
        }
        // The node first: a template left on the node without its record would be public.
        for b in self.store.builds_of(&name).await? {
            self.node
                .delete_template(&super::tags::build_template(&b.id))
                .await?;
        }
        self.node.delete_template(&name).await?;
        match self.store.delete_template_record(team, &name).await? {
            TemplateDeletion::Deleted | TemplateDeletion::NotFound => {}
            TemplateDeletion::Building => {
                return Err(Error::Conflict(format!(
                    "template '{name}' is being built: wait for the build to end"
                )))
            }
        }
        tracing::info!(template = %name, "built template deleted");
        Ok(true)
    }

    /// Marks builds left `waiting` or `building` by a previous run of the server `error`.
    /// Only the first call does it (at startup, before anything can build); later calls,
    /// which could meet this process's own builds, do nothing.
    pub(crate) async fn fail_interrupted_builds(&self) -> Result<u64, Error> {
        use std::sync::atomic::Ordering;
        if self.builds.recovered.swap(true, Ordering::SeqCst) {
            return Ok(0);
        }
        let reason = BuildReason {
            message: INTERRUPTED.into(),
            step: None,
            log_entries: Vec::new(),
        };
        let n = self.store.fail_unfinished_builds(&reason).await?;
        if n > 0 {
            tracing::warn!(
                builds = n,
                "builds interrupted by the restart marked as failed"
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        let name = |s: &str| TemplateName::parse(s).expect("name");
        assert_eq!(template_ref("app"), Some((name("app"), None)));
        assert_eq!(template_ref("app:v1"), Some((name("app"), Some("v1"))));
        assert_eq!(
            template_ref("team/app:default"),
            Some((name("app"), Some("default")))
        );
        assert_eq!(template_ref("App"), None);
        assert_eq!(template_ref(":v1"), None);
        assert_eq!(template_ref(""), None);
    }

    #[test]
    fn hidden_templates_are_recognised_by_prefix() {
        for hidden in ["buildcache-abc", "image-debian-bookworm", "fork-0123"] {
            assert!(is_hidden_template(
                &TemplateName::parse(hidden).expect("name")
            ));
        }
        for shown in ["base", "my-image", "cache"] {
            assert!(!is_hidden_template(
                &TemplateName::parse(shown).expect("name")
            ));
        }
    }

    #[test]
    fn resources_default_to_the_template_defaults_and_are_checked() {
        let d = Resources::default();
        assert_eq!(build_resources(None, None, None).expect("ok"), d);
        let r = build_resources(Some(4), Some(2048), Some(1)).expect("ok");
        assert_eq!((r.cpu_count, r.memory_mb), (4, 2048));
        assert_eq!(r.disk_mb, d.disk_mb, "minFreeDiskMb never lowers the disk");
        let r = build_resources(None, None, Some(d.disk_mb as i64 + 5)).expect("ok");
        assert_eq!(r.disk_mb, d.disk_mb + 5);
        for (cpu, mem, disk, field) in [
            (Some(0), None, None, "cpuCount"),
            (Some(65), None, None, "cpuCount"),
            (None, Some(64), None, "memoryMB"),
            (None, None, Some(-1), "minFreeDiskMb"),
        ] {
            let err = build_resources(cpu, mem, disk).expect_err("refused");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn tags_are_checked() {
        assert!(valid_tag("v1.0_rc-2"));
        assert!(valid_tag("Stable"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a b"));
        assert!(!valid_tag(&"x".repeat(MAX_TAG + 1)));
    }

    #[test]
    fn the_collector_batches_and_keeps_the_last_lines() {
        let line = |i: usize| BuildLog {
            timestamp: Utc::now(),
            level: paddock_node_contract::logs::LogLevel::Info,
            step: "1".into(),
            message: format!("line {i}"),
        };
        let mut c = LogCollector::new(BuildId::generate());
        for i in 0..LOG_BATCH_LINES - 1 {
            assert!(!c.push(line(i)));
        }
        assert!(c.push(line(LOG_BATCH_LINES - 1)), "a full batch");
        let reason = c.reason("boom".into(), Some("1".into()));
        assert_eq!(reason.log_entries.len(), REASON_LINES);
        assert_eq!(
            reason.log_entries[REASON_LINES - 1].message,
            format!("line {}", LOG_BATCH_LINES - 1)
        );
    }
}
