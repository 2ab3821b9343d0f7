//! `create`: state directory and cgroup on the host (blocking work, off the async workers), then
//! the shim process and the handshake with it (`pid`, then `ready`), bounded by
//! [`READY_TIMEOUT`](super::READY_TIMEOUT). Any failure tears down everything created so far.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use paddock_domain::SandboxId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::cgroup::{self, CgroupLimits, SandboxCgroup};
use super::shim::{ShimMessage, ShimSpec};
use super::state::{self, SandboxState};
use super::{chain, handle, mounts, sys, teardown, Inner, Live, READY_TIMEOUT};
use crate::{RuntimeError, SandboxHandle, SandboxSpec};

/// How much of `envd.log` a failed create quotes.
const LOG_TAIL_BYTES: usize = 2048;
use crate::MAX_LAYERS;

pub(crate) async fn create(
    inner: &Arc<Inner>,
    spec: SandboxSpec,
) -> Result<SandboxHandle, RuntimeError> {
    let id = spec.id.clone();
    let fail = |message: String| RuntimeError::Create {
        id: id.clone(),
        message,
    };
    validate(&spec).map_err(fail)?;
    if let Some(map) = &inner.cfg.id_map {
        for layer in &spec.layers {
            check_shifted(layer, map).map_err(fail)?;
        }
    }
    if inner.live().contains_key(&id) {
        return Err(fail("a sandbox with this id is already running".into()));
    }
    let started = std::time::Instant::now();

    let prep_inner = Arc::clone(inner);
    let prep_spec = spec.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&prep_inner, &prep_spec))
        .await
        .map_err(|e| fail(format!("preparing task failed: {e}")))?;
    let prepare_us = started.elapsed().as_micros() as u64;
    let (cg, log) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ =
                teardown::remove_blocking(inner, id.as_str(), None, Some(&spec.state_dir)).await;
            return Err(e);
        }
    };

    match start(inner, &spec, &cg, log).await {
        Ok((child, init_pid, init_start_time)) => {
            let killed = Arc::new(AtomicBool::new(false));
            let (done_tx, done) = watch::channel(false);
            inner.live().insert(
                id.clone(),
                Live {
                    init_pid,
                    init_start_time,
                    killed: Arc::clone(&killed),
                    done,
                },
            );
            watch_child(inner, id.clone(), child, killed, done_tx);
            tracing::info!(
                sandbox_id = %id,
                init_pid,
                elapsed_ms = started.elapsed().as_millis() as u64,
                prepare_us,
                "sandbox started"
            );
            Ok(handle(id, init_pid, &spec.state_dir))
        }
        Err(message) => {
            let tail = log_tail(&spec.state_dir.join(crate::ENVD_LOG_FILE));
            let _ =
                teardown::remove_blocking(inner, id.as_str(), None, Some(&spec.state_dir)).await;
            let message = if tail.is_empty() {
                message
            } else {
                format!("{message}; envd.log: {tail}")
            };
            tracing::warn!(sandbox_id = %id, %message, "sandbox create failed");
            Err(fail(message))
        }
    }
}

fn validate(spec: &SandboxSpec) -> Result<(), String> {
    if spec.layers.is_empty() {
        return Err("the template has no root-filesystem layer".into());
    }
    if spec.layers.len() > MAX_LAYERS {
        return Err(format!(
            "the template has {} layers; at most {MAX_LAYERS} can be stacked",
            spec.layers.len()
        ));
    }
    for layer in &spec.layers {
        if !layer.is_dir() {
            return Err(format!(
                "template layer {} is not a directory",
                layer.display()
            ));
        }
    }
    if !spec.envd_bin.is_file() {
        return Err(format!("envd binary {} not found", spec.envd_bin.display()));
    }
    if let Some(bin) = spec.interpreter_bin.as_ref().filter(|b| !b.is_file()) {
        return Err(format!(
            "code interpreter binary {} not found",
            bin.display()
        ));
    }
    if spec.reuse_disk && !spec.state_dir.join(super::disk::IMAGE_FILE).is_file() {
        return Err(format!(
            "no disk image to reuse in {}",
            spec.state_dir.display()
        ));
    }
    for p in spec.layers.iter().chain([&spec.state_dir]) {
        if !p.is_absolute() || !mounts::overlay_safe(p) {
            return Err(format!(
                "path {} must be absolute and free of ',', ':' and '\\'",
                p.display()
            ));
        }
    }
    if spec.hostname.is_empty()
        || spec.hostname.len() > 64
        || !spec
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("invalid hostname {:?}", spec.hostname));
    }
    Ok(())
}

/// A template must be stored shifted into the sandboxes' id range, or sandbox root would not
/// own its own files.
fn check_shifted(rootfs: &Path, map: &crate::idmap::IdMap) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(rootfs)
        .map_err(|e| format!("inspecting {}: {e}", rootfs.display()))?
        .uid();
    if map.contains(uid) {
        return Ok(());
    }
    Err(format!(
        "template rootfs {} is owned by host uid {uid}, not by the sandbox id range starting at \
         {}; shift it with paddock_sandbox::idmap::shift_tree (the node's template store does \
         this when it opens)",
        rootfs.display(),
        map.base
    ))
}

/// Blocking host-side preparation: state directory layout, the sandbox's disk (holding the
/// overlay's `upper` and `work`) and the cgroup with its limits. Returns the cgroup and the
/// log file the shim's stderr goes to.
fn prepare(
    inner: &Inner,
    spec: &SandboxSpec,
) -> Result<(SandboxCgroup, std::fs::File), RuntimeError> {
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    // Host-only: the sandbox never sees this directory (only its disk, mounted below it).
    crate::hostfile::create_private_dir(&spec.state_dir)
        .map_err(io(format!("creating {}", spec.state_dir.display())))?;
    let root = spec.state_dir.join("root");
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let disk = if spec.reuse_disk {
        inner.disks.reattach(&spec.state_dir)
    } else {
        inner.disks.create(&spec.state_dir, spec.resources.disk_mb)
    };
    disk.map_err(|e| match e {
        super::disk::DiskError::NoLoopDevices => RuntimeError::Host(e.to_string()),
        e => RuntimeError::Create {
            id: spec.id.clone(),
            message: format!("preparing the sandbox's disk: {}", chain(&e)),
        },
    })?;
    let log_path = spec.state_dir.join(crate::ENVD_LOG_FILE);
    let log = crate::hostfile::open_append(&log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let limits = CgroupLimits::from_resources(&spec.resources);
    let cg = cgroup::create(inner.cgroups.as_ref(), spec.id.as_str(), &limits).map_err(|e| {
        RuntimeError::Create {
            id: spec.id.clone(),
            message: chain(&e),
        }
    })?;
    Ok((cg, log))
}

/// Spawns the shim and runs the handshake. On error the shim has been killed and reaped; the
/// caller removes the cgroup and the state directory.
async fn start(
    inner: &Inner,
    spec: &SandboxSpec,
    cg: &SandboxCgroup,
    log: std::fs::File,
) -> Result<(Child, u32, u64), String> {
    let shim_spec = ShimSpec {
        hostname: spec.hostname.clone(),
        layers: spec.layers.clone(),
        state_dir: spec.state_dir.clone(),
        envd_bin: spec.envd_bin.clone(),
        interpreter_bin: spec.interpreter_bin.clone(),
        cgroup_procs: cg.procs_files(),
        user_cgroup_procs: cg.child_procs_files(cgroup::USER_CGROUP),
        rescue_cgroup_procs: cg.child_procs_files(cgroup::RESCUE_CGROUP),
        user_pids: cg.user_pids_files(),
        memory_cgroup: cg
            .dirs
            .iter()
            .find(|d| d.join("memory.oom_control").exists() || d.join("memory.events").exists())
            .cloned(),
        netns: spec.network.as_ref().map(|n| n.netns.clone()),
        dns: spec
            .network
            .as_ref()
            .map(|n| n.dns.clone())
            .unwrap_or_default(),
        id_map: inner.cfg.id_map,
        hardened: inner.cfg.hardened,
        nofile: super::SANDBOX_NOFILE.get().copied(),
    };
    let json =
        serde_json::to_vec(&shim_spec).map_err(|e| format!("encoding the shim spec: {e}"))?;
    let mut child = Command::new(&inner.cfg.shim_exe)
        .args(&inner.cfg.shim_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Own process group: a Ctrl-C at the node's terminal must not reach sandboxes.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawning shim {}: {e}", inner.cfg.shim_exe.display()))?;
    let shim_pid = child.id().unwrap_or_default();

    let handshake = async {
        let mut stdin = child.stdin.take().ok_or("shim stdin missing")?;
        stdin
            .write_all(&json)
            .await
            .map_err(|e| format!("writing the shim spec: {e}"))?;
        drop(stdin);
        let stdout = child.stdout.take().ok_or("shim stdout missing")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut init = None;
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|e| format!("reading from the shim: {e}"))?;
            let Some(line) = line else {
                return Err("the shim exited before envd was ready".to_string());
            };
            match ShimMessage::parse(&line) {
                Some(ShimMessage::Pid(pid)) => {
                    let start_time =
                        sys::process_start_time(pid).ok_or("sandbox init died at once")?;
                    let record = SandboxState {
                        id: spec.id.clone(),
                        init_pid: pid,
                        init_start_time: start_time,
                        shim_pid,
                        cgroups: cg.dirs.clone(),
                    };
                    state::write(&spec.state_dir, &record).map_err(|e| chain(&e))?;
                    init = Some((pid, start_time));
                }
                Some(ShimMessage::Ready) => {
                    return init
                        .ok_or_else(|| "the shim said ready before naming the pid".to_string());
                }
                Some(ShimMessage::Error(msg)) => return Err(msg),
                None => return Err(format!("unexpected line from the shim: {line:?}")),
            }
        }
    };
    let result = match tokio::time::timeout(READY_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "envd was not ready within {} s",
            READY_TIMEOUT.as_secs()
        )),
    };
    match result {
        Ok((pid, start_time)) => Ok((child, pid, start_time)),
        Err(message) => {
            let _ = child.kill().await;
            Err(message)
        }
    }
}

/// Waits for the shim (it exits when PID 1 does) and reports the exit unless it was a kill.
fn watch_child(
    inner: &Arc<Inner>,
    id: SandboxId,
    mut child: Child,
    killed: Arc<AtomicBool>,
    done: watch::Sender<bool>,
) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let status = child.wait().await;
        tracing::debug!(sandbox_id = %id, ?status, "sandbox shim exited");
        let _ = done.send(true);
        if let Some(inner) = weak.upgrade() {
            inner.on_exit(id, &killed);
        }
    });
}

/// The last [`LOG_TAIL_BYTES`] of a log file, trimmed, on one line (empty when it cannot be
/// read as a regular file without following a link).
pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(Some((bytes, _))) = crate::hostfile::read_tail(path, LOG_TAIL_BYTES as u64) else {
        return String::new();
    };
    String::from_utf8_lossy(&bytes).trim().replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_is_bounded_and_single_line() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("envd.log");
        assert_eq!(log_tail(&path), "");
        let mut text = "x".repeat(5000);
        text.push_str("\nlast error\n");
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path);
        assert!(tail.ends_with("x | last error"), "{tail}");
        assert!(
            !tail.contains('\n') && tail.len() <= LOG_TAIL_BYTES + 2,
            "{}",
            tail.len()
        );
    }

    #[test]
    fn spec_validation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let envd = tmp.path().join("envd");
        std::fs::write(&envd, "").expect("write");
        let mut spec = SandboxSpec {
            id: SandboxId::parse("iabc").expect("id"),
            hostname: "e2b.local".into(),
            layers: vec![tmp.path().to_path_buf()],
            reuse_disk: false,
            state_dir: tmp.path().join("s"),
            envd_bin: envd,
            interpreter_bin: None,
            resources: Default::default(),
            network: None,
        };
        assert_eq!(validate(&spec), Ok(()));
        spec.reuse_disk = true;
        assert!(validate(&spec).is_err(), "no image to reuse");
        spec.reuse_disk = false;
        spec.layers.clear();
        assert!(validate(&spec).is_err());
        spec.layers = vec![tmp.path().to_path_buf(); MAX_LAYERS + 1];
        assert!(validate(&spec).is_err());
        spec.layers = vec![tmp.path().to_path_buf(), tmp.path().join("missing")];
        assert!(validate(&spec).is_err());
        spec.layers = vec![tmp.path().to_path_buf()];
        spec.hostname = "bad host".into();
        assert!(validate(&spec).is_err());
        spec.hostname = "h".into();
        spec.state_dir = tmp.path().join("a,b");
        assert!(validate(&spec).is_err());
        spec.state_dir = "relative".into();
        assert!(validate(&spec).is_err());
    }
}
