//! Connect: hand a running sandbox back to a client and extend its life. The end time only ever
//! grows here: `end = max(end, now + timeout)`. A paused sandbox is resumed (see `pause`) and
//! gets `end = now + timeout`.

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
        let mut rec = self.visible(team, id).await?;
        if rec.state == SandboxState::Paused {
            let (resumed, was_paused) = self.resume_by_id(id, timeout, cold).await?;
            if was_paused {
                return Ok((resumed, true));
            }
            // Resumed by someone else meanwhile: extend it like any running sandbox.
            rec = resumed;
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
