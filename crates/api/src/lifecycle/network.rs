//! `PUT /sandboxes/{id}/network`: replaces a running sandbox's egress policy (full replacement:
//! omitted fields are cleared) on its node. `allowOut` may name domains (`example.com`,
//! `*.example.com`) next to a deny of all other traffic, as at create (see `validate::egress`);
//! the node's egress proxy judges new and open HTTP/TLS connections with the new policy at once.

use paddock_domain::{SandboxId, SandboxState};
use paddock_node_contract::ErrorCode;

use super::{validate, Core, Error};
use crate::store::TeamId;
use crate::wire::NetworkBody;

impl Core {
    /// Validates `body` and applies it to sandbox `id` of `team`.
    pub(crate) async fn update_network(
        &self,
        team: &TeamId,
        id: &SandboxId,
        body: &NetworkBody,
    ) -> Result<(), Error> {
        let policy = validate::egress(None, Some(body))?;
        self.visible(team, id).await?;
        let _held = self.sandbox_locks.lock(id).await;
        let rec = self.visible(team, id).await?;
        if rec.state != SandboxState::Running {
            return Err(Error::SandboxNotFound(id.to_string()));
        }
        match self.node.update_network(id, policy.clone()).await {
            Ok(()) => {
                self.store.set_egress(id, &policy).await?;
                tracing::info!(sandbox_id = %id, "sandbox network updated");
                self.emit(id, crate::events::EventKind::network(body)).await;
                Ok(())
            }
            Err(e) if e.is(ErrorCode::SandboxNotFound) => {
                Err(Error::SandboxNotFound(id.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}
