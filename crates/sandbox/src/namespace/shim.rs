//! The shim: a short-lived helper process (one per sandbox) that does the part of create that
//! must fork — joining the cgroups, `unshare` of the namespaces, and the fork that makes envd
//! PID 1 of a new pid namespace — so the node never forks inside its tokio runtime.
//!
//! Protocol with the node: the node writes a JSON [`ShimSpec`] to the shim's stdin and closes
//! it; the shim answers on stdout with the line `pid <host pid of PID 1>`, then `ready` (envd
//! wrote a line to its ready fd) or `error <message>`, and then stays to `waitpid` PID 1 and exits
//! with its status (128 + signal if killed). The shim's stderr, and later envd's stdout and
//! stderr, go to `run/envd.log`.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, ForkResult};
use serde::{Deserialize, Serialize};

use super::mounts::{self, RootLayout, SetupError};
use super::seccomp::{self, SeccompError, SeccompProgram};
use super::sys;

/// The descriptor envd finds its ready pipe on.
pub(crate) const READY_FD: RawFd = 3;

/// What the node tells the shim to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ShimSpec {
    /// Hostname of the sandbox.
    pub hostname: String,
    /// Template root file system.
    pub rootfs: PathBuf,
    /// The sandbox's state directory.
    pub state_dir: PathBuf,
    /// envd on the host.
    pub envd_bin: PathBuf,
    /// `cgroup.procs` files to join before unsharing.
    pub cgroup_procs: Vec<PathBuf>,
    /// The sandbox's memory cgroup directory, bind-mounted read-only at `/run/paddock/memcg`
    /// so envd can tell OOM kills from other SIGKILLs.
    #[serde(default)]
    pub memory_cgroup: Option<PathBuf>,
    /// A prepared network namespace to join (`/proc/<node pid>/fd/<fd>`) instead of unsharing
    /// an empty one.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Nameservers for `/etc/resolv.conf` (written only when non-empty).
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
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
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .map_err(ShimError::ReadSpec)?;
    let spec: ShimSpec = serde_json::from_slice(&raw).map_err(ShimError::ParseSpec)?;
    // Compiled before anything changes, so an unsupported host fails cleanly.
    let filter = seccomp::compile().map_err(ShimError::Seccomp)?;

    let me = std::process::id().to_string();
    for file in &spec.cgroup_procs {
        std::fs::write(file, &me).map_err(|e| ShimError::JoinCgroup(file.clone(), e))?;
    }
    let devnull = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ShimError::Sys("opening /dev/null", e))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::Sys("creating the ready pipe", e))?;
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
            // The child keeps its end of the ready pipe open until it exits (`_exit` runs no
            // destructors), so the shim sees EOF only after the error below is in the log.
            let err = match child_main(&spec, &ready_w, &filter) {
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
    send(&ShimMessage::Pid(child.as_raw() as u32));
    let mut line = String::new();
    let got = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
    match got {
        Ok(_) if line.trim_end() == "ready" => send(&ShimMessage::Ready),
        Ok(0) => send(&ShimMessage::Error(
            "envd exited before it was ready".into(),
        )),
        Ok(_) => send(&ShimMessage::Error(format!(
            "envd wrote {:?} instead of ready",
            line.trim_end()
        ))),
        Err(e) => send(&ShimMessage::Error(format!("reading the ready pipe: {e}"))),
    }
    // Nothing more goes to the node: stdout becomes /dev/null so a node restart cannot matter.
    let _ = dup2(devnull, 1);
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(ShimError::Sys("waiting for the sandbox init", e)),
        }
    }
}

/// PID 1 of the sandbox: builds the root, then execs envd. Only returns on failure.
fn child_main(
    spec: &ShimSpec,
    ready: &OwnedFd,
    filter: &SeccompProgram,
) -> Result<Infallible, SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| SetupError::new("setting the parent-death signal", e))?;
    nix::unistd::setsid().map_err(|e| SetupError::new("setsid", e))?;
    mounts::make_private()?;
    let layout = RootLayout {
        rootfs: &spec.rootfs,
        state_dir: &spec.state_dir,
        envd_bin: &spec.envd_bin,
        memory_cgroup: spec.memory_cgroup.as_deref(),
    };
    mounts::build_root(&layout)?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| SetupError::new("setting the hostname", e))?;
    if spec.netns.is_none() {
        // A prepared namespace has lo up already (and the ioctl would take the RTNL lock).
        sys::interface_up("lo").map_err(|e| SetupError::new("bringing lo up", e))?;
    }
    mounts::pivot(&layout.root())?;
    mounts::write_etc(Path::new("/"), &spec.hostname)?;
    if !spec.dns.is_empty() {
        mounts::write_resolv_conf(Path::new("/"), &spec.dns)?;
    }

    let null = open("/dev/null", OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| SetupError::new("opening /dev/null", e))?;
    let log_path = format!("{}/envd.log", crate::SANDBOX_RUN_DIR);
    let log = open(
        log_path.as_str(),
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| SetupError::new("opening envd.log", e))?;
    let dup = |from: RawFd, to: RawFd| {
        dup2(from, to)
            .map(drop)
            .map_err(|e| SetupError::new(format!("dup2 to fd {to}"), e))
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
    sys::close_fds_from(READY_FD + 1).map_err(|e| SetupError::new("closing descriptors", e))?;

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
    let args = [
        cstr("envd")?,
        cstr("--run-dir")?,
        cstr(crate::SANDBOX_RUN_DIR)?,
    ];
    let env = [
        cstr("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")?,
        cstr("HOME=/root")?,
        cstr(&format!("{}={READY_FD}", crate::READY_FD_ENV))?,
    ];
    // Last, because everything above (mounts, pivot_root, sethostname) needs CAP_SYS_ADMIN;
    // the filter first, since without `no_new_privs` installing it needs CAP_SYS_ADMIN too.
    // Neither capset, prctl nor execve is on the deny-list.
    // envd must survive the sandbox's own OOMs, so the kernel kills the user's process instead:
    // envd's children get a raised score (see envd's spawn), and envd asks for -1000 here.
    // Lowering a score needs CAP_SYS_RESOURCE, which a node may itself lack (a node running in
    // a container); then the raised scores of the children alone steer the OOM killer.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(SetupError::new("protecting envd from the OOM killer", e));
        }
    }
    filter.install().map_err(|e| {
        let cause = match e {
            SeccompError::Install(os) => os,
            other => io::Error::other(other),
        };
        SetupError::new("installing the seccomp filter", cause)
    })?;
    sys::restrict_capabilities(sys::cap_mask(&sys::DEFAULT_CAPS))
        .map_err(|e| SetupError::new("dropping capabilities", e))?;
    let err =
        nix::unistd::execve(&path, &args, &env).map_err(|e| SetupError::new("executing envd", e));
    match err {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
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
            rootfs: "/r".into(),
            state_dir: "/s".into(),
            envd_bin: "/e".into(),
            cgroup_procs: vec!["/sys/fs/cgroup/pids/p/x/cgroup.procs".into()],
            memory_cgroup: Some("/sys/fs/cgroup/memory/p/x".into()),
            netns: Some("/proc/1/fd/9".into()),
            dns: vec!["1.1.1.1".parse().expect("ip")],
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
