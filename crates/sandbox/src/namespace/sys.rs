//! Raw system calls the namespace driver needs that `nix` does not wrap: bringing `lo` up with
//! `SIOCSIFFLAGS`, `close_range`, `pidfd_open`, restricting capabilities (`PR_CAPBSET_DROP`,
//! `capset`), installing a seccomp filter, and reading a process's start time. Every `unsafe` block of the driver outside
//! `mounts.rs` lives here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Sets `IFF_UP` (and keeps the other flags) on the interface `name` of the calling thread's
/// network namespace.
pub(crate) fn interface_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: `ifreq` is a plain C struct/union for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, which is a valid,
    // exclusively borrowed `ifreq` that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the `ifru_flags` member of the union is initialised.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS only reads `req`, a valid `ifreq` that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor from `first` upwards.
pub(crate) fn close_fds_from(first: RawFd) -> io::Result<()> {
    let first = libc::c_uint::try_from(first)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative descriptor"))?;
    // SAFETY: close_range(2) only closes descriptors. Both callers own no descriptor >= `first`
    // that anything uses afterwards: the shim at its first step (whatever is there was leaked
    // to it) and the sandbox's init just before exec.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`, after the command name in brackets).
pub(crate) fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Opens a pidfd for `pid` (readable once the process has exited).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Capability numbers (`linux/capability.h`) of the default set.
pub(crate) mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_RAW: u32 = 13;
    pub const SYS_CHROOT: u32 = 18;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
}

/// The capabilities a sandbox keeps: Docker's default set without `MKNOD`. envd (root, PID 1)
/// needs `SETUID`/`SETGID` (it starts processes as `user` with setgroups/setgid/setuid),
/// `CHOWN` (uploads and new directories are chowned to the user), `DAC_OVERRIDE`/`FOWNER`
/// (it reads and writes the user's files and their `user.*` xattrs) and `KILL` (signals to the
/// user's processes); PTYs, inotify and `PR_SET_CHILD_SUBREAPER` need none. Everything else
/// (`SYS_ADMIN`, `SYS_MODULE`, `SYS_PTRACE`, `NET_ADMIN`, `SYS_RAWIO`, `MKNOD`, ...) is gone from
/// the bounding set, so not even `sudo` or a setuid binary can get it back.
pub(crate) const DEFAULT_CAPS: [u32; 13] = [
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FSETID,
    cap::FOWNER,
    cap::SETGID,
    cap::SETUID,
    cap::SETFCAP,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::NET_RAW,
    cap::SYS_CHROOT,
    cap::KILL,
    cap::AUDIT_WRITE,
];

/// The capability mask (bit `n` = capability `n`) of `caps`.
pub(crate) fn cap_mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, passed as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability not in `keep` (a [`cap_mask`]) from the calling thread's bounding
/// set, then sets its permitted, effective and inheritable sets to exactly `keep`. The ambient
/// set empties with them. `no_new_privs` stays off, so setuid binaries (`sudo`) still work,
/// but only ever within `keep`. Call last before exec, in a single-threaded process.
pub(crate) fn restrict_capabilities(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a capability number and changes only the calling
        // thread's bounding set; no memory is passed.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows; nothing more to drop.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| {
        let bits = (keep >> shift) as u32;
        CapData {
            effective: bits,
            permitted: bits,
            inheritable: bits,
        }
    };
    let data = [half(0), half(32)];
    // SAFETY: capset(2) with a version-3 header reads exactly two `CapData` structs, which
    // `data` provides; both live until the call returns and pid 0 means the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the BPF program `filter` as a seccomp filter of the calling thread
/// (`seccomp(SECCOMP_SET_MODE_FILTER)`, no flags). Leaves `no_new_privs` alone, so the caller
/// needs `CAP_SYS_ADMIN` unless it set `no_new_privs` itself. Makes no allocation.
pub(crate) fn seccomp_set_filter(filter: &[seccompiler::sock_filter]) -> io::Result<()> {
    /// `struct sock_fprog`.
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    let len = libc::c_ushort::try_from(filter.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?;
    let prog = SockFprog {
        len,
        filter: filter.as_ptr(),
    };
    // SAFETY: seccompiler's `sock_filter` is `#[repr(C)]` with the kernel's layout; the kernel
    // copies `len` instructions from `prog.filter`, which points into `filter`, and both
    // outlive the call. No flags, so only the calling thread changes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &prog as *const SockFprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), or `None`
/// when the process does not exist.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses the start time out of the text of `/proc/<pid>/stat`. The command name may contain
/// spaces and parentheses, so fields are counted after the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// State letter of `pid` (field 3 of `/proc/<pid>/stat`), e.g. `'Z'` for a zombie.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_skips_tricky_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn default_caps_are_dockers_without_mknod() {
        // Docker's default bounding set is 0xa80425fb; MKNOD is capability 27.
        assert_eq!(cap_mask(&DEFAULT_CAPS), 0xa804_25fb & !(1 << 27));
        assert_eq!(cap_mask(&DEFAULT_CAPS), 0xa004_25fb);
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id();
        let a = process_start_time(me);
        assert!(a.is_some());
        assert_eq!(a, process_start_time(me));
        assert!(matches!(process_state(me), Some('R' | 'S')));
    }
}
