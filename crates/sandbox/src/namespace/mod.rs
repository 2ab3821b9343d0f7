//! The Linux namespace runtime driver: each sandbox is a fresh pid, mount, uts, ipc and network
//! namespace with an overlayfs root over the template, a cgroup with memory, CPU and pids limits,
//! and envd as PID 1.
//!
//! Processes and threads: [`NamespaceDriver`] runs inside the node's tokio runtime and never
//! forks there; it spawns one [`shim_main`] process per sandbox (a fresh exec, in its own process
//! group) that joins the cgroups, unshares and forks PID 1 (see `shim`). File system setup of the
//! sandbox happens in PID 1 (`mounts`), its seccomp filter is [`seccomp`], cgroups in `cgroup`,
//! raw syscalls in `sys`. One tokio task per sandbox waits for it to end and reports on
//! [`RuntimeDriver::exits`].
//!
//! Lifecycle of one sandbox: `create` (state dir, disk, cgroup, shim, wait for `ready`) →
//! running → `kill` (SIGKILL PID 1 and the cgroup, remove cgroup, unmount the disk, remove the
//! state dir), or `stop` (the same, but the disk image with the writable layer stays in the state
//! directory for a later create with `reuse_disk`), or, after a node restart, `adopt` /
//! `reap_orphans`. The writable layer is on the
//! sandbox's own disk ([`disk`]), so its size is limited.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use paddock_domain::SandboxId;
use paddock_envd_proto::boot;
use tokio::sync::{broadcast, watch};

use crate::{RuntimeDriver, RuntimeError, SandboxHandle, SandboxSpec};

pub mod cgroup;
mod create;
pub mod disk;
pub(crate) mod handoff;
mod mounts;
mod pause;
pub mod seccomp;
mod shim;
mod state;
mod sys;
mod teardown;

pub use handoff::{wait_log_copied, FlockGuard};
pub use mounts::is_mount_point;
pub use shim::shim_main;

use cgroup::CgroupBackend;

/// Ready disks of the default size kept by the driver (see [`disk`]).
pub const DISK_POOL_SIZE: usize = 4;

/// How long create waits for envd's `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the namespace driver.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// Executable that runs [`shim_main`] (the `paddock` binary or `paddock-sandbox-shim`).
    pub shim_exe: PathBuf,
    /// Arguments that make `shim_exe` run the shim (e.g. the hidden subcommand's name).
    pub shim_args: Vec<String>,
    /// Cgroup under which every sandbox gets `<cgroup_parent>/<id>`, e.g. `paddock`.
    pub cgroup_parent: String,
    /// Directory holding the sandboxes' state directories as `<state_root>/<id>`; lets
    /// [`RuntimeDriver::reap_orphans`] remove an orphan's state directory too.
    pub state_root: PathBuf,
    /// Directory of the per-sandbox disks' master images and pool of ready disks (see
    /// [`disk`]); best on the file system of `state_root`.
    pub disk_dir: PathBuf,
    /// The user-id range sandboxes run in (each in its own user namespace); template root file
    /// systems must be shifted into it ([`crate::idmap::shift_tree`]). `None` runs sandboxes
    /// without a user namespace (sandbox root is host root, limited only by capabilities,
    /// seccomp and masks) and exists for benchmarks and kernels without user namespaces.
    pub id_map: Option<crate::idmap::IdMap>,
    /// `false` turns the hardening off: no seccomp filter, no capability cut, no masked or
    /// read-only `/proc` parts. Only for measuring what hardening costs (`paddock serve
    /// --unhardened-for-benchmarks`); never for sandboxes that run untrusted code.
    pub hardened: bool,
}

/// The namespace runtime driver. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct NamespaceDriver {
    inner: Arc<Inner>,
}

/// State shared with the per-sandbox watcher tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub cfg: NamespaceConfig,
    pub cgroups: Box<dyn CgroupBackend>,
    pub disks: Arc<disk::Disks>,
    pub live: Mutex<HashMap<SandboxId, Live>>,
    pub exits: broadcast::Sender<SandboxId>,
}

/// A sandbox this driver started or adopted and that has not been killed.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub init_pid: u32,
    pub init_start_time: u64,
    /// Set by `kill` before it signals, so the watcher does not report the exit.
    pub killed: Arc<AtomicBool>,
    /// Becomes `true` once the sandbox (the shim, or the adopted PID 1) has exited.
    pub done: watch::Receiver<bool>,
}

impl Inner {
    pub(crate) fn live(&self) -> MutexGuard<'_, HashMap<SandboxId, Live>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a watcher once the sandbox is gone.
    pub(crate) fn on_exit(&self, id: SandboxId, killed: &Arc<AtomicBool>) {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let removed = {
            let mut live = self.live();
            // Only this watcher's own entry (the id may have been killed and reused since).
            let same = live
                .get(&id)
                .is_some_and(|l| Arc::ptr_eq(&l.killed, killed));
            if same {
                live.remove(&id);
            }
            same
        };
        if removed {
            tracing::info!(sandbox_id = %id, "sandbox exited on its own");
            let _ = self.exits.send(id);
        }
    }
}

impl NamespaceDriver {
    /// Checks the host (overlayfs, cgroup controllers, the shim executable, loop devices),
    /// prepares the parent cgroup and the per-sandbox disks (master image, pool) and returns
    /// the driver.
    pub fn new(cfg: NamespaceConfig) -> Result<Self, RuntimeError> {
        validate_parent(&cfg.cgroup_parent)?;
        let filesystems =
            std::fs::read_to_string("/proc/filesystems").map_err(|source| RuntimeError::Io {
                context: "reading /proc/filesystems".into(),
                source,
            })?;
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return Err(RuntimeError::Host(
                "the kernel has no overlayfs (modprobe overlay)".into(),
            ));
        }
        if !cfg.shim_exe.is_file() {
            return Err(RuntimeError::Host(format!(
                "shim executable {} not found",
                cfg.shim_exe.display()
            )));
        }
        let cgroups =
            cgroup::detect(&cfg.cgroup_parent).map_err(|e| RuntimeError::Host(chain(&e)))?;
        cgroups
            .prepare_parent()
            .map_err(|e| RuntimeError::Host(chain(&e)))?;
        let disks = disk::Disks::new(
            cfg.disk_dir.clone(),
            paddock_domain::Resources::default().disk_mb,
            DISK_POOL_SIZE,
        )
        .map_err(|e| RuntimeError::Host(chain(&e)))?;
        tracing::debug!(cgroup = cgroups.name(), parent = %cfg.cgroup_parent, "namespace driver ready");
        let (exits, _) = broadcast::channel(256);
        Ok(NamespaceDriver {
            inner: Arc::new(Inner {
                cfg,
                cgroups,
                disks,
                live: Mutex::new(HashMap::new()),
                exits,
            }),
        })
    }

    /// Which cgroup layout the driver uses (`v1` or `v2`).
    pub fn cgroup_version(&self) -> &'static str {
        self.inner.cgroups.name()
    }

    /// The cgroup directories of sandbox `id` (one per hierarchy), whether or not they exist.
    pub fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        self.inner.cgroups.sandbox(id.as_str()).dirs
    }
}

#[async_trait]
impl RuntimeDriver for NamespaceDriver {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        create::create(&self.inner, spec).await
    }

    async fn kill(&self, id: &SandboxId, state_dir: &Path) -> Result<(), RuntimeError> {
        teardown::kill(&self.inner, id, state_dir).await
    }

    async fn stop(&self, id: &SandboxId, state_dir: &Path) -> Result<(), RuntimeError> {
        teardown::stop(&self.inner, id, state_dir).await
    }

    async fn adopt(
        &self,
        id: &SandboxId,
        state_dir: &Path,
    ) -> Result<Option<SandboxHandle>, RuntimeError> {
        teardown::adopt(&self.inner, id, state_dir).await
    }

    async fn reap_orphans(&self, keep: &[SandboxId]) -> Result<usize, RuntimeError> {
        teardown::reap_orphans(&self.inner, keep).await
    }

    fn exits(&self) -> broadcast::Receiver<SandboxId> {
        self.inner.exits.subscribe()
    }

    fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        self.inner.cgroups.sandbox(id.as_str()).dirs
    }

    fn is_alive(&self, id: &SandboxId) -> bool {
        let Some((pid, start_time)) = self
            .inner
            .live()
            .get(id)
            .map(|l| (l.init_pid, l.init_start_time))
        else {
            return false;
        };
        // Same process (not a recycled pid) and not a zombie the shim has yet to reap.
        sys::process_start_time(pid) == Some(start_time) && sys::process_state(pid) != Some('Z')
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        pause::pause(&self.inner, id).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        pause::resume(&self.inner, id).await
    }

    fn is_paused(&self, id: &SandboxId) -> bool {
        pause::is_paused(&self.inner, id)
    }

    async fn release(&self) {
        self.inner.disks.release().await;
        // rmdir only succeeds on empty cgroups, so a parent still in use (a sandbox left
        // running, another server sharing the top-level `paddock`) is never disturbed.
        for dir in self.inner.cgroups.parent_dirs() {
            let mut cur = Some(dir.as_path());
            for _ in 0..self.inner.cfg.cgroup_parent.split('/').count() {
                let Some(d) = cur else { break };
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                cur = d.parent();
            }
        }
    }
}

/// `RLIMIT_NOFILE` (soft, hard) every sandbox's PID 1 starts with, when recorded.
static SANDBOX_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Records this process's current `RLIMIT_NOFILE` as the one sandboxes start with, so that a
/// server raising its own limit (for its listeners) does not raise theirs. Later calls keep
/// the first record.
pub fn keep_sandbox_nofile() {
    if let Ok(limits) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = SANDBOX_NOFILE.set(limits);
    }
}

/// The handle of a sandbox whose state directory is `state_dir`.
pub(crate) fn handle(id: SandboxId, init_pid: u32, state_dir: &Path) -> SandboxHandle {
    SandboxHandle {
        id,
        init_pid,
        envd_socket: state_dir.join(boot::ENVD_SOCKET),
        forward_socket: state_dir.join(boot::FORWARD_SOCKET),
    }
}

/// Cgroup parent names: `/`-separated segments of `[A-Za-z0-9._-]`, no `.`/`..` segments.
fn validate_parent(parent: &str) -> Result<(), RuntimeError> {
    let ok = !parent.is_empty()
        && parent.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Host(format!(
            "invalid cgroup parent {parent:?}"
        )))
    }
}

/// An error and its sources, joined with `: `.
pub(crate) use paddock_domain::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_names() {
        assert!(validate_parent("paddock").is_ok());
        assert!(validate_parent("paddock/test-1").is_ok());
        for bad in ["", "/paddock", "a/../b", "a//b", "a b", "."] {
            assert!(validate_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn handle_paths() {
        let h = handle(
            SandboxId::parse("iabc").expect("id"),
            7,
            Path::new("/d/iabc"),
        );
        assert_eq!(h.envd_socket, PathBuf::from("/d/iabc/envd.sock"));
        assert_eq!(h.forward_socket, PathBuf::from("/d/iabc/forward.sock"));
    }
}
