//! Pause and resume of namespace sandboxes, with the cgroup freezer (see
//! [`super::cgroup::SandboxCgroup::freeze`]). Only sandboxes this driver started or adopted can
//! be paused; the freezer writes run on the blocking pool because they poll until the kernel
//! reports the new state. Kill needs nothing special: `kill_all` thaws before it signals.

use std::time::Duration;

use paddock_domain::SandboxId;

use super::cgroup::FreezerState;
use super::{chain, Inner};
use crate::RuntimeError;

/// How long a freeze may take before it is undone and reported as failed.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a thaw may take.
pub const THAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Freezes every process of sandbox `id`.
pub(crate) async fn pause(
    inner: &std::sync::Arc<Inner>,
    id: &SandboxId,
) -> Result<(), RuntimeError> {
    set_frozen(inner, id, true).await
}

/// Thaws sandbox `id`.
pub(crate) async fn resume(
    inner: &std::sync::Arc<Inner>,
    id: &SandboxId,
) -> Result<(), RuntimeError> {
    set_frozen(inner, id, false).await
}

/// Whether sandbox `id` is live here and its freezer reports it frozen (or freezing).
pub(crate) fn is_paused(inner: &Inner, id: &SandboxId) -> bool {
    if !inner.live().contains_key(id) {
        return false;
    }
    matches!(
        inner.cgroups.sandbox(id.as_str()).freezer_state(),
        Ok(FreezerState::Frozen | FreezerState::Freezing)
    )
}

async fn set_frozen(
    inner: &std::sync::Arc<Inner>,
    id: &SandboxId,
    frozen: bool,
) -> Result<(), RuntimeError> {
    if !inner.live().contains_key(id) {
        return Err(RuntimeError::NotFound(id.clone()));
    }
    let cg = inner.cgroups.sandbox(id.as_str());
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        if frozen {
            cg.freeze(FREEZE_TIMEOUT)
        } else {
            cg.thaw(THAW_TIMEOUT)
        }
    })
    .await;
    let operation = if frozen { "pausing" } else { "resuming" };
    match result {
        Ok(Ok(())) => {
            tracing::debug!(sandbox_id = %id, operation, elapsed_us = started.elapsed().as_micros() as u64, "freezer settled");
            Ok(())
        }
        Ok(Err(super::cgroup::CgroupError::NoFreezer(_))) => Err(RuntimeError::Unsupported {
            driver: "namespace",
            operation: "pause (no cgroup freezer on this host)",
        }),
        Ok(Err(e)) => Err(RuntimeError::Pause {
            id: id.clone(),
            operation,
            message: chain(&e),
        }),
        Err(e) => Err(RuntimeError::Pause {
            id: id.clone(),
            operation,
            message: format!("freezer task failed: {e}"),
        }),
    }
}
