//! The two background tasks of the control plane, run by `ControlPlane::run_background` until
//! shutdown:
//! - **expiry** sleeps until the earliest end time of a running sandbox (re-planned whenever a
//!   create, connect or set_timeout wakes it) and kills what has expired (or pauses it, for
//!   `autoPause` sandboxes; paused sandboxes have no end time); it also retries failed
//!   node cleanups and prunes old `stopped` records (see `cleanup`);
//! - **exit watcher** follows `Node::exits()` and settles sandboxes that died by themselves (or
//!   were lost with their node) as `stopped`, recording the event's [`ExitReason`] as the
//!   sandbox's reason; if it falls behind it compares the store with `Node::live()`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::Utc;
use paddock_domain::{SandboxId, SandboxState};
use paddock_node_contract::{ExitReason, NodeEvent};
use tokio::sync::broadcast::error::RecvError;

use super::cleanup::PRUNE_EVERY;
use super::{Core, Error};

/// Longest single sleep of the expiry task (a safety net; wake-ups normally come sooner).
const MAX_EXPIRY_SLEEP: StdDuration = StdDuration::from_secs(60);
/// Pause after a store failure before the expiry task tries again.
const RETRY_AFTER_FAILURE: StdDuration = StdDuration::from_secs(1);

impl Core {
    /// Runs the expiry loop until shutdown. Each pass also retries failed node cleanups and,
    /// at most once per [`PRUNE_EVERY`], deletes old `stopped` records.
    pub(crate) async fn run_expiry(self: &Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut last_prune: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                if let Err(err) = self.prune_stopped().await {
                    tracing::error!(error = ?err, "pruning stopped sandboxes failed");
                }
            }
            let mut sleep = match self.expire_due().await {
                Ok(sleep) => sleep,
                Err(err) => {
                    tracing::error!(error = ?err, "expiry pass failed");
                    RETRY_AFTER_FAILURE
                }
            };
            match self.retry_cleanups().await {
                Ok(Some(next)) => sleep = sleep.min(next),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(error = ?err, "retrying sandbox cleanups failed");
                    sleep = sleep.min(RETRY_AFTER_FAILURE);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.expiry_wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Kills every running sandbox whose end time has passed; returns how long to sleep until the
    /// next one is due.
    async fn expire_due(self: &Arc<Self>) -> Result<StdDuration, Error> {
        let now = Utc::now();
        for id in self.store.ended_by(SandboxState::Running, now).await? {
            // Under the sandbox's lock, on the record as it is now: a connect or set_timeout
            // that got there first moved the end time, and one that comes later waits for
            // this pause or kill to be recorded.
            let _held = self.sandbox_locks.lock(&id).await;
            match self.store.sandbox(&id).await? {
                Some(rec) if rec.state == SandboxState::Running && rec.end_at <= Utc::now() => {}
                _ => continue,
            }
            // `autoPause` sandboxes are paused instead (inline: a freeze takes milliseconds,
            // and the next pass must not see them as due again). A failed pause kills.
            let lifecycle = self.store.lifecycle(&id).await?;
            if lifecycle.auto_pause {
                let to_disk = lifecycle.pause_to_disk;
                match self
                    .pause_locked(&id, "timeout reached (autoPause)", to_disk)
                    .await
                {
                    Ok(()) => continue,
                    Err(err) => {
                        tracing::error!(sandbox_id = %id, error = ?err, "auto-pause failed; killing the sandbox instead");
                    }
                }
            }
            // Claim synchronously so the next pass does not see it again, kill in the background.
            if self
                .claim_kill(&id, SandboxState::Running, "timeout reached")
                .await?
            {
                let core = Arc::clone(self);
                self.tasks.spawn(async move {
                    if let Err(err) = core.finish_kill(&id).await {
                        tracing::error!(sandbox_id = %id, error = ?err, "killing expired sandbox failed");
                    }
                });
            }
        }
        let next = self.store.next_end_at(SandboxState::Running).await?;
        Ok(match next {
            Some(at) => (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_EXPIRY_SLEEP),
            None => MAX_EXPIRY_SLEEP,
        })
    }

    /// How long the exit watcher waits before subscribing again to a node whose event stream
    /// ended (a remote node that went away or restarted), at first and at most.
    const RESUBSCRIBE_FIRST: StdDuration = StdDuration::from_millis(250);
    const RESUBSCRIBE_MAX: StdDuration = StdDuration::from_secs(5);

    /// Subscribes to the node's events, retrying with backoff; `None` once shutdown begins.
    async fn subscribe_events(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::sync::broadcast::Receiver<NodeEvent>> {
        let mut wait = Self::RESUBSCRIBE_FIRST;
        loop {
            if *shutdown.borrow() {
                return None;
            }
            match self.node.events().await {
                Ok(rx) => return Some(rx),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "cannot subscribe to the node's events");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return None,
            }
            wait = (wait * 2).min(Self::RESUBSCRIBE_MAX);
        }
    }

    /// Runs the exit watcher until shutdown. When the node's event stream ends (a remote node
    /// went away, or this watcher lagged on it) it subscribes again and compares the store with
    /// the node, so an exit in between is not missed.
    pub(crate) async fn run_exit_watcher(self: &Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let Some(mut exits) = self.subscribe_events(&mut shutdown).await else {
            return;
        };
        loop {
            if *shutdown.borrow() {
                return;
            }
            let event = tokio::select! {
                event = exits.recv() => event,
                _ = shutdown.changed() => return,
            };
            let result = match event {
                Ok(NodeEvent::Exited { id, reason }) => self.handle_exit(&id, reason).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "exit events lost; comparing the store with the node"
                    );
                    self.sweep_vanished().await
                }
                Err(RecvError::Closed) => {
                    tracing::warn!("the node's event stream ended; subscribing again");
                    tokio::select! {
                        () = tokio::time::sleep(Self::RESUBSCRIBE_FIRST) => {}
                        _ = shutdown.changed() => return,
                    }
                    let Some(rx) = self.subscribe_events(&mut shutdown).await else {
                        return;
                    };
                    exits = rx;
                    self.sweep_vanished().await
                }
            };
            if let Err(err) = result {
                tracing::error!(error = ?err, "handling a sandbox exit failed");
            }
        }
    }

    /// Settles a sandbox that ended without being asked to, recording why
    /// ([`ExitReason::describe`]: its logs' state change and its `killed` event say so).
    /// Sandboxes being killed or created are left to the operation in progress.
    pub(crate) async fn handle_exit(&self, id: &SandboxId, why: ExitReason) -> Result<(), Error> {
        let Some(rec) = self.store.sandbox(id).await? else {
            return Ok(());
        };
        if !matches!(rec.state, SandboxState::Running | SandboxState::Paused) {
            return Ok(());
        }
        let reason = why.describe();
        if !self
            .advance(id, rec.state, SandboxState::Error, Some(reason))
            .await?
        {
            return Ok(());
        }
        tracing::warn!(sandbox_id = %id, reason = %why, "sandbox ended unexpectedly");
        // Let the node release anything the dead sandbox still holds; unknown ids are fine.
        self.clean_up_or_retry(id, reason).await
    }

    /// Settles every running record the node no longer has.
    async fn sweep_vanished(&self) -> Result<(), Error> {
        let live: HashSet<SandboxId> = self.node.live().await?.into_iter().collect();
        let records = self
            .store
            .sandboxes_in_states(&[SandboxState::Running])
            .await?;
        for rec in records.into_iter().filter(|r| !live.contains(&r.id)) {
            self.handle_exit(&rec.id, ExitReason::Exited).await?;
        }
        Ok(())
    }
}
