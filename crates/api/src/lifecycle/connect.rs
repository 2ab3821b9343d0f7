//! Connect: hand a running sandbox back to a client and extend its life. The end time only ever
//! grows here: `end = max(end, now + timeout)`. A paused sandbox is resumed (see `pause`) and
//! gets `end = now + timeout`. All of it runs under the sandbox's transition lock, on the
//! record read after taking it: a connect racing the timeout's pause waits for the freeze to
//! land, finds the sandbox paused and resumes it (never "running" on a frozen sandbox).

use chrono::{Duration, Utc};
use paddock_domain::{SandboxId, SandboxState};

use super::{validate, Core, Error};
use crate::store::{SandboxRecord, TeamId};

impl Core {
    /// Connects to a sandbox: a running one gets its end time extended to at least
    /// `now + timeout_secs`, a paused one is resumed (`cold`: started again from its files,
    /// not from memory). Returns the record and whether it was resumed.
    pub(crate) async fn connect(
        &self,
        team: &TeamId,
        id: &SandboxId,
        timeout_secs: i64,
        cold: bool,
    ) -> Result<(SandboxRecord, bool), Error> {
        let timeout = validate::timeout("timeout", timeout_secs)?;
        self.visible(team, id).await?;
        let _held = self.sandbox_locks.lock(id).await;
        let mut rec = self.visible(team, id).await?;
        if rec.state == SandboxState::Paused {
            return self.resume_locked(id, timeout, cold).await;
        }
        let wanted = Utc::now() + Duration::seconds(timeout);
        if wanted > rec.end_at {
            if !self
                .store
                .set_end_at(id, SandboxState::Running, wanted)
                .await?
            {
                return Err(Error::SandboxNotFound(id.to_string()));
            }
            tracing::debug!(sandbox_id = %id, end_at = %wanted, "connect extended sandbox");
            self.emit(id, crate::events::EventKind::ends(wanted)).await;
            rec.end_at = wanted;
        }
        Ok((rec, false))
    }
}
