//! Timeouts: `set_timeout` sets the end time to `now + timeout` (it may shorten it), `refresh`
//! extends it by a keep-alive duration without ever shortening. Both wake the expiry task and
//! run under the sandbox's transition lock.

use chrono::{Duration, Utc};
use paddock_domain::{SandboxId, SandboxState};

use super::{validate, Core, Error};
use crate::store::TeamId;

/// The shortest (and default) keep-alive of a refresh, in seconds.
pub const REFRESH_MIN_SECS: i64 = 15;
/// The longest keep-alive of a refresh, in seconds.
pub const REFRESH_MAX_SECS: i64 = 3600;

impl Core {
    /// Sets a running sandbox's end time to `now + timeout_secs`.
    pub(crate) async fn set_timeout(
        &self,
        team: &TeamId,
        id: &SandboxId,
        timeout_secs: i64,
    ) -> Result<(), Error> {
        let timeout = validate::timeout("timeout", timeout_secs)?;
        self.visible(team, id).await?;
        let _held = self.sandbox_locks.lock(id).await;
        let rec = self.visible(team, id).await?;
        let end = Utc::now() + Duration::seconds(timeout);
        if !self.store.set_end_at(id, rec.state, end).await? {
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        tracing::debug!(sandbox_id = %id, end_at = %end, "sandbox timeout set");
        self.emit(id, crate::events::EventKind::ends(end)).await;
        self.expiry_wake.notify_one();
        Ok(())
    }

    /// Keeps a sandbox alive for at least `duration_secs` more (default and minimum 15 s).
    pub(crate) async fn refresh(
        &self,
        team: &TeamId,
        id: &SandboxId,
        duration_secs: Option<i64>,
    ) -> Result<(), Error> {
        let duration = duration_secs.unwrap_or(REFRESH_MIN_SECS);
        if !(0..=REFRESH_MAX_SECS).contains(&duration) {
            return Err(Error::Invalid(format!(
                "duration must be between 0 and {REFRESH_MAX_SECS} seconds, got {duration}"
            )));
        }
        self.visible(team, id).await?;
        let _held = self.sandbox_locks.lock(id).await;
        let rec = self.visible(team, id).await?;
        let wanted = Utc::now() + Duration::seconds(duration.max(REFRESH_MIN_SECS));
        if wanted > rec.end_at
            && !self
                .store
                .set_end_at(id, SandboxState::Running, wanted)
                .await?
        {
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        if wanted > rec.end_at {
            self.emit(id, crate::events::EventKind::ends(wanted)).await;
        }
        Ok(())
    }
}
