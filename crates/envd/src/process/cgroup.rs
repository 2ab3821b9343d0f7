//! The user cgroup: the node may hand envd open `cgroup.procs` files (fd numbers in
//! `PADDOCK_USER_CGROUP_FDS`) of a child cgroup below the sandbox's own. Every process envd
//! starts writes `0` into each of them before exec, which moves it there: envd keeps a
//! reserve of the sandbox's pids limit and its own CPU share even when the user's processes
//! (a fork bomb) fill theirs. Without the variable nothing moves.

use std::os::fd::RawFd;
use std::sync::OnceLock;

static FDS: OnceLock<Vec<RawFd>> = OnceLock::new();

/// Reads the variable once, keeps the descriptors that are open and marks them close-on-exec
/// (so the user's programs never inherit them). Call before any thread starts.
pub fn init_from_env() {
    let fds = std::env::var(paddock_envd_proto::boot::USER_CGROUP_FDS_ENV)
        .ok()
        .map(|v| parse(&v))
        .unwrap_or_default()
        .into_iter()
        .filter(|&fd| {
            // SAFETY: F_SETFD on a descriptor number only changes that descriptor's flags; an
            // fd that is not open yields EBADF and is dropped.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0 }
        })
        .collect::<Vec<_>>();
    if !fds.is_empty() {
        tracing::debug!(?fds, "user processes go to the user cgroup");
    }
    let _ = FDS.set(fds);
}

/// The descriptors children write to (empty when there are none).
pub fn fds() -> &'static [RawFd] {
    FDS.get().map(Vec::as_slice).unwrap_or(&[])
}

/// Moves the calling process into the user cgroup. For `pre_exec`: async-signal-safe (one
/// `write` per descriptor, no allocation). Best effort: a failed move leaves the process in
/// envd's cgroup, where the sandbox's limits still hold.
pub fn join_in_child(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: writes one byte from a static buffer to a descriptor envd owns for exactly
        // this purpose.
        let _ = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    }
}

fn parse(value: &str) -> Vec<RawFd> {
    value
        .split(',')
        .filter_map(|s| s.trim().parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fd_lists() {
        assert_eq!(parse("4,5"), vec![4, 5]);
        assert_eq!(parse(""), Vec::<RawFd>::new());
        assert_eq!(parse("1, 7 ,x,-3"), vec![7]);
    }

    #[test]
    fn joining_writes_zero_to_each_descriptor() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::AsRawFd;
        join_in_child(&[w.as_raw_fd(), w.as_raw_fd()]);
        drop(w);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).expect("read");
        assert_eq!(out, "00");
    }
}
