//! The shim: a short-lived helper process (one per sandbox) that does the part of create that
//! must fork — joining the cgroups, `unshare` of the namespaces, and the fork that makes envd
//! PID 1 of a new pid namespace — so the node never forks inside its tokio runtime.
//!
//! Protocol with the node: the node writes a JSON [`ShimSpec`] to the shim's stdin and closes
//! it; the shim answers on stdout with the line `pid <host pid of PID 1>`, then `ready` (envd
//! wrote a line to its ready fd) or `error <message>`, and then stays to `waitpid` PID 1 and exits
//! with its status (128 + signal if killed). The shim's stderr is `envd.log` in the state
//! directory (opened by the node); envd's stdout and stderr are a pipe the shim copies there
//! (see [`handoff`](super::handoff): envd gets its configuration and listening sockets as
//! descriptors, so the sandbox shares no directory with the host).

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, ForkResult};
use paddock_envd_proto::boot;
use serde::{Deserialize, Serialize};

use super::mounts::{self, RootLayout, SetupError};
use super::seccomp::{self, SeccompError, SeccompProgram};
use super::sys;
use crate::idmap::IdMap;

/// The descriptor envd finds its ready pipe on.
pub(crate) const READY_FD: RawFd = 3;

/// What the node tells the shim to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ShimSpec {
    /// Hostname of the sandbox.
    pub hostname: String,
    /// Template root-filesystem layers, top first.
    pub layers: Vec<PathBuf>,
    /// The sandbox's state directory.
    pub state_dir: PathBuf,
    /// envd on the host.
    pub envd_bin: PathBuf,
    /// The code interpreter on the host, if any (see [`crate::SANDBOX_INTERPRETER_PATH`]).
    #[serde(default)]
    pub interpreter_bin: Option<PathBuf>,
    /// `cgroup.procs` files to join before unsharing.
    pub cgroup_procs: Vec<PathBuf>,
    /// `cgroup.procs` files of the user child cgroups, handed to envd open (see
    /// [`paddock_envd_proto::boot::USER_CGROUP_FDS_ENV`]).
    #[serde(default)]
    pub user_cgroup_procs: Vec<PathBuf>,
    /// `cgroup.procs` files of the rescue child cgroups, handed to envd open (see
    /// [`paddock_envd_proto::boot::RESCUE_CGROUP_FDS_ENV`]).
    #[serde(default)]
    pub rescue_cgroup_procs: Vec<PathBuf>,
    /// `pids.current` and `pids.max` of the user child cgroup, handed to envd open read-only
    /// (see [`paddock_envd_proto::boot::USER_PIDS_FDS_ENV`]).
    #[serde(default)]
    pub user_pids: Option<(PathBuf, PathBuf)>,
    /// The sandbox's memory cgroup directory, bind-mounted read-only at `/run/paddock/memcg`
    /// (shown as `/` there: the sandbox has its own cgroup namespace) so envd can tell OOM
    /// kills from other SIGKILLs.
    #[serde(default)]
    pub memory_cgroup: Option<PathBuf>,
    /// A prepared network namespace to join (`/proc/<node pid>/fd/<fd>`) instead of unsharing
    /// an empty one.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Nameservers for `/etc/resolv.conf` (written only when non-empty).
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
    /// The user-id range the sandbox runs in; `None` = no user namespace.
    #[serde(default)]
    pub id_map: Option<IdMap>,
    /// Seccomp filter, capability cut and `/proc` masks (off only for benchmarks).
    #[serde(default = "yes")]
    pub hardened: bool,
    /// `RLIMIT_NOFILE` (soft, hard) for PID 1, when the node's own differs from what sandboxes
    /// get (see `keep_sandbox_nofile`).
    #[serde(default)]
    pub nofile: Option<(u64, u64)>,
}

fn yes() -> bool {
    true
}

/// A line the shim writes to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShimMessage {
    /// Host pid of the sandbox's PID 1.
    Pid(u32),
    /// envd is listening.
    Ready,
    /// Something failed before envd was ready.
    Error(String),
}

impl ShimMessage {
    /// The line for this message (without newline; the message has no newlines).
    pub(crate) fn to_line(&self) -> String {
        match self {
            ShimMessage::Pid(pid) => format!("pid {pid}"),
            ShimMessage::Ready => "ready".to_string(),
            ShimMessage::Error(msg) => format!("error {}", msg.replace('\n', " ")),
        }
    }

    /// Parses a line written by [`ShimMessage::to_line`].
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        if line == "ready" {
            return Some(ShimMessage::Ready);
        }
        if let Some(pid) = line.strip_prefix("pid ") {
            return pid.parse().ok().map(ShimMessage::Pid);
        }
        line.strip_prefix("error ")
            .map(|m| ShimMessage::Error(m.to_string()))
    }
}

/// Failures of the shim itself (reported on stderr and as an `error` line).
#[derive(Debug, thiserror::Error)]
enum ShimError {
    #[error("reading the spec from stdin")]
    ReadSpec(#[source] std::io::Error),
    #[error("parsing the spec")]
    ParseSpec(#[source] serde_json::Error),
    #[error("joining cgroup {0}")]
    JoinCgroup(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Sys(&'static str, #[source] nix::Error),
    #[error("building the sandbox's seccomp filter")]
    Seccomp(#[source] SeccompError),
    #[error("writing the user namespace's id maps of pid {0}")]
    IdMap(i32, #[source] std::io::Error),
    #[error("{0}")]
    Handoff(&'static str, #[source] std::io::Error),
}

/// What the shim hands envd (see [`handoff`](super::handoff)).
struct Handoff {
    boot_config: Option<OwnedFd>,
    http: OwnedFd,
    forward: OwnedFd,
    log_write: OwnedFd,
}

/// Entry point of the shim process: reads a [`ShimSpec`] as JSON from stdin, starts the sandbox
/// and returns the exit code to exit with. Must be called in a single-threaded process (a fresh
/// `paddock` process before any runtime starts, or the `paddock-sandbox-shim` binary), because
/// it forks.
pub fn shim_main() -> i32 {
    match run() {
        Ok(code) => code,
        Err(e) => {
            let msg = crate::namespace::chain(&e);
            eprintln!("paddock shim: {msg}");
            send(&ShimMessage::Error(msg));
            1
        }
    }
}

fn run() -> Result<i32, ShimError> {
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code; the node may go away and a
    // failed write must not kill the shim (and with it the sandbox).
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map_err(|e| ShimError::Sys("ignoring SIGPIPE", e))?;
    // A fresh process owns no descriptor above stderr: anything there was leaked by whoever
    // started the shim (a service manager, a shell, a CI runner). Closing it keeps the shim's
    // own descriptors in known places and nothing of the host's near the sandbox.
    super::sys::close_fds_from(3)
        .map_err(|e| ShimError::Handoff("closing inherited descriptors", e))?;
    let log_slot = super::handoff::LogPipeSlot::reserve()
        .map_err(|e| ShimError::Handoff("reserving the log pipe's descriptor", e))?;
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .map_err(ShimError::ReadSpec)?;
    let spec: ShimSpec = serde_json::from_slice(&raw).map_err(ShimError::ParseSpec)?;
    // Compiled before anything changes, so an unsupported host fails cleanly.
    let filter = seccomp::compile().map_err(ShimError::Seccomp)?;

    // Host-side objects envd gets as descriptors, made while the shim is still in the host's
    // mount namespace; the state directory they come from is never visible to the sandbox.
    let boot_config = super::handoff::boot_config(&spec.state_dir)
        .map_err(|e| ShimError::Handoff("reading envd's boot configuration", e))?;
    let (http, forward) = super::handoff::listeners(&spec.state_dir)
        .map_err(|e| ShimError::Handoff("binding envd's sockets", e))?;
    let (log_read, log_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::Sys("creating the log pipe", e))?;
    let handoff = Handoff {
        boot_config,
        http,
        forward,
        log_write,
    };

    let me = std::process::id().to_string();
    for file in &spec.cgroup_procs {
        std::fs::write(file, &me).map_err(|e| ShimError::JoinCgroup(file.clone(), e))?;
    }
    let devnull = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ShimError::Sys("opening /dev/null", e))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::Sys("creating the ready pipe", e))?;
    // PID 1's pivot_root also moves the shim's root (they share the mount namespace), so the
    // host's /proc is held open for writing the id maps later.
    let host_proc = std::fs::File::open("/proc").map_err(|e| ShimError::IdMap(0, e))?;
    // PID 1 enters its user namespace last (after all mounts); only a process privileged in
    // the parent namespace may write an arbitrary id map, so the shim writes it on request.
    let (sync_parent, sync_child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| ShimError::Sys("creating the sync socket", e))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    match &spec.netns {
        // Joined before the other namespaces are unshared, while /proc is still the host's.
        Some(path) => {
            let fd = open(
                path.as_path(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| ShimError::Sys("opening the network namespace", e))?;
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| ShimError::Sys("joining the network namespace", e))?;
        }
        None => flags |= CloneFlags::CLONE_NEWNET,
    }
    nix::sched::unshare(flags).map_err(|e| ShimError::Sys("unsharing namespaces", e))?;

    // SAFETY: the shim is single-threaded (see `shim_main`), so the child may run arbitrary
    // code (including allocation) after fork.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| ShimError::Sys("forking", e))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(sync_parent);
            drop(log_read);
            drop(log_slot);
            // The child keeps its end of the ready pipe open until it exits (`_exit` runs no
            // destructors), so the shim sees EOF only after the error below is in the log.
            let err = match child_main(&spec, &ready_w, &sync_child, &filter, &handoff) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!(
                "paddock shim: sandbox init: {}",
                crate::namespace::chain(&err)
            );
            // SAFETY: _exit ends the child without running the parent's atexit handlers or
            // flushing its copied stdio buffers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(sync_child);
    drop(handoff);
    let log = nix::unistd::dup(2).map_err(|e| ShimError::Sys("duplicating stderr", e))?;
    // SAFETY: `dup` just returned this descriptor and nothing else owns it.
    let log = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(log) };
    // The pipe's read end on a known descriptor, where the node looks for output not yet copied.
    let log_read = log_slot
        .fill(log_read)
        .map_err(|e| ShimError::Handoff("placing the log pipe", e))?;
    let mut pump = super::handoff::LogPump::new(log_read, log, super::handoff::LOG_MAX_BYTES);
    send(&ShimMessage::Pid(child.as_raw() as u32));
    if let Some(map) = &spec.id_map {
        // EOF instead of the request: the child failed earlier and its error follows below.
        if sync_read(&sync_parent) {
            write_id_maps(&host_proc, child.as_raw(), map)
                .map_err(|e| ShimError::IdMap(child.as_raw(), e))?;
            sync_write(&sync_parent);
        }
    }
    drop(sync_parent);
    let got = read_ready_line(&mut pump, std::fs::File::from(ready_r));
    match got {
        Ok(line) if line.trim_end() == "ready" => send(&ShimMessage::Ready),
        Ok(line) if line.is_empty() => {
            // Its last words are in the pipe: into the log before the node reads it.
            let _ = pump.until_readable(None, Some(std::time::Duration::from_millis(200)));
            send(&ShimMessage::Error(
                "envd exited before it was ready".into(),
            ))
        }
        Ok(other) => send(&ShimMessage::Error(format!(
            "envd wrote {:?} instead of ready",
            other.trim_end()
        ))),
        Err(e) => send(&ShimMessage::Error(format!("reading the ready pipe: {e}"))),
    }
    // Nothing more goes to the node: stdout becomes /dev/null so a node restart cannot matter.
    let _ = dup2(devnull, 1);
    // Copy envd's output until PID 1 exits (its pidfd turns readable), then reap it.
    let pidfd = super::sys::pidfd_open(child.as_raw() as u32).ok();
    let code = loop {
        let _ = match &pidfd {
            Some(fd) => pump.until_readable(Some(fd), None),
            None => pump.until_readable(None, Some(std::time::Duration::from_millis(100))),
        };
        match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(ShimError::Sys("waiting for the sandbox init", e)),
        }
    };
    pump.drain();
    Ok(code)
}

/// Reads envd's readiness line (empty at EOF: it exited first), copying its output meanwhile.
fn read_ready_line(pump: &mut super::handoff::LogPump, ready: std::fs::File) -> io::Result<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        pump.until_readable(Some(&ready), None)?;
        match (&ready).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                if line.contains(&b'\n') || line.len() > 256 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// cgroup descriptors handed to envd (all close-on-exec until placed).
struct CgroupFds {
    /// `cgroup.procs` of the user children, write-only.
    user: Vec<RawFd>,
    /// `cgroup.procs` of the rescue children, write-only.
    rescue: Vec<RawFd>,
    /// `pids.current` and `pids.max` of the user child, read-only (empty or both).
    user_pids: Vec<RawFd>,
}

/// PID 1 of the sandbox: builds the root, then execs envd. Only returns on failure.
fn child_main(
    spec: &ShimSpec,
    ready: &OwnedFd,
    sync: &OwnedFd,
    filter: &SeccompProgram,
    handoff: &Handoff,
) -> Result<Infallible, SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| SetupError::new("setting the parent-death signal", e))?;
    nix::unistd::setsid().map_err(|e| SetupError::new("setsid", e))?;
    // Its own cgroup namespace, rooted at the sandbox's cgroup (joined by the shim): the
    // sandbox sees `/` in /proc/self/cgroup and in the memory cgroup's mount, not host paths.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| SetupError::new("unsharing the cgroup namespace", e))?;
    if spec.id_map.is_some() {
        open_network_sysctls()?;
    }
    // Opened while still privileged on the host; kept above the descriptors set up below.
    let open_high = |file: &Path, flags: OFlag| -> Result<RawFd, SetupError> {
        let fd = open(file, flags | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| SetupError::new(format!("opening {}", file.display()), e))?;
        let high = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(100))
            .map_err(|e| SetupError::new("moving a cgroup descriptor", e))?;
        let _ = nix::unistd::close(fd);
        Ok(high)
    };
    let cgroup_fds = CgroupFds {
        user: (spec.user_cgroup_procs.iter())
            .map(|f| open_high(f, OFlag::O_WRONLY))
            .collect::<Result<_, _>>()?,
        rescue: (spec.rescue_cgroup_procs.iter())
            .map(|f| open_high(f, OFlag::O_WRONLY))
            .collect::<Result<_, _>>()?,
        user_pids: match &spec.user_pids {
            Some((current, max)) => vec![
                open_high(current, OFlag::O_RDONLY)?,
                open_high(max, OFlag::O_RDONLY)?,
            ],
            None => Vec::new(),
        },
    };
    mounts::make_private()?;
    let root_id = spec.id_map.map(|m| m.base);
    let layout = RootLayout {
        layers: &spec.layers,
        state_dir: &spec.state_dir,
        envd_bin: &spec.envd_bin,
        interpreter_bin: spec.interpreter_bin.as_deref(),
        memory_cgroup: spec.memory_cgroup.as_deref(),
        root_id,
        hardened: spec.hardened,
    };
    mounts::build_root(&layout)?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| SetupError::new("setting the hostname", e))?;
    if spec.netns.is_none() {
        // A prepared namespace has lo up already (and the ioctl would take the RTNL lock).
        sys::interface_up("lo").map_err(|e| SetupError::new("bringing lo up", e))?;
    }
    mounts::pivot(&layout.root())?;
    mounts::write_etc(Path::new("/"), &spec.hostname, root_id)?;
    if !spec.dns.is_empty() {
        mounts::write_resolv_conf(Path::new("/"), &spec.dns, root_id)?;
    }
    // envd must survive the sandbox's own OOMs, so the kernel kills the user's process instead:
    // envd's children get a raised score (see envd's spawn), and envd asks for -1000 here,
    // while still privileged on the host. Through the legacy `oom_adj` (-17 is -1000): unlike
    // a privileged write of `oom_score_adj`, it leaves the lowest score the process (and every
    // child, which inherits it) may set without CAP_SYS_RESOURCE at 0, so no process of the
    // sandbox can make itself unkillable and leave envd the OOM killer's choice. Lowering a
    // score needs CAP_SYS_RESOURCE, which a node may itself lack (a node running in a
    // container); then the raised scores of the children alone steer the OOM killer.
    let protected = match std::fs::write("/proc/self/oom_adj", "-17") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::write("/proc/self/oom_score_adj", "-1000")
        }
        other => other,
    };
    if let Err(e) = protected {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(SetupError::new("protecting envd from the OOM killer", e));
        }
    }
    if spec.id_map.is_some() {
        enter_user_namespace(sync)?;
    }

    let null = open("/dev/null", OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| SetupError::new("opening /dev/null", e))?;
    let dup = |from: RawFd, to: RawFd| {
        dup2(from, to)
            .map(drop)
            .map_err(|e| SetupError::new(format!("dup2 to fd {to}"), e))
    };
    // The handed-over descriptors are moved high first, so the dup2s below onto small
    // numbers cannot clobber one of them.
    let high = |fd: RawFd, what: &str| {
        fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(200))
            .map_err(|e| SetupError::new(format!("moving the {what} descriptor"), e))
    };
    let log = high(handoff.log_write.as_raw_fd(), "log")?;
    let http = high(handoff.http.as_raw_fd(), "envd socket")?;
    let forward = high(handoff.forward.as_raw_fd(), "forward socket")?;
    let boot = match &handoff.boot_config {
        Some(fd) => Some(high(fd.as_raw_fd(), "boot configuration")?),
        None => None,
    };
    dup(null, 0)?;
    dup(log, 1)?;
    dup(log, 2)?;
    let ready = ready.as_raw_fd();
    if ready == READY_FD {
        fcntl(ready, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| SetupError::new("clearing close-on-exec", e))?;
    } else {
        dup(ready, READY_FD)?;
    }
    let mut next = READY_FD + 1;
    let mut place = |fd: RawFd| -> Result<RawFd, SetupError> {
        let target = next;
        dup(fd, target)?;
        next += 1;
        Ok(target)
    };
    let listen_fds = format!("{},{}", place(http)?, place(forward)?);
    let boot_fd = match boot {
        Some(fd) => place(fd)?.to_string(),
        None => String::new(),
    };
    let mut place_all = |fds: &[RawFd]| -> Result<String, SetupError> {
        let placed = fds.iter().map(|fd| place(*fd).map(|t| t.to_string()));
        Ok(placed.collect::<Result<Vec<_>, _>>()?.join(","))
    };
    let user_fds = place_all(&cgroup_fds.user)?;
    let rescue_fds = place_all(&cgroup_fds.rescue)?;
    let user_pids_fds = place_all(&cgroup_fds.user_pids)?;
    sys::close_fds_from(next).map_err(|e| SetupError::new("closing descriptors", e))?;

    if let Some((soft, hard)) = spec.nofile {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
            .map_err(|e| SetupError::new("setting the open-files limit", e))?;
    }
    // SAFETY: restoring the default disposition installs no handler code.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| SetupError::new("resetting SIGPIPE", e))?;
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| SetupError::new("clearing the signal mask", e))?;

    let cstr = |s: &str| {
        CString::new(s)
            .map_err(|e| SetupError::new("building exec arguments", std::io::Error::other(e)))
    };
    let path = cstr(crate::SANDBOX_ENVD_PATH)?;
    let args = [cstr("envd")?, cstr("--run-dir")?, cstr(boot::RUN_DIR)?];
    let env = [
        cstr(&format!("PATH={}", paddock_envd_proto::DEFAULT_PATH))?,
        cstr("HOME=/root")?,
        cstr(&format!("{}={READY_FD}", boot::READY_FD_ENV))?,
        cstr(&format!("{}={user_fds}", boot::USER_CGROUP_FDS_ENV))?,
        cstr(&format!("{}={rescue_fds}", boot::RESCUE_CGROUP_FDS_ENV))?,
        cstr(&format!("{}={user_pids_fds}", boot::USER_PIDS_FDS_ENV))?,
        cstr(&format!("{}={listen_fds}", boot::LISTEN_FDS_ENV))?,
        cstr(&format!("{}={boot_fd}", boot::BOOT_CONFIG_FD_ENV))?,
    ];
    // Last, because the filter forbids what setup needs (mounts, unshare); installed before the
    // capabilities are cut, since without `no_new_privs` installing it needs CAP_SYS_ADMIN (in
    // the sandbox's user namespace, where PID 1 holds every capability until the cut). Neither
    // capset, prctl nor execve is on the deny-list.
    if spec.hardened {
        filter.install().map_err(|e| {
            let cause = match e {
                SeccompError::Install(os) => os,
                other => io::Error::other(other),
            };
            SetupError::new("installing the seccomp filter", cause)
        })?;
        sys::restrict_capabilities(sys::cap_mask(&sys::DEFAULT_CAPS))
            .map_err(|e| SetupError::new("dropping capabilities", e))?;
    }
    let err =
        nix::unistd::execve(&path, &args, &env).map_err(|e| SetupError::new("executing envd", e));
    match err {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
}

/// Network sysctls a sandbox in a user namespace needs, written for its network namespace
/// (which PID 1 is in already) through the host's `/proc` before the mounts: the namespace is
/// owned by the host's user namespace, in which sandbox root holds no capability, so binding
/// ports below 1024 and `ping` (ICMP datagram sockets, instead of raw ones) are opened to
/// every id of the sandbox.
fn open_network_sysctls() -> Result<(), SetupError> {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        std::fs::write(path, value).map_err(|e| SetupError::new(format!("writing {path}"), e))?;
    }
    Ok(())
}

/// Moves PID 1 into a new user namespace: unshare, ask the shim to write the id maps, wait
/// for it, then become root of the namespace (host uid `base`). The namespace is the only one
/// PID 1 owns: the mount, pid, uts, ipc and network namespaces were made before it and stay
/// owned by the host's user namespace, so sandbox root can change none of them (no mounts, no
/// hostname, no interfaces) even where seccomp would allow it.
fn enter_user_namespace(sync: &OwnedFd) -> Result<(), SetupError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| SetupError::new("unsharing the user namespace", e))?;
    nix::unistd::write(sync, b"u").map_err(|e| SetupError::new("asking for the id maps", e))?;
    let mut ack = [0u8; 1];
    match nix::unistd::read(sync.as_raw_fd(), &mut ack) {
        Ok(1) => {}
        Ok(_) => {
            return Err(SetupError::new(
                "waiting for the id maps",
                io::Error::new(io::ErrorKind::UnexpectedEof, "the shim did not write them"),
            ))
        }
        Err(e) => return Err(SetupError::new("waiting for the id maps", e)),
    }
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(root, root, root)
        .map_err(|e| SetupError::new("becoming group root of the namespace", e))?;
    nix::unistd::setgroups(&[]).map_err(|e| SetupError::new("clearing supplementary groups", e))?;
    let root = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(root, root, root)
        .map_err(|e| SetupError::new("becoming root of the namespace", e))
}

/// Writes `uid_map` and `gid_map` of `pid` (which has just unshared its user namespace)
/// through `proc`, a directory descriptor of the host's /proc.
fn write_id_maps(proc: &std::fs::File, pid: i32, map: &IdMap) -> io::Result<()> {
    let text = map.proc_map();
    for file in ["uid_map", "gid_map"] {
        let fd = nix::fcntl::openat(
            Some(proc.as_raw_fd()),
            format!("{pid}/{file}").as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Reads the one-byte request of the child; `false` on EOF or error (the child is gone).
fn sync_read(sock: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(sock.as_raw_fd(), &mut b) {
            Ok(n) => return n == 1,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Answers the child; a failure means it is gone, which the ready pipe reports.
fn sync_write(sock: &OwnedFd) {
    let _ = nix::unistd::write(sock, b"k");
}

/// Writes one message line to stdout; the node may be gone, so failures are ignored.
fn send(msg: &ShimMessage) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", msg.to_line());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for msg in [
            ShimMessage::Pid(42),
            ShimMessage::Ready,
            ShimMessage::Error("no such file".into()),
        ] {
            assert_eq!(ShimMessage::parse(&msg.to_line()), Some(msg));
        }
        assert_eq!(ShimMessage::Error("a\nb".into()).to_line(), "error a b");
        assert_eq!(ShimMessage::parse("pid x"), None);
        assert_eq!(ShimMessage::parse("hello"), None);
    }

    #[test]
    fn spec_is_json() {
        let spec = ShimSpec {
            hostname: "h".into(),
            layers: vec!["/r".into(), "/b".into()],
            state_dir: "/s".into(),
            envd_bin: "/e".into(),
            interpreter_bin: Some("/i".into()),
            cgroup_procs: vec!["/sys/fs/cgroup/pids/p/x/cgroup.procs".into()],
            user_cgroup_procs: vec!["/sys/fs/cgroup/pids/p/x/user/cgroup.procs".into()],
            rescue_cgroup_procs: vec!["/sys/fs/cgroup/pids/p/x/rescue/cgroup.procs".into()],
            user_pids: Some((
                "/sys/fs/cgroup/pids/p/x/user/pids.current".into(),
                "/sys/fs/cgroup/pids/p/x/user/pids.max".into(),
            )),
            memory_cgroup: Some("/sys/fs/cgroup/memory/p/x".into()),
            netns: Some("/proc/1/fd/9".into()),
            dns: vec!["1.1.1.1".parse().expect("ip")],
            id_map: Some(IdMap::DEFAULT),
            hardened: true,
            nofile: Some((1024, 4096)),
        };
        let json = serde_json::to_string(&spec).expect("serialize");
        assert_eq!(
            serde_json::from_str::<ShimSpec>(&json).expect("parse"),
            spec
        );
    }

    #[test]
    fn error_chain_joins_sources() {
        let e = SetupError::new(
            "mounting proc",
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(
            crate::namespace::chain(&e).starts_with("mounting proc: "),
            "{}",
            crate::namespace::chain(&e)
        );
    }
}
