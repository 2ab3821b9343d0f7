//! Pausing a [`LocalNode`]'s sandboxes: in memory (the freezer, with the `paused` flag the proxy
//! reads) and to disk (processes stopped, disk image and records kept, marked by
//! [`ON_DISK_MARKER`]), starting them again from disk, and keeping them on disk across a node
//! restart. Does not own the table or the runtime; snapshots are in `snapshot`.

use paddock_domain::SandboxId;

use super::{Live, LocalNode, SandboxMeta};
use crate::LocalError;

/// Marker file in a state directory: the sandbox is paused to disk (its processes are gone,
/// its disk image is kept). Written before the sandbox is stopped, removed once it runs again.
pub(super) const ON_DISK_MARKER: &str = "paused-on-disk";

impl LocalNode {
    /// Pauses a live sandbox to disk: the marker first (so a crash in the middle is finished
    /// by the next start instead of losing the sandbox), then the runtime stops it keeping its
    /// disk, then its network slot goes.
    pub(super) async fn persist(&self, id: &SandboxId) -> Result<(), LocalError> {
        {
            let mut table = self.table_mut();
            if table.on_disk.contains(id) {
                return Ok(());
            }
            match table.live.get_mut(id) {
                // Held back by the proxy from here on.
                Some(live) => live.paused = true,
                None => return Err(LocalError::SandboxNotFound(id.clone())),
            }
        }
        let started = std::time::Instant::now();
        let dir = self.state_dir(id);
        let marker = dir.join(ON_DISK_MARKER);
        if let Err(source) = std::fs::write(&marker, b"") {
            self.set_paused_flag(id, false);
            return Err(LocalError::Io {
                context: format!("writing {}", marker.display()),
                source,
            });
        }
        if let Err(e) = self.runtime.stop(id, &dir).await {
            if self.runtime.is_alive(id) {
                let _ = std::fs::remove_file(&marker);
                self.set_paused_flag(id, false);
                return Err(e.into());
            }
            // Its processes are gone but the disk could not be released: it cannot go on.
            tracing::error!(sandbox_id = %id, error = %e, "pausing to disk failed half-way; the sandbox is lost");
            let _ = std::fs::remove_file(&marker);
            self.on_exit(id.clone()).await;
            return Err(e.into());
        }
        {
            let mut table = self.table_mut();
            table.live.remove(id);
            table.on_disk.insert(id.clone());
        }
        self.release_network(id).await;
        tracing::info!(
            sandbox_id = %id,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "sandbox paused to disk"
        );
        Ok(())
    }

    /// Starts a sandbox paused to disk again on its kept disk, with its recorded layers,
    /// limits and egress policy; envd reads the boot configuration the first start left.
    pub(super) async fn start_from_disk(&self, id: &SandboxId) -> Result<(), LocalError> {
        let started = std::time::Instant::now();
        let reservation = self.reserve(id)?;
        let turn = self.start_turn().await?;
        let meta = self.read_meta(id)?;
        let network = self.acquire_network(id, &meta.network).await?;
        // On failure the disk and the records stay: a later resume can try again.
        let handle = self
            .start_runtime(id, meta.layers.clone(), true, meta.resources, network)
            .await?;
        drop(turn);
        let _ = std::fs::remove_file(self.state_dir(id).join(ON_DISK_MARKER));
        let socket = handle.envd_socket.clone();
        {
            let mut table = self.table_mut();
            table.on_disk.remove(id);
            table.live.insert(
                id.clone(),
                Live {
                    handle,
                    paused: false,
                },
            );
        }
        drop(reservation);
        // Its processes start afresh, so the template's start command does too.
        let token = self.boot_config(id).and_then(|b| b.access_token);
        if let Some(token) = token {
            if let Err(e) = self.run_start_cmd(id, socket, &meta.config, &token).await {
                tracing::warn!(sandbox_id = %id, error = %e, "the template's start command failed after a start from disk");
            }
        }
        tracing::info!(
            sandbox_id = %id,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "sandbox started again from disk"
        );
        Ok(())
    }

    /// After a restart: keeps a sandbox that was paused to disk (finishing a pause to disk
    /// that a crash interrupted).
    pub(super) async fn adopt_on_disk(
        &self,
        id: &SandboxId,
        meta: &SandboxMeta,
    ) -> Result<(), LocalError> {
        let dir = self.state_dir(id);
        if !dir.join("disk.img").is_file() {
            return Err(LocalError::Io {
                context: format!("{} has no disk image", dir.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        // A run record left means the stop did not finish: finish it.
        if dir.join("state.json").exists() {
            self.runtime.stop(id, &dir).await?;
        }
        let lease = self
            .templates
            .lease_layers(&meta.layers)
            .map_err(LocalError::from)?;
        let mut table = self.table_mut();
        table.on_disk.insert(id.clone());
        table.leases.insert(id.clone(), lease);
        tracing::info!(sandbox_id = %id, "kept sandbox paused to disk");
        Ok(())
    }

    /// Completes once sandbox `id` is marked paused (at once if it is now); watches from the
    /// call on, so a pause between the call and the first poll is not missed. Never completes
    /// for a sandbox that stays running.
    pub fn until_paused<'a>(
        &'a self,
        id: &'a SandboxId,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let mut rx = self.pauses.subscribe();
        let paused_now = self.is_paused(id);
        async move {
            if paused_now {
                return;
            }
            while rx.changed().await.is_ok() {
                if self.is_paused(id) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        }
    }

    pub(super) fn set_paused_flag(&self, id: &SandboxId, paused: bool) {
        if let Some(live) = self.table_mut().live.get_mut(id) {
            live.paused = paused;
        }
    }

    /// Freezes (`paused`) or thaws a live sandbox. The table says `paused` before the freeze
    /// starts, so the proxy holds new traffic back instead of sending it into a sandbox that
    /// cannot answer, and says running only once the thaw is done.
    pub(super) async fn set_paused(&self, id: &SandboxId, paused: bool) -> Result<(), LocalError> {
        let set = |value: bool| -> bool {
            match self.table_mut().live.get_mut(id) {
                Some(live) => {
                    live.paused = value;
                    true
                }
                None => false,
            }
        };
        if paused && !set(true) {
            return Err(LocalError::SandboxNotFound(id.clone()));
        }
        if paused {
            self.pauses.send_modify(|n| *n = n.wrapping_add(1));
        }
        if !paused && !self.table().live.contains_key(id) {
            return Err(LocalError::SandboxNotFound(id.clone()));
        }
        let started = std::time::Instant::now();
        let result = if paused {
            self.runtime.pause(id).await
        } else {
            self.runtime.resume(id).await
        };
        match result {
            Ok(()) => {
                if !paused {
                    set(false);
                }
                tracing::info!(
                    sandbox_id = %id,
                    paused,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "sandbox freezer changed"
                );
                Ok(())
            }
            Err(e) => {
                // A failed freeze is undone by the runtime; a failed thaw leaves it frozen.
                if paused {
                    set(false);
                }
                Err(match e {
                    paddock_sandbox::RuntimeError::NotFound(id) => LocalError::SandboxNotFound(id),
                    paddock_sandbox::RuntimeError::Unsupported { .. } => {
                        LocalError::Unsupported("pausing sandboxes on this runtime")
                    }
                    other => other.into(),
                })
            }
        }
    }
}
