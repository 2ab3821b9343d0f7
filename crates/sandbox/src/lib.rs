//! Sandbox runtime drivers. A [`RuntimeDriver`] turns a [`SandboxSpec`] into a running sandbox
//! whose PID 1 is envd, and tears it down completely. The default driver is
//! [`namespace::NamespaceDriver`] (Linux namespaces + cgroups + overlayfs); a microVM driver can
//! implement the same trait later.
//!
//! Layout of a sandbox's state directory on the host (`SandboxSpec::state_dir`, mode 0700, never
//! visible to the sandbox): `disk.img` and `disk/` (the sandbox's own disk, mounted on the host,
//! holding the overlay's writable layer `upper/` and `work/`; see [`namespace::disk`]; the only
//! part the sandbox writes), `root/` (overlay mount point, only mounted inside the sandbox's own
//! mount namespace), `config.json` (envd's boot configuration, written by the node, handed to
//! envd by the shim as a sealed in-memory file), `envd.sock` and `forward.sock` (bound by the
//! shim, handed to envd as listening descriptors), `envd.log` (envd's output, copied there by
//! the shim from a pipe), `state.json` (what [`RuntimeDriver::adopt`] needs after a restart of
//! the node). Inside the sandbox `/run/paddock` is a small read-only tmpfs of its own (the memory
//! cgroup for OOM attribution, the boot id): nothing there is on the host. Every host-side open
//! of a file in the state directory goes through [`hostfile`].
#![warn(missing_docs)]

use std::path::PathBuf;

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId};

/// Most layers one overlay stacks: the mount options (one page, 4096 bytes) must hold every
/// layer's path (about 55 bytes each in the template store) besides `upperdir` and `workdir`.
pub const MAX_LAYERS: usize = 60;

pub mod hostfile;
pub mod idmap;
pub mod namespace;
pub mod xattr;

/// Where the envd binary is bind-mounted (read-only) inside every sandbox.
pub const SANDBOX_ENVD_PATH: &str = "/usr/local/bin/envd";
/// Where the code interpreter (`paddock-interpreter`, E2B's port-49999 server) is bind-mounted
/// (read-only) inside every sandbox when the node has one: templates name it in their start
/// command (`code-interpreter-v1`) and need not carry it, and it is always the node's version.
pub const SANDBOX_INTERPRETER_PATH: &str = "/usr/local/bin/paddock-interpreter";
/// Name of envd's log in the state directory.
pub const ENVD_LOG_FILE: &str = "envd.log";

/// What to run.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox id (also names its cgroup).
    pub id: SandboxId,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// The template's root-filesystem layers, top first, used read-only as the overlay's lower
    /// layers (`lowerdir=<layers[0]>:<layers[1]>:…`). Never empty.
    pub layers: Vec<PathBuf>,
    /// Start from the disk image a [`RuntimeDriver::stop`] left in `state_dir` (the writable
    /// layer of an earlier run of this sandbox) instead of a fresh, empty disk.
    pub reuse_disk: bool,
    /// Per-sandbox state directory on the host (created by the driver if missing).
    pub state_dir: PathBuf,
    /// envd binary on the host.
    pub envd_bin: PathBuf,
    /// Code interpreter binary on the host, shown at [`SANDBOX_INTERPRETER_PATH`]; `None` = the
    /// template's own file there, if any.
    pub interpreter_bin: Option<PathBuf>,
    /// Resource limits.
    pub resources: Resources,
    /// Network to join; `None` = a fresh namespace with only `lo`.
    pub network: Option<SandboxNetwork>,
}

/// A prepared network namespace for a sandbox (see `paddock-network`).
#[derive(Debug, Clone)]
pub struct SandboxNetwork {
    /// Path the shim opens to join the namespace (`/proc/<pid>/fd/<fd>` of the node).
    pub netns: PathBuf,
    /// Nameservers written to the sandbox's `/etc/resolv.conf`.
    pub dns: Vec<std::net::IpAddr>,
}

/// A running sandbox, as the node needs to reach it.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    /// The sandbox id.
    pub id: SandboxId,
    /// Host pid of the sandbox's PID 1 (envd).
    pub init_pid: u32,
    /// Host path of envd's HTTP socket.
    pub envd_socket: PathBuf,
    /// Host path of envd's port-forwarding socket.
    pub forward_socket: PathBuf,
}

/// Runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A host feature is missing or misconfigured.
    #[error("host setup: {0}")]
    Host(String),
    /// Creating the sandbox failed; the message says at which step.
    #[error("creating sandbox {id}: {message}")]
    Create {
        /// Which sandbox.
        id: SandboxId,
        /// What failed.
        message: String,
    },
    /// The driver does not know this sandbox.
    #[error("sandbox {0} is not running on this node")]
    NotFound(SandboxId),
    /// The driver cannot do this at all (e.g. pause without a cgroup freezer).
    #[error("the {driver} runtime does not support {operation}")]
    Unsupported {
        /// The driver's name.
        driver: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// Pausing or resuming a sandbox failed; the sandbox is left running.
    #[error("{operation} sandbox {id}: {message}")]
    Pause {
        /// Which sandbox.
        id: SandboxId,
        /// `pausing` or `resuming`.
        operation: &'static str,
        /// What failed.
        message: String,
    },
    /// An I/O error with context.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A sandbox runtime. Implementations must be safe to call from many tasks at once.
#[async_trait]
pub trait RuntimeDriver: Send + Sync + 'static {
    /// Short name for logs and `paddock doctor` (`namespace`, `microvm`).
    fn name(&self) -> &'static str;

    /// Starts a sandbox; returns once envd has signalled that it is listening.
    /// On failure nothing of the sandbox is left behind.
    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError>;

    /// Kills every process of the sandbox and removes its cgroups and state directory.
    /// Idempotent: killing an unknown or already-dead sandbox is not an error.
    async fn kill(&self, id: &SandboxId, state_dir: &std::path::Path) -> Result<(), RuntimeError>;

    /// After a node restart: reattaches to a sandbox that is still running (from its
    /// `state.json`), or cleans up what is left of it and returns `None`.
    async fn adopt(
        &self,
        id: &SandboxId,
        state_dir: &std::path::Path,
    ) -> Result<Option<SandboxHandle>, RuntimeError>;

    /// Kills and removes every sandbox this driver finds on the host (cgroups under its root)
    /// that is not in `keep`. Returns how many were removed.
    async fn reap_orphans(&self, keep: &[SandboxId]) -> Result<usize, RuntimeError>;

    /// Notifies when a sandbox's PID 1 exits on its own (crash, OOM, `kill 1` from inside).
    fn exits(&self) -> tokio::sync::broadcast::Receiver<SandboxId>;

    /// Whether sandbox `id` was started or adopted by this driver, has not been killed, and its
    /// PID 1 is still running. Cheap (no I/O beyond `/proc`), so callers can use it to catch an
    /// exit whose notification they missed (subscribed too late, or lagged behind).
    fn is_alive(&self, id: &SandboxId) -> bool;

    /// The host cgroup directories of sandbox `id` (one per hierarchy), for reading its
    /// resource usage from the host. Default: none (the driver has no cgroups).
    fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
        let _ = id;
        Vec::new()
    }

    /// Removes driver-wide host state (e.g. the parent cgroup) at shutdown, once every sandbox
    /// has been killed. Best effort: what is still in use is left alone.
    async fn release(&self);

    /// Pauses sandbox `id` in memory: every process stops being scheduled and keeps its memory
    /// and open files. Returns once all of them are stopped; pausing a paused sandbox is a
    /// no-op. A failed pause leaves the sandbox running. Default: unsupported.
    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported {
            driver: self.name(),
            operation: "pause",
        })
    }

    /// Resumes a sandbox paused by [`RuntimeDriver::pause`] (the same processes continue);
    /// resuming a running sandbox is a no-op. Default: unsupported.
    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported {
            driver: self.name(),
            operation: "resume",
        })
    }

    /// Whether sandbox `id` is paused right now (also true for a sandbox adopted after a node
    /// restart that was paused before it). Default: never.
    fn is_paused(&self, id: &SandboxId) -> bool {
        let _ = id;
        false
    }

    /// Stops sandbox `id` like [`RuntimeDriver::kill`] (every process, its cgroups) but keeps
    /// its writable layer: the disk image stays in `state_dir`, detached and consistent, with
    /// whatever else the caller put there; `root/`, sockets and `state.json` go. A later
    /// [`RuntimeDriver::create`] with [`SandboxSpec::reuse_disk`] starts the sandbox again on
    /// the same files. Used to persist a paused sandbox to disk. Default: unsupported.
    async fn stop(&self, id: &SandboxId, state_dir: &std::path::Path) -> Result<(), RuntimeError> {
        let _ = (id, state_dir);
        Err(RuntimeError::Unsupported {
            driver: self.name(),
            operation: "stop keeping the disk",
        })
    }
}
