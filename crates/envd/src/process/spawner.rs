//! The spawner: a small single-threaded helper process that envd forks at startup, before any
//! thread exists, and that forks every process `Start` asks for.
//!
//! Why: the processes envd starts belong in the user cgroup (see [`super::cgroup`]). Moving a
//! process into a cgroup (a write to `cgroup.procs`) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period whenever no other
//! migration happened on the host in the last few milliseconds: 6–15 ms measured on the 2-core
//! hosts, paid by the first command of every sandbox and by any command after a pause. The
//! spawner moves itself into the user cgroup once, at startup and off the request path, and its
//! children inherit the cgroup at fork, so no command needs a migration.
//!
//! Each child is forked with `CLONE_PARENT`, which makes it envd's own child exactly as before
//! (parent pid 1 in the sandbox, exit status reaped by [`super::reaper::Reaper`], which
//! registers the pid under its lock before the exit can be reaped). The child does what std's
//! `Command` did in envd's fork (same order: stdio, working directory, signal mask and `SIGPIPE`,
//! OOM score, open-files limit, session or process group, user switch, then `execvp` with
//! `environ` set to the new environment), so a process sees the same environment, arguments,
//! ids and limits as before.
//!
//! Protocol on a `SOCK_STREAM` socketpair: a request is a 4-byte little-endian length sent
//! together with the child's stdin, stdout and stderr as `SCM_RIGHTS`, then the encoded
//! [`Request`]; the answer is one [`Reply`] of 9 bytes. Requests are strictly sequential.
//!
//! When the spawner cannot serve a request (not started, gone, or its fork failed, e.g. because
//! the user cgroup is at its pids limit during a fork bomb) the caller falls back to forking in
//! envd and moving the child, which still works when the user cgroup is full. envd does not
//! ask the spawner at all while the user cgroup is (nearly) full: it forks the child itself and
//! moves it into the rescue cgroup ([`super::cgroup::rescue_target`]).

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Largest request accepted by the spawner (the `Start` request itself is at most 4 MiB).
const MAX_REQUEST: usize = 16 << 20;

/// Reply kinds.
const REPLY_STARTED: u8 = 0;
const REPLY_FORK_FAILED: u8 = 1;
const REPLY_EXEC_FAILED: u8 = 2;
const REPLY_BAD_REQUEST: u8 = 3;

/// envd's end of the socket; `None` once the spawner is known to be gone.
static SPAWNER: OnceLock<Mutex<Option<UnixStream>>> = OnceLock::new();

/// What one child needs, resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Program (looked up in the new environment's `PATH` when it has no slash, as `execvp`).
    pub cmd: Vec<u8>,
    /// Arguments after `argv[0]` (which is `cmd`).
    pub args: Vec<Vec<u8>>,
    /// The whole environment, `KEY=VALUE`, in the order the process sees it.
    pub env: Vec<Vec<u8>>,
    /// Working directory.
    pub cwd: Vec<u8>,
    /// User switch: uid, gid and supplementary groups.
    pub identity: Option<(u32, u32, Vec<u32>)>,
    /// New session with stdin as the controlling terminal (else a new process group).
    pub pty: bool,
    /// Open-files limit (soft, hard) to set.
    pub nofile: Option<(u64, u64)>,
}

/// Why the spawner did not start a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spawner died after taking the request: the process may or may not have started,
    /// so starting it again could run it twice.
    #[error("the spawner died while starting the process: {0}")]
    Lost(#[source] io::Error),
    /// The spawner cannot do it; fork in envd instead.
    #[error("the spawner is unavailable: {0}")]
    Unavailable(String),
    /// The child was forked (it is envd's child, `pid`) but could not set up or exec: the
    /// process does not run. Its zombie is collected by the reaper.
    #[error("{error}")]
    Exec {
        /// The failed child.
        pid: u32,
        /// Why (the errno of the failed step).
        error: io::Error,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    kind: u8,
    pid: i32,
    errno: i32,
}

impl Reply {
    fn encode(self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = self.kind;
        out[1..5].copy_from_slice(&self.pid.to_le_bytes());
        out[5..9].copy_from_slice(&self.errno.to_le_bytes());
        out
    }

    fn decode(raw: &[u8; 9]) -> Reply {
        let int = |r: &[u8]| i32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        Reply {
            kind: raw[0],
            pid: int(&raw[1..5]),
            errno: int(&raw[5..9]),
        }
    }
}

/// Forks the spawner. Call from `main` before any thread starts (the child keeps running Rust
/// code after `fork`, which is only sound in a single-threaded process). Best effort: on failure
/// envd forks every process itself.
pub fn start() {
    let (ours, theirs) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the spawner socket; envd forks processes itself");
            return;
        }
    };
    // SAFETY: called before any other thread exists (see above), so the child may run
    // arbitrary code; it never returns from `serve`.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            tracing::warn!(error = %e, "cannot fork the spawner; envd forks processes itself");
        }
        0 => {
            drop(ours);
            serve(theirs)
        }
        pid => {
            drop(theirs);
            tracing::debug!(pid, "spawner started");
            let _ = SPAWNER.set(Mutex::new(Some(ours)));
        }
    }
}

/// Whether a spawner was started and has not failed yet.
pub fn available() -> bool {
    SPAWNER.get().is_some_and(|s| lock(s).is_some())
}

fn lock(m: &Mutex<Option<UnixStream>>) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks the spawner to start `req` with `stdio` as its stdin, stdout and stderr. Returns the
/// pid of the running process, a child of envd. Blocking.
pub fn spawn(req: &Request, stdio: [BorrowedFd<'_>; 3]) -> Result<u32, SpawnError> {
    let Some(slot) = SPAWNER.get() else {
        return Err(SpawnError::Unavailable("not started".into()));
    };
    let mut guard = lock(slot);
    let Some(sock) = guard.as_mut() else {
        return Err(SpawnError::Unavailable("it has exited".into()));
    };
    match exchange(sock, req, stdio) {
        Ok(reply) => match reply.kind {
            REPLY_STARTED => Ok(reply.pid as u32),
            REPLY_EXEC_FAILED => Err(SpawnError::Exec {
                pid: reply.pid as u32,
                error: io::Error::from_raw_os_error(reply.errno),
            }),
            REPLY_FORK_FAILED => Err(SpawnError::Unavailable(format!(
                "fork failed: {}",
                io::Error::from_raw_os_error(reply.errno)
            ))),
            _ => Err(SpawnError::Unavailable("it refused the request".into())),
        },
        Err(Exchange::TooLarge) => Err(SpawnError::Unavailable("request too large".into())),
        Err(Exchange::NotSent(e)) => {
            tracing::warn!(error = %e, "the spawner is gone; envd forks processes itself from now on");
            *guard = None;
            Err(SpawnError::Unavailable(e.to_string()))
        }
        Err(Exchange::Lost(e)) => {
            tracing::warn!(error = %e, "the spawner died during a request; envd forks processes itself from now on");
            *guard = None;
            Err(SpawnError::Lost(e))
        }
    }
}

/// How an exchange with the spawner failed.
enum Exchange {
    /// The request is larger than the spawner accepts.
    TooLarge,
    /// The request did not reach the spawner whole, so it started nothing.
    NotSent(io::Error),
    /// The request was sent but no answer came: whether the process started is unknown.
    Lost(io::Error),
}

fn exchange(
    sock: &mut UnixStream,
    req: &Request,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<Reply, Exchange> {
    let payload = encode(req);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| (l as usize) <= MAX_REQUEST)
        .ok_or(Exchange::TooLarge)?;
    let header = len.to_le_bytes();
    let fds = stdio.map(|fd| fd.as_raw_fd());
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&header)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| Exchange::NotSent(e.into()))?;
    // envd ignores SIGPIPE, so writes to a dead spawner fail with EPIPE.
    sock.write_all(&header[sent..])
        .and_then(|()| sock.write_all(&payload))
        .map_err(Exchange::NotSent)?;
    let mut raw = [0u8; 9];
    sock.read_exact(&mut raw).map_err(Exchange::Lost)?;
    Ok(Reply::decode(&raw))
}

// ----- encoding -----

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn encode(req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let flags = u8::from(req.pty) | (u8::from(req.identity.is_some()) << 1);
    out.push(flags | (u8::from(req.nofile.is_some()) << 2));
    let (uid, gid, groups) = req
        .identity
        .as_ref()
        .map(|(u, g, gs)| (*u, *g, gs.as_slice()))
        .unwrap_or((0, 0, &[]));
    put_u32(&mut out, uid);
    put_u32(&mut out, gid);
    put_u32(&mut out, groups.len() as u32);
    for g in groups {
        put_u32(&mut out, *g);
    }
    let (soft, hard) = req.nofile.unwrap_or((0, 0));
    out.extend_from_slice(&soft.to_le_bytes());
    out.extend_from_slice(&hard.to_le_bytes());
    put_bytes(&mut out, &req.cmd);
    put_bytes(&mut out, &req.cwd);
    put_u32(&mut out, req.args.len() as u32);
    for a in &req.args {
        put_bytes(&mut out, a);
    }
    put_u32(&mut out, req.env.len() as u32);
    for e in &req.env {
        put_bytes(&mut out, e);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn list(&mut self) -> Option<Vec<Vec<u8>>> {
        let n = self.u32()? as usize;
        // Each entry takes at least its 4-byte length: bound the allocation by the input.
        if n > self.0.len() / 4 {
            return None;
        }
        (0..n).map(|_| self.bytes()).collect()
    }
}

fn decode(raw: &[u8]) -> Option<Request> {
    let mut r = Reader(raw);
    let flags = *r.take(1)?.first()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let ngroups = r.u32()? as usize;
    if ngroups > r.0.len() / 4 {
        return None;
    }
    let groups = (0..ngroups).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
    let soft = r.u64()?;
    let hard = r.u64()?;
    let cmd = r.bytes()?;
    let cwd = r.bytes()?;
    let args = r.list()?;
    let env = r.list()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(Request {
        cmd,
        args,
        env,
        cwd,
        identity: (flags & 2 != 0).then_some((uid, gid, groups)),
        pty: flags & 1 != 0,
        nofile: (flags & 4 != 0).then_some((soft, hard)),
    })
}

// ----- the spawner process -----

/// The spawner's main loop. Never returns: exits when envd closes the socket or dies.
fn serve(sock: UnixStream) -> ! {
    // SAFETY: plain system calls on this (single-threaded) process.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"envd-spawner".as_ptr());
        // Die with envd (outside a sandbox, where envd is not PID 1, nothing else ensures it).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // The one cgroup migration: children inherit the user cgroup from here on.
    super::cgroup::join_in_child(super::cgroup::fds());
    // Nothing envd inherited or opened (the readiness pipe, the cgroup descriptors, which stay
    // open in envd for its fallback) may stay open here: children would inherit what is not
    // close-on-exec, and the readiness pipe must close when envd closes it.
    close_all_but(sock.as_raw_fd());
    let mut sock = sock;
    loop {
        let Some((payload, stdio)) = receive(&mut sock) else {
            // SAFETY: ends this process without running envd's exit handlers.
            unsafe { libc::_exit(0) };
        };
        let reply = match decode(&payload) {
            Some(req) => fork_child(&req, &stdio),
            None => Reply {
                kind: REPLY_BAD_REQUEST,
                pid: 0,
                errno: 0,
            },
        };
        drop(stdio);
        if sock.write_all(&reply.encode()).is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

/// Closes every descriptor above stderr except `keep`.
fn close_all_but(keep: RawFd) {
    let close_range = |first: RawFd, last: RawFd| {
        // SAFETY: close_range only closes descriptors of this process; none of them is used
        // again here.
        unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) == 0 }
    };
    let below = keep <= 3 || close_range(3, keep - 1);
    if below && close_range(keep + 1, RawFd::MAX) {
        return;
    }
    // Kernels before 5.9: the descriptors listed in /proc.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && fd != keep)
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory's own descriptor is closed by now (EBADF, ignored).
        unsafe { libc::close(fd) };
    }
}

/// Reads one request: its length with the three descriptors, then its payload.
fn receive(sock: &mut UnixStream) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < header.len() {
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
        let mut iov = [IoSliceMut::new(&mut header[got..])];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        };
        if msg.bytes == 0 {
            return None;
        }
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_REQUEST {
        return None;
    }
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).ok()?;
    Some((payload, fds))
}

/// Everything the child needs, prepared before the fork so the child only makes system calls.
struct Prepared {
    cmd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

fn prepare(req: &Request) -> Option<Prepared> {
    let c = |b: &[u8]| CString::new(b.to_vec()).ok();
    Some(Prepared {
        cmd: c(&req.cmd)?,
        argv: std::iter::once(&req.cmd)
            .chain(&req.args)
            .map(|a| c(a))
            .collect::<Option<_>>()?,
        envp: req.env.iter().map(|e| c(e)).collect::<Option<_>>()?,
        cwd: c(&req.cwd)?,
    })
}

/// glibc's internal signal for switching ids in every thread.
const SIGSETXID: libc::c_long = 33;

/// The kernel's `struct sigaction` on x86-64 and aarch64 (all zero: `SIG_DFL`, no flags).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

extern "C" {
    static mut environ: *const *const libc::c_char;
}

/// The pointers of `strings` followed by a null one, as `execve` takes its argv and envp (valid
/// while `strings` lives).
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn fork_child(req: &Request, stdio: &[OwnedFd]) -> Reply {
    let fail = |kind, errno| Reply {
        kind,
        pid: 0,
        errno,
    };
    let (Some(p), [stdin, stdout, stderr]) = (prepare(req), stdio) else {
        return fail(REPLY_BAD_REQUEST, 0);
    };
    let (argv, envp) = (null_terminated(&p.argv), null_terminated(&p.envp));
    let fds = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
    // The child reports a failed setup or exec on this pipe; a successful exec closes it.
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return fail(
            REPLY_FORK_FAILED,
            io::Error::last_os_error().raw_os_error().unwrap_or(0),
        );
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (err_r, err_w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: a fork (a clone without a new stack) of this single-threaded process; the new
    // process is envd's child (CLONE_PARENT) and runs `exec_child`, which never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return fail(
            REPLY_FORK_FAILED,
            io::Error::last_os_error().raw_os_error().unwrap_or(0),
        );
    }
    if pid == 0 {
        drop(err_r);
        exec_child(req, &p, &argv, &envp, fds, err_w.as_raw_fd())
    }
    drop(err_w);
    let mut errno = [0u8; 4];
    let mut file = std::fs::File::from(err_r);
    let mut got = 0;
    while got < 4 {
        match file.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == 4 {
        Reply {
            kind: REPLY_EXEC_FAILED,
            pid: pid as i32,
            errno: i32::from_le_bytes(errno),
        }
    } else {
        Reply {
            kind: REPLY_STARTED,
            pid: pid as i32,
            errno: 0,
        }
    }
}

/// The child: the steps std's `Command` and envd's `pre_exec` took, then `execvp`. Reports the
/// errno of the first failing step on `err` and exits with 127. Call only in the child of a
/// fork; `argv` and `envp` are null-terminated arrays of pointers into `p`.
fn exec_child(
    req: &Request,
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: [RawFd; 3],
    err: RawFd,
) -> ! {
    // SAFETY: this process is the fresh, single-threaded child of the spawner; every call is a
    // plain system call (or `execvp`) on descriptors it owns and on memory `p`, `argv` and
    // `envp` keep alive until the exec replaces the process.
    unsafe {
        let fail = |err: RawFd| -> ! {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL);
            let b = errno.to_le_bytes();
            libc::write(err, b.as_ptr().cast(), b.len());
            libc::_exit(127)
        };
        for (target, &fd) in fds.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(err);
            }
        }
        if libc::chdir(p.cwd.as_ptr()) < 0 {
            fail(err);
        }
        // Signal state as std leaves it: empty mask, SIGPIPE back to default (Rust ignores it).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(err);
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            fail(err);
        }
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            // Best effort, as in envd's own fork: a failure leaves the inherited score.
            let adj = super::spawn::CHILD_OOM_SCORE_ADJ;
            let _ = libc::write(fd, adj.as_ptr().cast(), adj.len());
            libc::close(fd);
        }
        if let Some((soft, hard)) = req.nofile {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                fail(err);
            }
        }
        if req.pty {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                fail(err);
            }
        } else if libc::setpgid(0, 0) < 0 {
            fail(err);
        }
        if let Some((uid, gid, groups)) = &req.identity {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setgid(*gid) < 0
                || libc::setuid(*uid) < 0
            {
                fail(err);
            }
            // In envd's own (multi-threaded) fork, glibc switches ids by broadcasting its
            // internal SIGSETXID (33), for which it installs a handler, so the exec leaves that
            // signal at its default even when envd inherited it ignored. Same result here; the
            // raw call because glibc refuses its internal signals.
            let dfl = KernelSigaction::default();
            let _ = libc::syscall(
                libc::SYS_rt_sigaction,
                SIGSETXID,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
        // As std does: `execvp` looks the program up in the new environment's PATH.
        environ = envp.as_ptr();
        libc::execvp(p.cmd.as_ptr(), argv.as_ptr());
        fail(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let req = Request {
            cmd: b"/bin/bash".to_vec(),
            args: vec![b"-l".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
            env: vec![b"A=1".to_vec(), b"PATH=/bin".to_vec()],
            cwd: b"/home/user".to_vec(),
            identity: Some((1000, 1000, vec![1000, 27])),
            pty: true,
            nofile: Some((1024, 4096)),
        };
        assert_eq!(decode(&encode(&req)), Some(req.clone()));
        let plain = Request {
            identity: None,
            pty: false,
            nofile: None,
            args: vec![],
            ..req
        };
        assert_eq!(decode(&encode(&plain)), Some(plain.clone()));
        let mut raw = encode(&plain);
        raw.push(0);
        assert_eq!(decode(&raw), None, "trailing bytes");
        assert_eq!(decode(&raw[..10]), None, "truncated");
    }

    #[test]
    fn huge_counts_are_refused_without_allocating() {
        let mut raw = vec![0u8];
        raw.extend_from_slice(&[0; 8]);
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&raw), None);
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply {
            kind: REPLY_EXEC_FAILED,
            pid: 4242,
            errno: libc::ENOENT,
        };
        assert_eq!(Reply::decode(&r.encode()), r);
    }
}
