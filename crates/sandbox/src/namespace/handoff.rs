//! What the shim hands envd as descriptors instead of files in a directory both can write: the
//! boot configuration as a sealed memfd (read by the shim from the host-only state directory),
//! the two listening sockets (bound by the shim in the state directory, which the sandbox never
//! sees), and a pipe for envd's output, which the shim copies into `envd.log` ([`LogPump`],
//! bounded: past [`LOG_MAX_BYTES`] the log starts again). So the sandbox shares no directory
//! with the host, and the host opens nothing by a path the sandbox could have changed.

use paddock_envd_proto::boot;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// Size at which envd's log is started again (envd's own lines are small; only a runaway or a
/// sandbox writing to envd's stderr gets here).
pub(crate) const LOG_MAX_BYTES: u64 = 16 << 20;
/// How long the shim waits, after PID 1 exited, for the last of its output.
const LOG_DRAIN_WAIT: Duration = Duration::from_millis(500);
/// The descriptor the shim keeps the read end of envd's log pipe on, so the node can see (by
/// `FIONREAD` through `/proc/<shim>/fd/`) whether output is still waiting to be copied.
pub(crate) const SHIM_LOG_PIPE_FD: i32 = 10;

/// [`SHIM_LOG_PIPE_FD`] held (by `/dev/null`) from the shim's first step, so that no other
/// descriptor the shim opens can get that number; [`LogPipeSlot::fill`] later puts the log
/// pipe there. Without it, which of the shim's own descriptors sat on that number depended on
/// how many the shim inherited, and moving the pipe onto it closed one the shim still owned.
pub(crate) struct LogPipeSlot(OwnedFd);

impl LogPipeSlot {
    /// Takes [`SHIM_LOG_PIPE_FD`]. Whatever was on it (only something leaked to the shim by
    /// whoever started it: the shim owns nothing there yet) is closed.
    pub(crate) fn reserve() -> io::Result<Self> {
        let null = OwnedFd::from(File::open("/dev/null")?);
        if null.as_raw_fd() == SHIM_LOG_PIPE_FD {
            return Ok(LogPipeSlot(null));
        }
        nix::unistd::dup2(null.as_raw_fd(), SHIM_LOG_PIPE_FD).map_err(io::Error::from)?;
        // SAFETY: dup2 just made SHIM_LOG_PIPE_FD a copy of `null`; the shim owned nothing on
        // that number (see above), so this is its only owner.
        Ok(LogPipeSlot(unsafe {
            OwnedFd::from_raw_fd(SHIM_LOG_PIPE_FD)
        }))
    }

    /// Moves `pipe` onto [`SHIM_LOG_PIPE_FD`] (dup2 replaces the placeholder atomically) and
    /// closes its old number.
    pub(crate) fn fill(self, pipe: OwnedFd) -> io::Result<OwnedFd> {
        nix::unistd::dup2(pipe.as_raw_fd(), SHIM_LOG_PIPE_FD).map_err(io::Error::from)?;
        // The placeholder's number now holds the pipe: give up ownership without closing it.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(self.0);
        drop(pipe);
        // SAFETY: `fd` is SHIM_LOG_PIPE_FD, which dup2 just pointed at the pipe and whose
        // previous owner (the slot) was given up above without closing it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The boot configuration of the sandbox in `state_dir` as a sealed memfd positioned at 0;
/// `None` when the node wrote none.
pub(crate) fn boot_config(state_dir: &Path) -> io::Result<Option<OwnedFd>> {
    let path = state_dir.join(boot::BOOT_CONFIG_FILE);
    let bytes = match crate::hostfile::read_bounded(&path, boot::BOOT_CONFIG_MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = CString::new("paddock-boot-config").map_err(io::Error::other)?;
    // SAFETY: memfd_create reads a NUL-terminated name that outlives the call.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&bytes)?;
    file.seek(SeekFrom::Start(0))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on a descriptor owned by `file`; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(OwnedFd::from(file)))
}

/// Binds envd's HTTP and forwarding sockets in `state_dir` (replacing stale ones), mode 0600.
/// They are bound by relative names from inside the directory, so the address the kernel
/// reports for them (`getsockname`, `/proc/net/unix`) does not name the host's data directory.
pub(crate) fn listeners(state_dir: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let dir = File::open(state_dir)?;
    let cwd = std::env::current_dir()?;
    nix::unistd::fchdir(dir.as_raw_fd()).map_err(io::Error::from)?;
    let bound = (|| {
        let mut out = Vec::new();
        for name in [boot::ENVD_SOCKET, boot::FORWARD_SOCKET] {
            match std::fs::remove_file(name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = UnixListener::bind(name)?;
            std::fs::set_permissions(name, std::fs::Permissions::from_mode(0o600))?;
            out.push(OwnedFd::from(listener));
        }
        let forward = out.pop().expect("two listeners");
        let http = out.pop().expect("two listeners");
        Ok((http, forward))
    })();
    std::env::set_current_dir(cwd)?;
    bound
}

/// Copies envd's output from its pipe into `envd.log` (the shim's stderr, opened by the node),
/// on the shim's one thread: after `unshare(CLONE_NEWPID)` a process cannot start threads, so
/// the shim polls the pipe together with whatever it waits for (the ready pipe, PID 1's exit).
pub(crate) struct LogPump {
    pipe: File,
    log: File,
    size: u64,
    max: u64,
    buf: Vec<u8>,
    eof: bool,
}

/// Why [`LogPump::until_readable`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The awaited descriptor is readable.
    Ready,
    /// The timeout passed first.
    TimedOut,
}

impl LogPump {
    /// A pump from `pipe` (read end) to `log` (opened for appending), bounded by `max` bytes.
    pub(crate) fn new(pipe: OwnedFd, log: OwnedFd, max: u64) -> Self {
        // SAFETY: F_GETFL/F_SETFL on a descriptor `pipe` owns; no memory is passed.
        unsafe {
            let flags = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        let log = File::from(log);
        let size = log.metadata().map(|m| m.len()).unwrap_or(0);
        LogPump {
            pipe: File::from(pipe),
            log,
            size,
            max,
            buf: vec![0u8; 16 << 10],
            eof: false,
        }
    }

    /// Copies output until `fd` is readable (or `timeout` passes), then returns.
    pub(crate) fn until_readable(
        &mut self,
        fd: Option<&dyn AsRawFd>,
        timeout: Option<Duration>,
    ) -> io::Result<Woke> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let mut fds = Vec::with_capacity(2);
            if let Some(fd) = fd {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if !self.eof {
                fds.push(libc::pollfd {
                    fd: self.pipe.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let wait_ms = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(Woke::TimedOut);
                    }
                    i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            if fds.is_empty() {
                return Ok(Woke::TimedOut);
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let log_ready = fds.last().is_some_and(|p| !self.eof && p.revents != 0);
            if log_ready {
                self.copy_once();
            }
            if fd.is_some() && fds[0].revents != 0 {
                return Ok(Woke::Ready);
            }
        }
    }

    /// Copies what is left after PID 1 exited, until the pipe's last writer is gone or
    /// [`LOG_DRAIN_WAIT`] passes (a process that inherited envd's output may outlive it
    /// for a moment).
    pub(crate) fn drain(mut self) {
        let deadline = std::time::Instant::now() + LOG_DRAIN_WAIT;
        while !self.eof {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.until_readable(None, Some(left)).is_err() {
                return;
            }
        }
    }

    /// One read from the pipe, appended to the log (started again when it would pass `max`),
    /// under an exclusive `flock` of the log: a reader that saw the pipe empty and then takes a
    /// shared lock sees everything envd wrote before it looked ([`wait_log_copied`]).
    fn copy_once(&mut self) {
        // The pipe is non-blocking: a read that finds nothing (EAGAIN) costs nothing. The lock
        // is taken only around the write, and readers never wait for it unboundedly (a pause
        // freezes the shim with the sandbox, possibly right here).
        let n = match self.pipe.read(&mut self.buf) {
            Ok(0) => {
                self.eof = true;
                return;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                return
            }
            Err(_) => {
                self.eof = true;
                return;
            }
        };
        let _lock = FlockGuard::exclusive(&self.log);
        if self.size + n as u64 > self.max {
            let note = format!(
                "paddock shim: envd.log reached {} bytes; earlier output was dropped\n",
                self.max
            );
            if self.log.set_len(0).is_ok() {
                self.size = 0;
                if self.log.write_all(note.as_bytes()).is_ok() {
                    self.size = note.len() as u64;
                }
            }
        }
        if self.log.write_all(&self.buf[..n]).is_ok() {
            self.size += n as u64;
        }
    }
}

/// An `flock` held until dropped (best effort: a failure to lock only loses ordering). It
/// keeps the raw descriptor: the file it was taken on must outlive the guard.
pub struct FlockGuard(Option<std::os::fd::RawFd>);

impl FlockGuard {
    /// Takes an exclusive lock on `file`.
    pub fn exclusive(file: &File) -> Self {
        Self::take(file, libc::LOCK_EX)
    }

    /// Takes a shared lock on `file`, waiting at most `max` for a writer to let go; after
    /// that, returns without the lock (the reader then sees the log as it is).
    pub fn shared_within(file: &File, max: Duration) -> Self {
        let deadline = std::time::Instant::now() + max;
        loop {
            let guard = Self::take(file, libc::LOCK_SH | libc::LOCK_NB);
            if guard.0.is_some() || std::time::Instant::now() >= deadline {
                return guard;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn take(file: &File, how: libc::c_int) -> Self {
        loop {
            // SAFETY: flock on a descriptor `file` owns; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), how) };
            if rc == 0 {
                return FlockGuard(Some(file.as_raw_fd()));
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return FlockGuard(None);
            }
        }
    }
}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        if let Some(fd) = self.0 {
            // SAFETY: the descriptor is still open (the guard's contract); no memory is passed.
            unsafe { libc::flock(fd, libc::LOCK_UN) };
        }
    }
}

/// Waits (at most `max`) until everything the sandbox whose PID 1 is `init_pid` has written
/// to its log pipe has been taken by its shim, so that a read of `envd.log` under
/// [`FlockGuard::shared_within`] right after sees it: envd logs a command's end before the client
/// hears of it, and a client that then asks for the logs expects to find it. The shim is
/// PID 1's parent, a host process; its pipe end is at [`SHIM_LOG_PIPE_FD`].
pub fn wait_log_copied(init_pid: u32, max: Duration) {
    let Some(shim) = super::sys::parent_pid(init_pid) else {
        return;
    };
    let path = format!("/proc/{shim}/fd/{SHIM_LOG_PIPE_FD}");
    let Ok(pipe) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    else {
        return;
    };
    use std::os::unix::fs::FileTypeExt;
    if !pipe.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        return;
    }
    let deadline = std::time::Instant::now() + max;
    loop {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `pending`, which lives across the call.
        let rc = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if rc != 0 || pending == 0 || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_is_a_sealed_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(boot_config(dir.path()).expect("missing").is_none());
        std::fs::write(dir.path().join(boot::BOOT_CONFIG_FILE), b"{\"a\":1}").expect("write");
        let fd = boot_config(dir.path()).expect("read").expect("some");
        let mut f = File::from(fd);
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read");
        assert_eq!(text, "{\"a\":1}");
        assert!(f.write_all(b"x").is_err(), "sealed against writes");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "other sandbox's env").expect("write");
        std::os::unix::fs::symlink(&secret, dir.path().join(boot::BOOT_CONFIG_FILE))
            .expect("symlink");
        let err = boot_config(dir.path()).expect_err("followed");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn listeners_replace_stale_sockets_and_hide_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(boot::ENVD_SOCKET), "stale").expect("write");
        let (http, _forward) = listeners(dir.path()).expect("bind");
        let listener = UnixListener::from(http);
        let addr = listener.local_addr().expect("addr");
        assert_eq!(
            addr.as_pathname(),
            Some(Path::new(boot::ENVD_SOCKET)),
            "bound by relative name"
        );
        let meta = std::fs::symlink_metadata(dir.path().join(boot::ENVD_SOCKET)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(dir.path().join(boot::ENVD_SOCKET))
            .expect("connect");
    }

    #[test]
    fn the_log_copy_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("envd.log");
        let to = crate::hostfile::open_append(&log).expect("open");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            for _ in 0..100 {
                w.write_all(&[b'x'; 1000]).expect("write");
            }
        });
        let mut pump = LogPump::new(r, OwnedFd::from(to), 10_000);
        let woke = pump
            .until_readable(None, Some(Duration::from_secs(30)))
            .expect("pump");
        assert_eq!(woke, Woke::TimedOut);
        writer.join().expect("writer");
        pump.drain();
        let size = std::fs::metadata(&log).expect("stat").len();
        assert!(size <= 10_000 + 200, "{size}");
        let text = std::fs::read_to_string(&log).expect("read");
        assert!(text.contains("earlier output was dropped"), "{text}");
    }

    #[test]
    fn the_pump_returns_when_the_awaited_fd_is_readable() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
        let dir = tempfile::tempdir().expect("tempdir");
        let to = crate::hostfile::open_append(&dir.path().join("log")).expect("open");
        let mut pump = LogPump::new(r, OwnedFd::from(to), 1 << 20);
        File::from(w).write_all(b"line\n").expect("write");
        File::from(ready_w).write_all(b"ready\n").expect("write");
        let ready = File::from(ready_r);
        let woke = pump.until_readable(Some(&ready), None).expect("pump");
        assert_eq!(woke, Woke::Ready);
        pump.drain();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).expect("read"),
            "line\n"
        );
    }
}
