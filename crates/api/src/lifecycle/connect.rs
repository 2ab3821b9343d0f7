//! Connect: hand a running sandbox back to a client and extend its life. The end time only ever
//! grows here: `end = max(end, now + timeout)`. Paused sandboxes cannot exist yet (pause/resume is
//! later work), so resuming is reported as not implemented.

use chrono::{Duration, Utc};
use paddock_domain::{SandboxId, SandboxState};

use super::{validate, Core, Error};
use crate::store::{SandboxRecord, TeamId};

impl Core {
    /// Connects to a running sandbox, extending its end time to at least `now + timeout_secs`.
    pub(crate) async fn connect(
        &self,
        team: &TeamId,
        id: &SandboxId,
        timeout_secs: i64,
    ) -> Result<SandboxRecord, Error> {
        let timeout = validate::timeout("timeout", timeout_secs)?;
        let mut rec = self.visible(team, id).await?;
        if rec.state == SandboxState::Paused {
            return Err(Error::NotImplemented("resuming a paused sandbox"));
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
            rec.end_at = wanted;
        }
        Ok(rec)
    }
}
