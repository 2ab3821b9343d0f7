//! Startup reconciliation and shutdown. At startup the records the store believes are alive are
//! checked against the node: running and paused ones are passed to `Node::reconcile`, and every
//! record the node does not report back (including half-done creates and kills) ends `stopped`.
//! Shutdown refuses new creates, waits (bounded) for creates and kills in flight, stops all
//! sandboxes through the node and kills and settles every live record, except paused ones,
//! which the node keeps on disk and the next start finds paused again.

use std::collections::HashSet;

use paddock_domain::{SandboxId, SandboxState};
use paddock_node_contract::{PauseMode, SandboxStatus};

use super::{Core, Error};

/// Every state in which a record may still hold node resources.
const UNSETTLED: [SandboxState; 5] = [
    SandboxState::Creating,
    SandboxState::Running,
    SandboxState::Paused,
    SandboxState::Stopping,
    SandboxState::Error,
];

/// How long shutdown waits for creates and kills in flight before stopping the node.
pub(crate) const SHUTDOWN_TASK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

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
        let alive: HashSet<SandboxId> = self.node.reconcile(&expected).await?.into_iter().collect();
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
        self.reconcile_paused(&report.kept).await?;
        self.fail_interrupted_builds().await?;
        tracing::info!(
            kept = report.kept.len(),
            stopped = report.stopped.len(),
            "reconciled sandbox records with the node"
        );
        Ok(report)
    }

    /// Stops accepting creates (they get [`Error::ShuttingDown`]), waits up to
    /// [`SHUTDOWN_TASK_WAIT`] for creates and kills in flight, stops every sandbox through the
    /// node, then kills (again, idempotently) and settles every record still unsettled — a
    /// create that outlived the wait included.
    pub(crate) async fn shutdown(&self) -> Result<(), Error> {
        self.begin_shutdown();
        if tokio::time::timeout(SHUTDOWN_TASK_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "sandbox operations still running at shutdown; stopping anyway"
            );
        }
        if self.config.keep_sandboxes_on_shutdown {
            tracing::info!("control plane shut down; sandboxes keep running on their nodes");
            return Ok(());
        }
        if let Err(e) = self.node.shutdown().await {
            tracing::error!(error = %e, "the node's shutdown failed");
        }
        let records = self.store.sandboxes_in_states(&UNSETTLED).await?;
        for rec in records {
            // Paused sandboxes the node kept on disk stay paused across the restart (the
            // node pauses frozen ones to disk as it shuts down).
            let on_disk = rec.state == SandboxState::Paused
                && matches!(
                    self.node.status(&rec.id).await,
                    Ok(Some(SandboxStatus::Paused(PauseMode::Disk)))
                );
            if on_disk {
                self.store
                    .set_pause_mode(&rec.id, Some(PauseMode::Disk))
                    .await?;
                tracing::info!(sandbox_id = %rec.id, "paused sandbox kept on disk");
                continue;
            }
            if let Err(err) = self.node.kill(&rec.id).await {
                tracing::warn!(sandbox_id = %rec.id, error = %err, "kill at shutdown failed");
            }
            self.settle_stopped(&rec.id, rec.state, "server shut down")
                .await?;
        }
        tracing::info!("control plane shut down");
        Ok(())
    }
}
