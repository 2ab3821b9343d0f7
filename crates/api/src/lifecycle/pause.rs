//! Pause and resume: `running ⇄ paused`, in memory on the node (cgroup freezer), with the state
//! persisted in the store, so a restarted server finds a frozen sandbox as `paused` again.
//!
//! - **pause** (`POST …/pause`, and the expiry task for `autoPause` sandboxes): node first, then
//!   the record. A failed freeze leaves the sandbox running and the record untouched (503); a
//!   paused sandbox answers 409.
//! - **resume** (connect v1/v2, deprecated `POST …/resume`, and the proxy for `autoResume`
//!   sandboxes): thaw, `paused → running`, end time = now + timeout, expiry woken.
//! - A resume that starts the sandbox again from disk (paused to disk, or `cold`) is a create
//!   for admission control: over the limits of creates in flight it is refused with 429, as
//!   is one the node refuses for capacity.
//! - While paused the end time does not apply (the expiry task only looks at running
//!   sandboxes): E2B keeps paused sandboxes until they are resumed or killed.
//!
//! Pause and resume run under the sandbox's transition lock (see `locks`), like connect, kill
//! and the timeouts, so a pause racing a resume or a connect cannot leave the record and the
//! freezer disagreeing.

use chrono::{Duration, Utc};
use paddock_domain::{SandboxId, SandboxState};
use paddock_node_contract::{ErrorCode, NodeError, PauseMode, SandboxStatus};

use super::{validate, Core, Error};
use crate::store::{SandboxLifecycle, SandboxRecord, TeamId};

/// Default timeout of the deprecated `POST /sandboxes/{id}/resume`, in seconds.
pub const RESUME_DEFAULT_TIMEOUT_SECS: i64 = 15;
/// Timeout given to a sandbox woken by traffic (`autoResume`), in seconds: the SDKs' default
/// sandbox timeout.
pub const AUTO_RESUME_TIMEOUT_SECS: i64 = 300;

/// What the proxy learns when it asks to wake a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The sandbox runs (it was resumed now, or was not paused).
    Running,
    /// It is paused and does not resume on traffic.
    Paused,
    /// No such live sandbox.
    NotFound,
}

/// Maps a node failure of pause or resume to the lifecycle error.
fn node_error(id: &SandboxId, err: NodeError) -> Error {
    match err.code {
        ErrorCode::SandboxNotFound => Error::SandboxNotFound(id.to_string()),
        ErrorCode::Unsupported => Error::NotImplemented(err.message),
        _ => Error::PauseFailed(err.message),
    }
}

impl Core {
    /// Pauses one of the team's running sandboxes (`POST …/pause`): in memory, or to disk
    /// (`memory: false`: files kept, processes and memory not). A paused sandbox is a
    /// [`Error::Conflict`].
    pub(crate) async fn pause(
        &self,
        team: &TeamId,
        id: &SandboxId,
        to_disk: bool,
    ) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let result = async {
            self.visible(team, id).await?;
            let _held = self.sandbox_locks.lock(id).await;
            self.pause_locked(id, "pause requested", to_disk).await
        }
        .await;
        super::record_operation("pause", started, &result);
        result
    }

    /// The pause itself; the caller holds the sandbox's transition lock.
    pub(super) async fn pause_locked(
        &self,
        id: &SandboxId,
        why: &str,
        to_disk: bool,
    ) -> Result<(), Error> {
        let rec = self
            .store
            .sandbox(id)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(id.to_string()))?;
        match rec.state {
            SandboxState::Running => {}
            SandboxState::Paused => {
                return Err(Error::Conflict(format!("sandbox {id} is already paused")))
            }
            _ => return Err(Error::SandboxNotFound(id.to_string())),
        }
        let started = std::time::Instant::now();
        let paused = if to_disk {
            self.node.pause_to_disk(id).await
        } else {
            self.node.pause(id).await
        };
        paused.map_err(|e| node_error(id, e))?;
        let mode = if to_disk {
            PauseMode::Disk
        } else {
            PauseMode::Memory
        };
        self.store.set_pause_mode(id, Some(mode)).await?;
        SandboxState::Running.transition(SandboxState::Paused)?;
        if !self
            .store
            .set_state(id, SandboxState::Running, SandboxState::Paused, None)
            .await?
        {
            // Killed (or died) while it was being frozen: the kill thaws and removes it.
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        self.emit(id, crate::events::EventKind::Paused).await;
        tracing::info!(
            sandbox_id = %id,
            from = "running",
            to = "paused",
            to_disk,
            reason = why,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "sandbox state changed"
        );
        Ok(())
    }

    /// Resumes a paused sandbox of the team, giving it `timeout_secs` from now. Returns the
    /// record and whether it was paused (`false`: it was already running and is unchanged).
    pub(crate) async fn resume(
        &self,
        team: &TeamId,
        id: &SandboxId,
        timeout_secs: i64,
        cold: bool,
    ) -> Result<(SandboxRecord, bool), Error> {
        let timeout = validate::timeout("timeout", timeout_secs)?;
        self.visible(team, id).await?;
        self.resume_by_id(id, timeout, cold).await
    }

    /// [`Core::resume`] without the team check (the proxy's wake-up and connect use it).
    /// `cold` (`memory: false`) starts the sandbox again from its files even when it is
    /// paused in memory (its processes are not kept).
    pub(crate) async fn resume_by_id(
        &self,
        id: &SandboxId,
        timeout_secs: i64,
        cold: bool,
    ) -> Result<(SandboxRecord, bool), Error> {
        let started = std::time::Instant::now();
        let result = async {
            let _held = self.sandbox_locks.lock(id).await;
            self.resume_locked(id, timeout_secs, cold).await
        }
        .await;
        super::record_operation("resume", started, &result);
        result
    }

    /// [`Core::resume_by_id`] for a caller that holds the sandbox's transition lock.
    pub(super) async fn resume_locked(
        &self,
        id: &SandboxId,
        timeout_secs: i64,
        cold: bool,
    ) -> Result<(SandboxRecord, bool), Error> {
        let mut rec = self
            .store
            .sandbox(id)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(id.to_string()))?;
        match rec.state {
            SandboxState::Paused => {}
            SandboxState::Running => return Ok((rec, false)),
            _ => return Err(Error::SandboxNotFound(id.to_string())),
        }
        let mode = self
            .store
            .sent_to_node(id)
            .await?
            .and_then(|sent| sent.pause_mode);
        // Starting again from disk costs what a create costs: it is admitted like one.
        let _permit = if cold || mode == Some(PauseMode::Disk) {
            Some(self.admission.try_admit(&rec.team_id)?)
        } else {
            None
        };
        let started = std::time::Instant::now();
        if cold && mode == Some(PauseMode::Memory) {
            self.node
                .pause_to_disk(id)
                .await
                .map_err(|e| node_error(id, e))?;
            self.store.set_pause_mode(id, Some(PauseMode::Disk)).await?;
        }
        self.node.resume(id).await.map_err(|e| match e {
            // The node is full (a start from disk takes a slot): 429, unless it is closing.
            e if e.is(ErrorCode::Busy) && !self.is_shutting_down() => Error::Busy(e.message),
            other => node_error(id, other),
        })?;
        self.store.set_pause_mode(id, None).await?;
        SandboxState::Paused.transition(SandboxState::Running)?;
        if !self
            .store
            .set_state(id, SandboxState::Paused, SandboxState::Running, None)
            .await?
        {
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        let end = Utc::now() + Duration::seconds(timeout_secs);
        if !self
            .store
            .set_end_at(id, SandboxState::Running, end)
            .await?
        {
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        self.expiry_wake.notify_one();
        self.emit(id, crate::events::EventKind::Resumed).await;
        tracing::info!(
            sandbox_id = %id,
            from = "paused",
            to = "running",
            end_at = %end,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "sandbox state changed"
        );
        rec.state = SandboxState::Running;
        rec.end_at = end;
        Ok((rec, true))
    }

    /// Called by the proxy for traffic to a sandbox the node reports paused: resumes it if it
    /// asked for `autoResume`.
    pub(crate) async fn wake(&self, id: &SandboxId) -> Result<Wake, Error> {
        let Some(rec) = self.store.sandbox(id).await? else {
            return Ok(Wake::NotFound);
        };
        match rec.state {
            SandboxState::Running => return Ok(Wake::Running),
            SandboxState::Paused => {}
            _ => return Ok(Wake::NotFound),
        }
        if !self.store.lifecycle(id).await?.auto_resume {
            return Ok(Wake::Paused);
        }
        match self.resume_by_id(id, AUTO_RESUME_TIMEOUT_SECS, false).await {
            Ok(_) => {
                tracing::info!(sandbox_id = %id, "sandbox resumed by traffic (autoResume)");
                Ok(Wake::Running)
            }
            Err(Error::SandboxNotFound(_)) => Ok(Wake::NotFound),
            Err(e) => Err(e),
        }
    }

    /// What was sent to the node for a sandbox and how it is paused, for
    /// `GET /sandboxes/{id}` (the default when the record is gone).
    pub(crate) async fn sent_to_node(
        &self,
        id: &SandboxId,
    ) -> Result<crate::store::SentToNode, Error> {
        Ok(self.store.sent_to_node(id).await?.unwrap_or_default())
    }

    /// The lifecycle settings of a sandbox, for `GET /sandboxes/{id}`.
    pub(crate) async fn lifecycle_of(&self, id: &SandboxId) -> Result<SandboxLifecycle, Error> {
        Ok(self.store.lifecycle(id).await?)
    }

    /// After a restart: makes the node's freezer agree with the records that were kept
    /// (a record `paused` whose sandbox runs is frozen again; a `running` one found frozen,
    /// e.g. after a crash in the middle of a pause, is thawed).
    pub(crate) async fn reconcile_paused(&self, kept: &[SandboxId]) -> Result<(), Error> {
        for id in kept {
            let Some(rec) = self.store.sandbox(id).await? else {
                continue;
            };
            let status = match self.node.status(id).await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "cannot ask the node how the sandbox is after restart");
                    continue;
                }
            };
            let frozen = matches!(status, Some(SandboxStatus::Paused(_)));
            let result = match rec.state {
                SandboxState::Paused if !frozen => {
                    self.node.pause(id).await.map(|()| Some(PauseMode::Memory))
                }
                SandboxState::Paused => Ok(match status {
                    Some(SandboxStatus::Paused(mode)) => Some(mode),
                    _ => None,
                }),
                SandboxState::Running if frozen => self.node.resume(id).await.map(|()| None),
                _ => Ok(None),
            };
            // The record says how the node keeps it (rows from before the store kept the
            // pause mode learn it here).
            let result = match result {
                Ok(mode) => self
                    .store
                    .set_pause_mode(id, mode)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(Error::Node(e)),
            };
            if let Err(e) = result {
                tracing::warn!(sandbox_id = %id, state = %rec.state, error = %e, "cannot restore the paused state after restart");
            }
        }
        Ok(())
    }
}
