//! The sandbox lifecycle, independent of HTTP: one file per operation (create, connect, kill,
//! timeout, list/get), the background tasks (expiry, exit watcher) and startup reconciliation.
//! Every state change goes through [`SandboxState::transition`] and is persisted with a
//! compare-and-set ([`Core::advance`]), so concurrent operations on one sandbox cannot both win;
//! the operations of one sandbox also run one at a time under its lock (`locks`), each reading
//! the record after taking it.
//!
//! [`Core`] holds the store, the node and the expiry wake-up; routes call its operations and map
//! [`Error`] to HTTP. Node work that must finish even if the client goes away (creates, kills)
//! runs on detached tasks tracked by [`Core::tasks`], so shutdown can wait for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paddock_domain::{SandboxId, SandboxState, TransitionError};
use paddock_node_contract::{Node, NodeError};
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;

use crate::store::{SandboxRecord, Store, StoreError, TeamId};
use crate::ApiConfig;

pub(crate) mod admission;
pub(crate) mod background;
pub(crate) mod build;
pub(crate) mod build_files;
pub(crate) mod cleanup;
pub(crate) mod connect;
pub(crate) mod create;
pub(crate) mod kill;
pub(crate) mod locks;
pub(crate) mod network;
pub(crate) mod pause;
pub(crate) mod query;
pub(crate) mod reconcile;
pub(crate) mod snapshot;
pub mod system_templates;
pub(crate) mod tags;
pub(crate) mod timeout;
pub(crate) mod validate;

/// The `clientID` every sandbox reports (the reference's constant).
pub const CLIENT_ID: &str = "6532622b";

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such template.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// A template every server provides is not ready yet (being built on the first start);
    /// the message says since when.
    #[error("{0}")]
    TemplatePreparing(String),
    /// No such template build for this team.
    #[error("build '{0}' not found")]
    BuildNotFound(String),
    /// No such sandbox for this team (or it is no longer running).
    #[error("sandbox '{0}' not found")]
    SandboxNotFound(String),
    /// A feature Paddock does not have yet.
    #[error("{0}")]
    NotImplemented(String),
    /// The node has no capacity right now; retry later.
    #[error("{0}")]
    Busy(String),
    /// Too many creates in flight on the node or for the team; retry later.
    #[error(transparent)]
    Saturated(#[from] admission::Rejected),
    /// The sandbox is not in a state that allows the operation (e.g. pausing a paused one).
    #[error("{0}")]
    Conflict(String),
    /// The operation is not allowed on this resource (e.g. deleting a node template).
    #[error("{0}")]
    Forbidden(String),
    /// Pausing or resuming failed on the node; the sandbox was left as it was.
    #[error("cannot pause or resume the sandbox now: {0}")]
    PauseFailed(String),
    /// The control plane is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The node could not start the sandbox; the message is the node's reason.
    #[error("failed to create sandbox: {0}")]
    CreateFailed(String),
    /// The sandbox was killed (e.g. by shutdown) while it was being created.
    #[error("sandbox '{0}' was stopped while it was being created")]
    StoppedDuringCreate(SandboxId),
    /// The node failed to kill a sandbox.
    #[error("failed to kill sandbox {id}")]
    Kill {
        /// The sandbox.
        id: SandboxId,
        /// The node's error.
        #[source]
        source: NodeError,
    },
    /// Another node failure.
    #[error("node request failed")]
    Node(#[from] NodeError),
    /// The store failed.
    #[error("store request failed")]
    Store(#[from] StoreError),
    /// A file of the control plane could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A detached lifecycle task panicked.
    #[error("lifecycle task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A bug: an operation asked for an illegal transition.
    #[error("internal state error")]
    Transition(#[from] TransitionError),
}

/// Per-(team, key) locks of creates that carry an `Idempotency-Key`.
type IdempotencyLocks = Mutex<HashMap<(TeamId, String), Arc<tokio::sync::Mutex<()>>>>;

/// The lifecycle core shared by routes and background tasks.
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) node: Arc<dyn Node>,
    pub(crate) config: ApiConfig,
    /// Wakes the expiry task when an end time moved earlier (create, set_timeout).
    pub(crate) expiry_wake: Notify,
    /// Flips to `true` once shutdown starts.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Held while a create checks the shutdown flag and spawns its task, and while shutdown
    /// sets the flag: no create task can start after shutdown has begun waiting for them.
    create_gate: Mutex<()>,
    /// The detached create and kill tasks still running.
    pub(crate) tasks: TaskTracker,
    /// Sandboxes whose node cleanup failed, retried by the expiry task.
    pub(crate) cleanups: cleanup::Retries,
    /// Serialises creates that carry the same `Idempotency-Key` within a team.
    idempotency_locks: IdempotencyLocks,
    /// Serialises the transitions of one sandbox (see `locks`).
    pub(crate) sandbox_locks: locks::SandboxLocks,
    /// Lifecycle events: recorded, streamed, delivered to webhooks.
    pub(crate) events: Arc<crate::events::Events>,
    /// Template builds: the lock over template ownership, the upload-link key.
    pub(crate) builds: build::Builds,
    /// Limits on creates in flight, on the node and per team.
    pub(crate) admission: admission::Admission,
    /// Where the templates every server provides stand (see `system_templates`).
    pub(crate) system: system_templates::SystemTemplates,
}

/// Records how long a lifecycle `operation` (pause, resume, snapshot, fork, kill) took since
/// `started` and whether it succeeded, in `paddock_operation_seconds`.
pub(crate) fn record_operation<T>(
    operation: &str,
    started: std::time::Instant,
    result: &Result<T, Error>,
) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    paddock_telemetry::OPERATION.observe(&[operation, outcome], started.elapsed());
}

impl Core {
    pub(crate) fn new(store: Arc<dyn Store>, node: Arc<dyn Node>, config: ApiConfig) -> Self {
        Core {
            admission: admission::Admission::new(config.admission),
            events: crate::events::Events::new(&store),
            store,
            node,
            config,
            expiry_wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            create_gate: Mutex::new(()),
            tasks: TaskTracker::new(),
            cleanups: cleanup::Retries::default(),
            idempotency_locks: Mutex::new(HashMap::new()),
            sandbox_locks: locks::SandboxLocks::default(),
            builds: build::Builds::default(),
            system: system_templates::SystemTemplates::default(),
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Checks `from → to` with the state machine and persists it if the sandbox is still in
    /// `from`. Returns whether this call made the change.
    pub(crate) async fn advance(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        reason: Option<&str>,
    ) -> Result<bool, Error> {
        from.transition(to)?;
        let changed = self.store.set_state(id, from, to, reason).await?;
        if changed {
            self.emit_transition(id, from, to, reason).await;
            self.record_log(id, crate::logs::state_change_entry(from, to, reason))
                .await;
            tracing::info!(
                sandbox_id = %id,
                from = %from,
                to = %to,
                reason = reason.unwrap_or(""),
                "sandbox state changed"
            );
        }
        Ok(changed)
    }

    /// The record of a sandbox the team may see through the API: its own, running or paused.
    pub(crate) async fn visible(
        &self,
        team: &TeamId,
        id: &SandboxId,
    ) -> Result<SandboxRecord, Error> {
        match self.store.sandbox(id).await? {
            Some(rec)
                if &rec.team_id == team
                    && matches!(rec.state, SandboxState::Running | SandboxState::Paused) =>
            {
                Ok(rec)
            }
            _ => Err(Error::SandboxNotFound(id.to_string())),
        }
    }

    /// Spawns a create task on [`Core::tasks`] unless shutdown has begun.
    pub(crate) fn spawn_create<F>(
        &self,
        task: F,
    ) -> Result<tokio::task::JoinHandle<F::Output>, Error>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let _gate = self.create_gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        // The create's span goes with it (its node call is part of the caller's trace).
        Ok(self.tasks.spawn(tracing::Instrument::in_current_span(task)))
    }

    /// Sets the shutdown flag; after this no create task starts.
    pub(crate) fn begin_shutdown(&self) {
        let _gate = self.create_gate.lock().unwrap_or_else(|p| p.into_inner());
        self.shutdown.send_replace(true);
        self.tasks.close();
    }

    /// The lock serialising creates with one idempotency key.
    pub(crate) fn idempotency_lock(&self, team: &TeamId, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .idempotency_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds any more, so the map stays small.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry((team.clone(), key.to_string())).or_default())
    }

    /// Drives a sandbox that is no longer wanted from `state` to `stopped`, recording `reason`.
    /// Used when the node no longer has it (exit, reconcile, failed create).
    pub(crate) async fn settle_stopped(
        &self,
        id: &SandboxId,
        state: SandboxState,
        reason: &str,
    ) -> Result<(), Error> {
        use SandboxState::*;
        let path: &[SandboxState] = match state {
            Creating | Running | Paused => &[Stopping, Stopped],
            Stopping | Error => &[Stopped],
            Stopped => &[],
        };
        let mut current = state;
        for &next in path {
            if !self.advance(id, current, next, Some(reason)).await? {
                // Someone else moved it meanwhile; they will finish the job.
                return Ok(());
            }
            current = next;
        }
        Ok(())
    }
}

/// A random envd access token: 32 random bytes as 64 hex characters.
pub(crate) fn new_access_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use chrono::Utc;
    use paddock_domain::{Resources, TemplateName};

    async fn core_with(state: SandboxState) -> (tempfile::TempDir, Core, SandboxId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("paddock.db")).expect("open");
        let team = store.ensure_team("t").await.expect("team");
        let id = SandboxId::generate();
        let now = Utc::now();
        let rec = SandboxRecord {
            id: id.clone(),
            team_id: team,
            template: TemplateName::parse("base").expect("valid"),
            alias: None,
            state,
            metadata: Default::default(),
            access_token: new_access_token(),
            started_at: now,
            end_at: now,
            resources: Resources::default(),
            client_id: CLIENT_ID.into(),
            end_reason: None,
        };
        store.insert_sandbox(&rec).await.expect("insert");
        let node = paddock_node_contract::fake::FakeNode::new();
        let core = Core::new(Arc::new(store), node, crate::ApiConfig::new(dir.path()));
        (dir, core, id)
    }

    #[tokio::test]
    async fn illegal_transitions_are_refused_before_touching_the_store() {
        let (_dir, core, id) = core_with(SandboxState::Stopped).await;
        let err = core
            .advance(&id, SandboxState::Stopped, SandboxState::Running, None)
            .await
            .expect_err("stopped is final");
        assert!(matches!(err, Error::Transition(_)));
        let rec = core
            .store
            .sandbox(&id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(rec.state, SandboxState::Stopped);
    }

    #[tokio::test]
    async fn settling_walks_the_state_machine_to_stopped() {
        for start in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Stopping,
            SandboxState::Error,
        ] {
            let (_dir, core, id) = core_with(start).await;
            core.settle_stopped(&id, start, "test")
                .await
                .expect("settles");
            let rec = core
                .store
                .sandbox(&id)
                .await
                .expect("read")
                .expect("exists");
            assert_eq!(rec.state, SandboxState::Stopped, "from {start}");
            assert_eq!(rec.end_reason.as_deref(), Some("test"));
        }
    }

    #[tokio::test]
    async fn a_lost_race_leaves_the_winner_alone() {
        let (_dir, core, id) = core_with(SandboxState::Running).await;
        // Someone else already moved it to stopping: settling from the stale `running` is a no-op.
        assert!(core
            .advance(&id, SandboxState::Running, SandboxState::Stopping, None)
            .await
            .expect("cas"));
        core.settle_stopped(&id, SandboxState::Running, "late")
            .await
            .expect("no error");
        let rec = core
            .store
            .sandbox(&id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(rec.state, SandboxState::Stopping);
    }

    #[test]
    fn access_tokens_are_64_hex_and_distinct() {
        let (a, b) = (new_access_token(), new_access_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
