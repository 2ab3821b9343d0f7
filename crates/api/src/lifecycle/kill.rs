//! Kill: `running|paused → stopping → node.kill → stopped`. The compare-and-set on `stopping`
//! decides the single winner when a client kill, the expiry and shutdown race. The node call runs
//! in its own (tracked) task so a client disconnect cannot leave a record stuck in `stopping`; a
//! failed node kill leaves the record in `error` and is retried by the expiry task. The claim
//! runs under the sandbox's transition lock (a kill waits for a pause or resume under way);
//! the node call does not need it (`stopping` ends every other operation).

use std::sync::Arc;

use paddock_domain::{SandboxId, SandboxState};

use super::{Core, Error};
use crate::store::TeamId;

impl Core {
    /// Kills one of the team's sandboxes (the `DELETE` endpoint).
    pub(crate) async fn kill(self: &Arc<Self>, team: &TeamId, id: &SandboxId) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let result = async {
            self.visible(team, id).await?;
            {
                let _held = self.sandbox_locks.lock(id).await;
                let rec = self.visible(team, id).await?;
                if !self
                    .advance(
                        id,
                        rec.state,
                        SandboxState::Stopping,
                        Some("killed by request"),
                    )
                    .await?
                {
                    return Err(Error::SandboxNotFound(id.to_string()));
                }
            }
            let core = Arc::clone(self);
            let id = id.clone();
            self.tasks
                .spawn(async move { core.finish_kill(&id).await })
                .await?
        }
        .await;
        super::record_operation("kill", started, &result);
        result
    }

    /// Claims a sandbox in `from` for killing (`from → stopping`); returns whether this caller
    /// won. The winner must then call [`Core::finish_kill`].
    pub(crate) async fn claim_kill(
        &self,
        id: &SandboxId,
        from: SandboxState,
        reason: &str,
    ) -> Result<bool, Error> {
        self.advance(id, from, SandboxState::Stopping, Some(reason))
            .await
    }

    /// Asks the node to remove a `stopping` sandbox and records the outcome: `stopped`, or
    /// `error` when the node failed; the expiry task then retries the kill with backoff.
    pub(crate) async fn finish_kill(&self, id: &SandboxId) -> Result<(), Error> {
        match self.node.kill(id).await {
            Ok(()) => {
                self.advance(id, SandboxState::Stopping, SandboxState::Stopped, None)
                    .await?;
                Ok(())
            }
            Err(source) => {
                let reason = format!("kill failed: {source}");
                if self
                    .advance(
                        id,
                        SandboxState::Stopping,
                        SandboxState::Error,
                        Some(&reason),
                    )
                    .await?
                {
                    self.schedule_cleanup_retry(id);
                }
                Err(Error::Kill {
                    id: id.clone(),
                    source,
                })
            }
        }
    }
}
