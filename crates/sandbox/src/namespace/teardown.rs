//! Ending sandboxes and finding them again: `kill` (SIGKILL PID 1, empty and remove the cgroup,
//! unmount the sandbox's disk, remove the state directory with the disk's image), `adopt` after
//! a node restart (verify pid, start time and cgroup membership from `state.json`; the disk
//! stays mounted), and `reap_orphans` (every cgroup under the parent that the node does not
//! claim, and every disk mounted in a state directory it does not claim).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use paddock_domain::SandboxId;
use paddock_envd_proto::boot;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::state::{self, SandboxState};
use super::{chain, disk, handle, mounts, sys, Inner, Live};
use crate::{RuntimeError, SandboxHandle};

/// How long processes of a killed sandbox may take to disappear from its cgroup.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `kill` waits for the shim to reap PID 1 before emptying the cgroup by force.
const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn kill(
    inner: &Arc<Inner>,
    id: &SandboxId,
    state_dir: &Path,
) -> Result<(), RuntimeError> {
    // A missing or unreadable record does not stop the teardown.
    let recorded = record_of(id, state_dir);
    stop_init(inner, id, recorded.as_ref()).await;
    let extra = recorded.map(|s| s.cgroups).unwrap_or_default();
    remove_blocking(inner, id.as_str(), Some(extra), Some(state_dir)).await?;
    tracing::info!(sandbox_id = %id, "sandbox killed");
    Ok(())
}

/// The run record (`state.json`) of sandbox `id` in `state_dir`, if it is readable and names that sandbox.
fn record_of(id: &SandboxId, state_dir: &Path) -> Option<SandboxState> {
    match state::read(state_dir) {
        Ok(Some(s)) if &s.id == id => Some(s),
        _ => None,
    }
}

/// How long `stop` waits for the sandbox's file system to be released (its loop device to
/// detach) after the last process is gone.
const DISK_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Stops a sandbox but keeps its disk image (see [`crate::RuntimeDriver::stop`]): processes
/// and cgroups go as in [`kill`], then the disk is unmounted and `stop` waits until its loop
/// device has detached, so the image is consistent and free to be attached again.
pub(crate) async fn stop(
    inner: &Arc<Inner>,
    id: &SandboxId,
    state_dir: &Path,
) -> Result<(), RuntimeError> {
    let recorded = record_of(id, state_dir);
    if recorded.is_none() && !inner.live().contains_key(id) {
        return Err(RuntimeError::NotFound(id.clone()));
    }
    stop_init(inner, id, recorded.as_ref()).await;
    let extra = recorded.map(|s| s.cgroups).unwrap_or_default();
    remove_blocking(inner, id.as_str(), Some(extra), None).await?;
    let dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || release_disk(&dir))
        .await
        .map_err(|e| RuntimeError::Host(format!("stop task failed: {e}")))??;
    tracing::info!(sandbox_id = %id, "sandbox stopped; its disk is kept");
    Ok(())
}

/// Unmounts a stopped sandbox's disk, removes what only a running sandbox needs (`root/`,
/// sockets, `state.json`) and waits for the image's loop device to go.
fn release_disk(dir: &Path) -> Result<(), RuntimeError> {
    disk::Disks::remove(dir).map_err(|e| RuntimeError::Host(chain(&e)))?;
    let root = dir.join("root");
    if mounts::is_mount_point(&root) {
        mounts::detach(&root).map_err(|source| RuntimeError::Io {
            context: format!("unmounting {}", root.display()),
            source,
        })?;
    }
    for leftover in [
        dir.join(state::STATE_FILE),
        dir.join(boot::ENVD_SOCKET),
        dir.join(boot::FORWARD_SOCKET),
    ] {
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("removing {}", leftover.display()),
                    source,
                })
            }
        }
    }
    let image = dir.join(disk::IMAGE_FILE);
    let deadline = std::time::Instant::now() + DISK_RELEASE_TIMEOUT;
    loop {
        let bound = disk::loop_devices_under(&image);
        if bound.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(RuntimeError::Host(format!(
                "the disk {} is still in use ({}) after the sandbox stopped",
                image.display(),
                bound.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Marks the sandbox as killed (so its exit is not reported), SIGKILLs its PID 1 if it is still
/// the same process, and waits briefly for the shim to notice.
async fn stop_init(inner: &Arc<Inner>, id: &SandboxId, recorded: Option<&SandboxState>) {
    let live = inner.live().remove(id);
    if let Some(l) = &live {
        l.killed.store(true, Ordering::SeqCst);
    }
    let target = live
        .as_ref()
        .map(|l| (l.init_pid, l.init_start_time))
        .or_else(|| recorded.map(|s| (s.init_pid, s.init_start_time)));
    // A paused (frozen) sandbox's PID 1 would not die before it is thawed.
    inner.cgroups.sandbox(id.as_str()).request_thaw();
    if let Some((pid, start_time)) = target {
        // Killing the pid namespace's init kills every process in the namespace.
        if sys::process_start_time(pid) == Some(start_time) {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            // Let the shim reap it before the cgroup is emptied by force: a shim killed first
            // would leave PID 1 a zombie for the host's init.
            let deadline = tokio::time::Instant::now() + SHIM_EXIT_TIMEOUT;
            while sys::process_start_time(pid) == Some(start_time)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    if let Some(l) = live {
        let mut done = l.done.clone();
        let _ = tokio::time::timeout(SHIM_EXIT_TIMEOUT, done.wait_for(|d| *d)).await;
    }
}

/// Empties and removes the cgroup of sandbox `name` (plus `extra` directories recorded for it)
/// and its state directory, on a blocking thread.
pub(crate) async fn remove_blocking(
    inner: &Arc<Inner>,
    name: &str,
    extra: Option<Vec<PathBuf>>,
    state_dir: Option<&Path>,
) -> Result<(), RuntimeError> {
    let mut cg = inner.cgroups.sandbox(name);
    // Recorded directories count only if they are named after this sandbox.
    for dir in extra.unwrap_or_default() {
        if dir.file_name().and_then(|n| n.to_str()) == Some(name) && !cg.dirs.contains(&dir) {
            cg.dirs.push(dir);
        }
    }
    let state_dir = state_dir.map(Path::to_path_buf);
    let what = name.to_string();
    tokio::task::spawn_blocking(move || {
        let host = |e: super::cgroup::CgroupError| {
            RuntimeError::Host(format!("sandbox {what}: {}", chain(&e)))
        };
        cg.kill_all(KILL_TIMEOUT).map_err(host)?;
        cg.remove().map_err(host)?;
        match state_dir {
            Some(dir) => remove_state_dir(&dir),
            None => Ok(()),
        }
    })
    .await
    .map_err(|e| RuntimeError::Host(format!("teardown task failed: {e}")))?
}

fn remove_state_dir(dir: &Path) -> Result<(), RuntimeError> {
    // The sandbox is dead: its disk goes (the loop device detaches itself once the file system
    // is released), then the image with the directory.
    disk::Disks::remove(dir).map_err(|e| RuntimeError::Host(chain(&e)))?;
    // Nothing is mounted on the host by design; if something is, detach it so deleting the
    // state directory can never reach into the template below an overlay.
    let root = dir.join("root");
    if mounts::is_mount_point(&root) {
        mounts::detach(&root).map_err(|source| RuntimeError::Io {
            context: format!("unmounting {}", root.display()),
            source,
        })?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RuntimeError::Io {
            context: format!("removing {}", dir.display()),
            source,
        }),
    }
}

pub(crate) async fn adopt(
    inner: &Arc<Inner>,
    id: &SandboxId,
    state_dir: &Path,
) -> Result<Option<SandboxHandle>, RuntimeError> {
    if let Some(l) = inner.live().get(id) {
        return Ok(Some(handle(id.clone(), l.init_pid, state_dir)));
    }
    if let Some(s) = record_of(id, state_dir) {
        // Open the pidfd first: once the start time matches, the pidfd names that very process.
        if let Ok(pidfd) = sys::pidfd_open(s.init_pid) {
            let same = sys::process_start_time(s.init_pid) == Some(s.init_start_time)
                && sys::process_state(s.init_pid) != Some('Z')
                && inner.cgroups.sandbox(id.as_str()).contains(s.init_pid);
            if same {
                let killed = Arc::new(AtomicBool::new(false));
                let (done_tx, done) = watch::channel(false);
                let live = Live {
                    init_pid: s.init_pid,
                    init_start_time: s.init_start_time,
                    killed: Arc::clone(&killed),
                    done,
                };
                inner.live().insert(id.clone(), live);
                watch_pidfd(inner, id.clone(), pidfd, killed, done_tx);
                tracing::info!(sandbox_id = %id, init_pid = s.init_pid, "sandbox adopted");
                return Ok(Some(handle(id.clone(), s.init_pid, state_dir)));
            }
        }
    }
    kill(inner, id, state_dir).await?;
    tracing::info!(sandbox_id = %id, "sandbox was not running any more; cleaned up");
    Ok(None)
}

/// Waits for an adopted sandbox's PID 1 (not our child, so a pidfd instead of `wait`).
fn watch_pidfd(
    inner: &Arc<Inner>,
    id: SandboxId,
    pidfd: std::os::fd::OwnedFd,
    killed: Arc<AtomicBool>,
    done: watch::Sender<bool>,
) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        // SAFETY: `pidfd` is an open descriptor owned by the `OwnedFd` moved into the AsyncFd,
        // so it stays open and names the same pidfd for the AsyncFd's whole lifetime.
        let registered =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(e) => tracing::warn!(sandbox_id = %id, error = %e, "cannot watch adopted sandbox"),
        }
        let _ = done.send(true);
        if let Some(inner) = weak.upgrade() {
            inner.on_exit(id, &killed);
        }
    });
}

pub(crate) async fn reap_orphans(
    inner: &Arc<Inner>,
    keep: &[SandboxId],
) -> Result<usize, RuntimeError> {
    let lister = Arc::clone(inner);
    let names = tokio::task::spawn_blocking(move || lister.cgroups.list())
        .await
        .map_err(|e| RuntimeError::Host(format!("listing task failed: {e}")))?
        .map_err(|e| RuntimeError::Host(chain(&e)))?;
    let keep: HashSet<&str> = keep.iter().map(SandboxId::as_str).collect();
    let mut removed = 0;
    for name in names.iter().filter(|n| !keep.contains(n.as_str())) {
        let id = SandboxId::parse(name).ok().filter(|id| id.as_str() == name);
        match &id {
            Some(id) => kill(inner, id, &inner.cfg.state_root.join(name)).await?,
            // Not a sandbox id (nothing of ours has that name): only the cgroup goes.
            None => remove_blocking(inner, name, None, None).await?,
        }
        tracing::info!(cgroup = %name, "removed orphaned sandbox");
        removed += 1;
    }
    // Disks of sandboxes whose cgroup was already gone (a crash early in create).
    let state_root = inner.cfg.state_root.clone();
    let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    let disks = tokio::task::spawn_blocking(move || {
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        disk::Disks::reap(&state_root, &keep)
    })
    .await
    .map_err(|e| RuntimeError::Host(format!("reaping task failed: {e}")))?;
    if disks > 0 {
        tracing::info!(count = disks, "unmounted orphaned sandbox disks");
    }
    Ok(removed)
}
