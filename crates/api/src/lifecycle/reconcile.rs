//! Startup reconciliation and shutdown. At startup the records the store believes are alive are
//! checked against the node: running and paused ones are passed to `Node::reconcile`, and every
//! record the node does not report back (including half-done creates and kills) ends `stopped`.
//! Shutdown stops all sandboxes through the node and settles every live record.

use std::collections::HashSet;

use paddock_domain::{SandboxId, SandboxState};

use super::{Core, Error};

/// Every state in which a record may still hold node resources.
const UNSETTLED: [SandboxState; 5] = [
    SandboxState::Creating,
    SandboxState::Running,
    SandboxState::Paused,
    SandboxState::Stopping,
    SandboxState::Error,
];

/// What reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Sandboxes that are still running.
    pub kept: Vec<SandboxId>,
    /// Records settled as `stopped` because the node no longer has them.
    pub stopped: Vec<SandboxId>,
}

impl Core {
    /// Brings the store in line with what the node really runs.
    pub(crate) async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        let records = self.store.sandboxes_in_states(&UNSETTLED).await?;
        let expected: Vec<SandboxId> = records
            .iter()
            .filter(|r| matches!(r.state, SandboxState::Running | SandboxState::Paused))
            .map(|r| r.id.clone())
            .collect();
        let alive: HashSet<SandboxId> = self.node.reconcile(&expected).await.into_iter().collect();
        let mut report = ReconcileReport::default();
        for rec in records {
            let still_running = alive.contains(&rec.id)
                && matches!(rec.state, SandboxState::Running | SandboxState::Paused);
            if still_running {
                report.kept.push(rec.id);
                continue;
            }
            tracing::warn!(
                sandbox_id = %rec.id,
                state = %rec.state,
                "sandbox did not survive the restart; marking it stopped"
            );
            self.settle_stopped(&rec.id, rec.state, "not running after restart")
                .await?;
            report.stopped.push(rec.id);
        }
        tracing::info!(
            kept = report.kept.len(),
            stopped = report.stopped.len(),
            "reconciled sandbox records with the node"
        );
        Ok(report)
    }

    /// Stops accepting creates, stops every sandbox on the node and settles their records.
    pub(crate) async fn shutdown(&self) -> Result<(), Error> {
        self.shutdown.send_replace(true);
        self.node.shutdown().await;
        let records = self.store.sandboxes_in_states(&UNSETTLED).await?;
        for rec in records {
            self.settle_stopped(&rec.id, rec.state, "server shut down")
                .await?;
        }
        tracing::info!("control plane shut down");
        Ok(())
    }
}
