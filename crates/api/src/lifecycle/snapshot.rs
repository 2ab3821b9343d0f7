//! Snapshots and forks: a sandbox's files as they are now, kept as a template.
//!
//! - **snapshot** (`POST …/snapshots`): the node copies the sandbox's writable layer into a new
//!   template stacked on the sandbox's own template layers (the sandbox is frozen for the copy
//!   and left as it was: running, paused in memory or paused to disk); the store records which
//!   team owns it. New sandboxes start from it like from any template (`<name>:default`).
//!   Snapshots are of files: processes and memory are not part of them.
//! - **list** (`GET /snapshots`) and **delete** (`DELETE /templates/{id}`): the team's own
//!   snapshots only; a deleted snapshot's files stay while sandboxes started from it run.
//! - **fork** (`POST …/fork`): one private snapshot, then `count` new sandboxes from it at once,
//!   each with a new id, token, hostname and address, the parent's metadata, environment,
//!   egress policy, lifecycle and limits; the private template is deleted again at once (its
//!   layers stay as long as a child runs on them). Copy-on-write: children share the copy of
//!   the parent's writable layer read-only, each writes into its own. Each child is a create
//!   for admission control, admitted before the copy: a child over the limits gets a 429
//!   result of its own, and the fork is refused (429) when no child is admitted.

use std::sync::Arc;

use chrono::Utc;
use paddock_domain::{SandboxId, TemplateName};
use paddock_node_contract::{ErrorCode, NodeError};

use super::create::CreateSpec;
use super::{validate, Core, Error};
use crate::store::{SandboxRecord, SnapshotQuery, SnapshotRecord, TeamId};

/// Most children one fork request makes (E2B's limit).
pub const MAX_FORK_COUNT: u32 = 20;
/// Timeout of forked sandboxes when the request gives none, in seconds (E2B's default).
pub const FORK_DEFAULT_TIMEOUT_SECS: i64 = 15;
/// Default and largest page of `GET /snapshots`.
pub const SNAPSHOT_PAGE: i64 = 100;

/// A random lowercase hex suffix for generated template names.
fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}

/// Maps a node failure of a snapshot.
fn snapshot_error(id: &SandboxId, name: &TemplateName, err: NodeError) -> Error {
    match err.code {
        ErrorCode::SandboxNotFound => Error::SandboxNotFound(id.to_string()),
        ErrorCode::TemplateExists => {
            Error::Conflict(format!("a template named '{name}' already exists"))
        }
        ErrorCode::Unsupported => Error::NotImplemented(err.message),
        _ => Error::Node(err),
    }
}

impl Core {
    /// Takes a snapshot of one of the team's sandboxes as template `name` (generated when
    /// `None`).
    pub(crate) async fn create_snapshot(
        &self,
        team: &TeamId,
        id: &SandboxId,
        name: Option<&str>,
    ) -> Result<SnapshotRecord, Error> {
        let started = std::time::Instant::now();
        let result = async {
            let name = match name {
                Some(raw) => TemplateName::parse(raw).map_err(|_| {
                    Error::Invalid(format!(
                        "invalid snapshot name {raw:?}: 1 to 64 characters of a-z, 0-9, '.', '_' \
                         and '-', starting with a letter or digit"
                    ))
                })?,
                None => TemplateName::parse(&format!("snap-{}", random_suffix()))
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            };
            if super::build::is_hidden_template(&name) {
                return Err(Error::Invalid(format!(
                    "snapshot names must not start with {}",
                    super::build::HIDDEN_PREFIXES.join(", ")
                )));
            }
            self.visible(team, id).await?;
            if self.store.snapshot(&name).await?.is_some()
                || self.store.template_record(&name).await?.is_some()
                || self.node.template(&name).await?.is_some()
            {
                return Err(Error::Conflict(format!(
                    "a template named '{name}' already exists"
                )));
            }
            let made = {
                let _held = self.sandbox_locks.lock(id).await;
                self.visible(team, id).await?;
                self.node
                    .snapshot(id, &name)
                    .await
                    .map_err(|e| snapshot_error(id, &name, e))?
            };
            let rec = SnapshotRecord {
                name: name.clone(),
                team_id: team.clone(),
                sandbox_id: id.clone(),
                created_at: Utc::now(),
                size_bytes: made.size_bytes,
            };
            if !self.store.insert_snapshot(&rec).await? {
                let _ = self.node.delete_template(&name).await;
                return Err(Error::Conflict(format!(
                    "a snapshot named '{name}' already exists"
                )));
            }
            self.emit(
                id,
                crate::events::EventKind::Checkpointed {
                    snapshot_id: Some(snapshot_id(&name)),
                },
            )
            .await;
            tracing::info!(sandbox_id = %id, snapshot = %name, size_bytes = made.size_bytes, "snapshot created");
            Ok(rec)
        }
        .await;
        super::record_operation("snapshot", started, &result);
        result
    }

    /// The team's snapshots, newest first.
    pub(crate) async fn list_snapshots(
        &self,
        team: &TeamId,
        query: SnapshotQuery,
    ) -> Result<Vec<SnapshotRecord>, Error> {
        Ok(self.store.snapshots(team, &query).await?)
    }

    /// Deletes one of the team's snapshots (`DELETE /templates/{id}`); `false` if the team
    /// has no snapshot of that name. Templates that are not snapshots cannot be deleted here.
    pub(crate) async fn delete_snapshot(&self, team: &TeamId, raw: &str) -> Result<bool, Error> {
        // `namespace/name:tag` as the SDKs send it; snapshots have one tag, `default`.
        let bare = raw.rsplit('/').next().unwrap_or(raw);
        let Ok(name) = TemplateName::parse(bare) else {
            return Ok(false);
        };
        match self.store.snapshot(&name).await? {
            Some(rec) if &rec.team_id == team => {}
            Some(_) => return Ok(false),
            None if self.node.template(&name).await?.is_some() => {
                return Err(Error::Forbidden(format!(
                    "template '{name}' is not a snapshot; node templates are managed with \
                     `paddock template delete` on the node"
                )))
            }
            None => return Ok(false),
        }
        self.node.delete_template(&name).await?;
        self.store.delete_snapshot(&name).await?;
        tracing::info!(snapshot = %name, "snapshot deleted");
        Ok(true)
    }

    /// Forks one of the team's sandboxes into `count` new ones (see the module docs). The
    /// outer error is for the whole request (parent not found, bad input); each child has
    /// its own result.
    pub(crate) async fn fork(
        self: &Arc<Self>,
        team: &TeamId,
        id: &SandboxId,
        count: u32,
        timeout_secs: i64,
    ) -> Result<Vec<Result<SandboxRecord, Error>>, Error> {
        let started = std::time::Instant::now();
        let result = async {
            if !(1..=MAX_FORK_COUNT).contains(&count) {
                return Err(Error::Invalid(format!(
                    "count must be from 1 to {MAX_FORK_COUNT}, got {count}"
                )));
            }
            let timeout = validate::timeout("timeout", timeout_secs)?;
            if self.is_shutting_down() {
                return Err(Error::ShuttingDown);
            }
            let parent = self.visible(team, id).await?;
            let permits: Vec<_> = (0..count).map(|_| self.admission.try_admit(team)).collect();
            if let Some(Err(rejected)) = permits.first() {
                if permits.iter().all(Result::is_err) {
                    return Err(rejected.clone().into());
                }
            }
            // Unguessable (96 random bits) and gone within milliseconds: no other team can start
            // a sandbox from it in between.
            let private = TemplateName::parse(&format!(
                "{FORK_PREFIX}{}",
                hex::encode(rand::random::<[u8; 12]>())
            ))
            .map_err(|e| Error::Invalid(e.to_string()))?;
            let started = std::time::Instant::now();
            let made = {
                let _held = self.sandbox_locks.lock(id).await;
                self.visible(team, id).await?;
                self.node
                    .snapshot(id, &private)
                    .await
                    .map_err(|e| snapshot_error(id, &private, e))?
            };
            let copied_ms = started.elapsed().as_secs_f64() * 1000.0;
            let lifecycle = self.store.lifecycle(id).await?;
            let sent = self.store.sent_to_node(id).await?.unwrap_or_default();
            let spec = CreateSpec {
                template: parent
                    .alias
                    .clone()
                    .unwrap_or_else(|| parent.template.to_string()),
                timeout_secs: timeout,
                metadata: parent.metadata.clone(),
                env_vars: sent.env_vars,
                auto_pause: lifecycle.auto_pause,
                auto_resume: lifecycle.auto_resume,
                auto_pause_memory: lifecycle.pause_to_disk.then_some(false),
                idempotency_key: None,
                allow_internet_access: None,
                network: None,
                node_template: Some(private.clone()),
                egress: Some(sent.egress),
                cold: true,
            };
            let resources = made.template.resources;
            let children = permits.into_iter().map(|permit| {
                let (spec, template) = (spec.clone(), parent.template.clone());
                async move {
                    let permit = permit?;
                    self.create_new(team, spec, template, resources, timeout, None, permit)
                        .await
                }
            });
            let results = futures::future::join_all(children).await;
            // The children hold the layers; the private template's name is not needed any more.
            if let Err(e) = self.node.delete_template(&private).await {
                tracing::warn!(template = %private, error = %e, "removing a fork's private template");
            }
            tracing::info!(
                sandbox_id = %id,
                count,
                ok = results.iter().filter(|r| r.is_ok()).count(),
                layer_bytes = made.size_bytes,
                copy_ms = copied_ms,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "sandbox forked"
            );
            Ok(results)
        }
        .await;
        super::record_operation("fork", started, &result);
        result
    }
}

/// Prefix of a fork's private template (`fork-` + 24 random hex digits; hidden, see
/// [`super::build::is_hidden_template`]).
pub(crate) const FORK_PREFIX: &str = "fork-";

/// The id clients use for a snapshot (`<name>:default`).
pub fn snapshot_id(name: &TemplateName) -> String {
    format!("{name}:default")
}
