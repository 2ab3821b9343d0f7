//! Create: validate, look the template up, insert a `creating` record, ask the node, then move
//! to `running` (or to `error` and `stopped`, cleaning the node up, on failure). The node call
//! runs in its own task so a client that disconnects mid-create cannot leave a half-made
//! sandbox behind. `Idempotency-Key` retries within 10 minutes get the same sandbox back: the key
//! is recorded by that task, which holds the key's lock until the create is done, so a retry
//! after a client disconnect waits for and returns the first create's sandbox.
//!
//! A warm sandbox is claimed from the node before the record is written (its id becomes the
//! record's), so a create served by a warm pool writes the same records as any other.
//!
//! Admission comes first, before any template lookup or node work: a create over the node's or
//! its team's limit of creates in flight is refused at once (see [`super::admission`]); the
//! permit travels with the create task and is given back when that task ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use chrono::{Duration, Utc};
use paddock_domain::{SandboxId, SandboxState, TemplateName};
use paddock_node_contract::{CreateRequest, ErrorCode};

use super::admission::AdmissionPermit;
use super::{new_access_token, validate, Core, Error, CLIENT_ID};
use crate::store::{SandboxRecord, TeamId};

/// How long an `Idempotency-Key` keeps returning the same sandbox.
pub const IDEMPOTENCY_WINDOW_SECS: i64 = 600;

/// What a client asked for, already decoded from JSON.
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    /// Template reference as sent (`templateID`).
    pub template: String,
    /// Seconds until the sandbox is killed.
    pub timeout_secs: i64,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Environment variables for the sandbox.
    pub env_vars: HashMap<String, String>,
    /// `autoPause` (pause on timeout) was requested.
    pub auto_pause: bool,
    /// `autoResume.enabled`: traffic resumes the sandbox while it is paused.
    pub auto_resume: bool,
    /// `autoPauseMemory` as sent (`false` = `autoPause` pauses to disk: files only).
    pub auto_pause_memory: Option<bool>,
    /// The `Idempotency-Key` header (v2 only).
    pub idempotency_key: Option<String>,
    /// `allow_internet_access` as sent.
    pub allow_internet_access: Option<bool>,
    /// `network` as sent.
    pub network: Option<crate::wire::NetworkBody>,
    /// The template the node starts the sandbox from when it is not the one recorded (a
    /// fork's private snapshot of its parent; the record keeps the parent's template).
    pub node_template: Option<TemplateName>,
    /// The egress policy to apply as it is, instead of one made from `allow_internet_access`
    /// and `network` (a fork takes its parent's).
    pub egress: Option<paddock_domain::EgressPolicy>,
    /// Never take a warm sandbox (a fork's child starts from its parent's private snapshot).
    pub cold: bool,
}

/// The right to create the sandbox for an `Idempotency-Key`: the key and its held lock, kept
/// by the create task until the create is finished and recorded.
pub(super) struct IdempotencyClaim {
    key: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Records how long `phase` of a create took since `*since`, and restarts the clock.
fn phase_done(phase: &str, since: &mut Instant) {
    let now = Instant::now();
    paddock_telemetry::CREATE_PHASE.observe(&[phase], now - *since);
    *since = now;
}

/// The `outcome` label of a create that failed with `e`.
fn failure_outcome(e: &Error) -> &'static str {
    match e {
        Error::Invalid(_) => "invalid",
        Error::TemplateNotFound(_) => "template_not_found",
        Error::TemplatePreparing(_) => "template_preparing",
        Error::Busy(_) => "busy",
        Error::Saturated(_) => "rate_limited",
        Error::Forbidden(_) => "forbidden",
        Error::ShuttingDown => "shutting_down",
        Error::StoppedDuringCreate(_) => "stopped",
        Error::CreateFailed(_) => "node_failed",
        Error::Store(_) => "store_failed",
        _ => "error",
    }
}

impl Core {
    /// Creates a sandbox for `team`; returns its record once it runs. Each phase's time goes to
    /// `paddock_create_phase_seconds`, the outcome to `paddock_creates_total`.
    pub(crate) async fn create(
        self: &Arc<Self>,
        team: &TeamId,
        spec: CreateSpec,
    ) -> Result<SandboxRecord, Error> {
        let started = Instant::now();
        let span = paddock_telemetry::span!(
            "create",
            template = %spec.template,
            sandbox_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = self.create_timed(team, spec).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(rec) => {
                span.record("sandbox_id", tracing::field::display(&rec.id));
                paddock_telemetry::CREATE_PHASE.observe(&["total"], started.elapsed());
                "ok"
            }
            Err(e) => failure_outcome(e),
        };
        span.record("outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        paddock_telemetry::CREATES.inc(&[outcome]);
        result
    }

    async fn create_timed(
        self: &Arc<Self>,
        team: &TeamId,
        mut spec: CreateSpec,
    ) -> Result<SandboxRecord, Error> {
        let mut clock = Instant::now();
        // Each phase's span lives from its start to its end (`drop`).
        let phase = paddock_telemetry::span!("create.validate");
        let timeout = validate::timeout("timeout", spec.timeout_secs)?;
        validate::metadata(&spec.metadata)?;
        validate::env_vars(&spec.env_vars)?;
        validate::egress(spec.allow_internet_access, spec.network.as_ref())?;
        if spec.auto_pause_memory == Some(false) && !spec.auto_pause {
            return Err(Error::Invalid(
                "autoPauseMemory: false needs autoPause: true".into(),
            ));
        }
        if spec.auto_pause_memory == Some(false) && spec.auto_resume {
            return Err(Error::Invalid(
                "autoPauseMemory: false (filesystem-only pause) cannot be combined with \
                 autoResume"
                    .into(),
            ));
        }
        if spec.template.trim().is_empty() {
            return Err(Error::Invalid("templateID must not be empty".into()));
        }
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        phase_done("validate", &mut clock);
        drop(phase);
        let phase = paddock_telemetry::span!("create.admit");
        let permit = self.admission.try_admit(team)?;
        phase_done("admit", &mut clock);
        drop(phase);
        // Snapshots and built templates are their team's: another team sees no such template;
        // hidden templates (build layers, base images, forks) are nobody's to start from. A
        // tag starts the build it names; the record keeps the template's name.
        let resolved = self
            .resolve_template(team, &spec.template)
            .instrument(paddock_telemetry::span!("create.template"))
            .await?;
        phase_done("template", &mut clock);
        let template = resolved.name;
        if resolved.node_template != template {
            spec.node_template = Some(resolved.node_template);
        }

        let Some(key) = spec.idempotency_key.clone() else {
            return self
                .create_new(
                    team,
                    spec,
                    template,
                    resolved.resources,
                    timeout,
                    None,
                    permit,
                )
                .await;
        };
        validate::idempotency_key(&key)?;
        let lock = self.idempotency_lock(team, &key);
        let guard = lock.lock_owned().await;
        let since = Utc::now() - Duration::seconds(IDEMPOTENCY_WINDOW_SECS);
        if let Some(id) = self.store.idempotent_sandbox(team, &key, since).await? {
            if let Some(rec) = self.store.sandbox(&id).await? {
                if rec.state == SandboxState::Running {
                    tracing::debug!(sandbox_id = %id, "idempotent create returns existing sandbox");
                    return Ok(rec);
                }
            }
        }
        let claim = IdempotencyClaim { key, _guard: guard };
        self.create_new(
            team,
            spec,
            template,
            resolved.resources,
            timeout,
            Some(claim),
            permit,
        )
        .await
    }

    /// Records and starts one sandbox on a detached task that holds `permit` (its admission)
    /// and `claim` until the create is finished and recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_new(
        self: &Arc<Self>,
        team: &TeamId,
        spec: CreateSpec,
        template: TemplateName,
        resources: paddock_domain::Resources,
        timeout_secs: i64,
        claim: Option<IdempotencyClaim>,
        permit: AdmissionPermit,
    ) -> Result<SandboxRecord, Error> {
        let egress = match spec.egress.clone() {
            Some(policy) => policy,
            None => validate::egress(spec.allow_internet_access, spec.network.as_ref())?,
        };
        let mut request = CreateRequest {
            id: SandboxId::generate(),
            template: spec.node_template.clone().unwrap_or(template.clone()),
            env_vars: spec.env_vars,
            access_token: new_access_token(),
            resources: None,
            network: egress,
            start_cmd: true,
        };
        // A warm sandbox of the template, if the node has one ready: its id becomes the
        // sandbox's, and the node hands it over instead of starting one.
        if !spec.cold {
            let mut clock = Instant::now();
            let claimed = self
                .node
                .claim_warm(&request)
                .instrument(paddock_telemetry::span!("create.claim_warm"))
                .await;
            match claimed {
                Ok(Some(id)) => request.id = id,
                Ok(None) => {}
                // No warm sandbox to be had: a cold start, which reports a real failure.
                Err(err) => tracing::debug!(error = %err, "claiming a warm sandbox failed"),
            }
            phase_done("claim_warm", &mut clock);
        }
        let now = Utc::now();
        let record = SandboxRecord {
            id: request.id.clone(),
            team_id: team.clone(),
            template: template.clone(),
            alias: Some(spec.template.clone()),
            state: SandboxState::Creating,
            metadata: spec.metadata,
            access_token: request.access_token.clone(),
            started_at: now,
            end_at: now + Duration::seconds(timeout_secs),
            resources,
            client_id: CLIENT_ID.to_string(),
            end_reason: None,
        };
        let sent = crate::store::SentToNode {
            env_vars: request.env_vars.clone(),
            egress: request.network.clone(),
            pause_mode: None,
        };
        let lifecycle = crate::store::SandboxLifecycle {
            auto_pause: spec.auto_pause,
            auto_resume: spec.auto_resume,
            pause_to_disk: spec.auto_pause_memory == Some(false),
        };
        // Detached (and tracked, so shutdown waits for it) so that a cancelled request still
        // finishes and records the create, idempotency key included.
        let core = Arc::clone(self);
        let task = self.spawn_create(async move {
            // One write: the record, its lifecycle, its first log entry, its idempotency key.
            let new = crate::store::NewSandbox {
                log: crate::logs::created_entry(
                    record.template.as_str(),
                    record.alias.as_deref(),
                    &record.resources,
                    timeout_secs,
                ),
                record,
                lifecycle,
                idempotency: claim.as_ref().map(|c| (c.key.clone(), Utc::now())),
                sent,
            };
            let mut clock = Instant::now();
            core.store
                .insert_new_sandbox(&new)
                .instrument(paddock_telemetry::span!("create.record"))
                .await?;
            phase_done("record", &mut clock);
            let record = new.record;
            tracing::info!(sandbox_id = %record.id, template = %record.template, "creating sandbox");
            let result = core.finish_create(record, request, timeout_secs).await;
            // A retry with the same key waits for this moment, then finds the outcome.
            drop(claim);
            drop(permit);
            result
        })?;
        task.await?
    }

    async fn finish_create(
        &self,
        mut record: SandboxRecord,
        request: CreateRequest,
        timeout_secs: i64,
    ) -> Result<SandboxRecord, Error> {
        let id = record.id.clone();
        let template = request.template.to_string();
        let mut clock = Instant::now();
        let created = self
            .node
            .create(request)
            .instrument(paddock_telemetry::span!("create.node"))
            .await;
        phase_done("node", &mut clock);
        let settle = paddock_telemetry::span!("create.settle");
        match created {
            Ok(started) => {
                SandboxState::Creating.transition(SandboxState::Running)?;
                let now = Utc::now();
                let end = now + Duration::seconds(timeout_secs);
                // One write: the state and the log entry saying so.
                let running = self
                    .store
                    .set_running_logged(
                        &id,
                        started.resources,
                        now,
                        end,
                        &crate::logs::running_entry(&started.resources),
                    )
                    .await?;
                if !running {
                    // Stopped (shutdown) while the node was starting it: undo the start.
                    if let Err(e) = self.node.kill(&id).await {
                        tracing::warn!(sandbox_id = %id, error = %e, "cleanup kill failed");
                    }
                    return Err(Error::StoppedDuringCreate(id));
                }
                tracing::info!(
                    sandbox_id = %id,
                    from = "creating",
                    to = "running",
                    "sandbox state changed"
                );
                record.state = SandboxState::Running;
                record.resources = started.resources;
                record.started_at = now;
                record.end_at = end;
                self.events
                    .record(&record, crate::events::EventKind::Created)
                    .await;
                if !matches!(self.node.status(&id).await, Ok(Some(_))) {
                    // It died while being created: its exit event found it `creating` and was
                    // ignored, so settle it here.
                    tracing::warn!(sandbox_id = %id, "sandbox exited while it was being created");
                    self.handle_exit(&id, paddock_node_contract::ExitReason::Exited)
                        .await?;
                    return Err(Error::CreateFailed(
                        "the sandbox exited while it was starting".into(),
                    ));
                }
                self.expiry_wake.notify_one();
                phase_done("settle", &mut clock);
                drop(settle);
                Ok(record)
            }
            Err(err) => {
                let reason = err.to_string();
                tracing::error!(sandbox_id = %id, error = ?err, "sandbox creation failed");
                let owned = self
                    .advance(
                        &id,
                        SandboxState::Creating,
                        SandboxState::Error,
                        Some(&reason),
                    )
                    .await?;
                if owned {
                    self.clean_up_or_retry(&id, &reason).await?;
                } else if let Err(e) = self.node.kill(&id).await {
                    tracing::warn!(sandbox_id = %id, error = %e, "cleanup after failed create failed");
                }
                Err(match err.code {
                    // The node closed for shutdown: 503 like any create during shutdown.
                    ErrorCode::Busy if self.is_shutting_down() => Error::ShuttingDown,
                    // No node can take it now (full, or none reachable in a cluster): 429 with
                    // Retry-After, so the SDK's caller retries instead of giving up.
                    ErrorCode::Busy | ErrorCode::Unavailable => Error::Busy(err.message),
                    ErrorCode::TemplateNotFound => Error::TemplateNotFound(template),
                    _ => Error::CreateFailed(err.message),
                })
            }
        }
    }
}
