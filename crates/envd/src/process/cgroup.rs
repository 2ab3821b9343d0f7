//! The user cgroup: the node may hand envd open `cgroup.procs` files (fd numbers in
//! `PADDOCK_USER_CGROUP_FDS`) of a child cgroup below the sandbox's own. Every process envd
//! starts writes `0` into each of them before exec, which moves it there: envd keeps a
//! reserve of the sandbox's pids limit and its own CPU share even when the user's processes
//! (a fork bomb) fill theirs. Without the variable nothing moves.
//!
//! The rescue cgroup: the user cgroup's sibling (`PADDOCK_RESCUE_CGROUP_FDS`), with a small
//! share of the sandbox's pids that the user cgroup cannot take, a small memory limit and a
//! CPU share of its own. When the user cgroup is under pressure, new processes go there
//! instead, so a command still runs during a fork bomb (`ps`, `pkill`, `kill -9 -1`) and can
//! end it. Under pressure means, read before each start: (nearly) at its pids limit
//! (`pids.current` and `pids.max` descriptors, `PADDOCK_USER_PIDS_FDS`, read-only), or at its
//! memory limit with the OOM killer at work (its `memory.oom_control` counter rose in the last
//! [`OOM_RECENT`], and its usage is within [`MEMORY_MARGIN`] of the limit; read through the
//! memory cgroup mount, [`super::oom`]). A bomb of small processes on a sandbox of the default
//! size runs out of memory before it runs out of pids.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use paddock_envd_proto::boot;

/// A start goes to the rescue cgroup when fewer tasks than this are left in the user cgroup.
pub const RESCUE_BELOW_FREE: u64 = 16;
/// ... or when the user cgroup's OOM-kill counter rose this recently ...
pub const OOM_RECENT: Duration = Duration::from_secs(3);
/// ... and its memory usage is within this much of its limit.
pub const MEMORY_MARGIN: u64 = 8 << 20;

/// The user cgroup's OOM-kill count as last read, and when it was last seen to change.
static OOM_SEEN: Mutex<Option<(u64, Option<Instant>)>> = Mutex::new(None);

#[derive(Debug, Default)]
struct Fds {
    user: Vec<RawFd>,
    rescue: Vec<RawFd>,
    /// `pids.current` and `pids.max` of the user cgroup.
    user_pids: Option<(RawFd, RawFd)>,
}

static FDS: OnceLock<Fds> = OnceLock::new();

/// Reads the variables once, keeps the descriptors that are open and marks them close-on-exec
/// (so the user's programs never inherit them). Call before any thread starts.
pub fn init_from_env() {
    let read = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| parse(&v))
            .unwrap_or_default()
            .into_iter()
            .filter(|&fd| {
                // SAFETY: F_SETFD on a descriptor number only changes that descriptor's flags;
                // an fd that is not open yields EBADF and is dropped.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0 }
            })
            .collect::<Vec<_>>()
    };
    let pids = read(boot::USER_PIDS_FDS_ENV);
    let fds = Fds {
        user: read(boot::USER_CGROUP_FDS_ENV),
        rescue: read(boot::RESCUE_CGROUP_FDS_ENV),
        user_pids: match pids[..] {
            [current, max] => Some((current, max)),
            _ => None,
        },
    };
    if !fds.user.is_empty() {
        tracing::debug!(?fds, "user processes go to the user cgroup");
    }
    let _ = FDS.set(fds);
}

/// The user cgroup's descriptors (empty when there are none).
pub fn fds() -> &'static [RawFd] {
    FDS.get().map(|f| f.user.as_slice()).unwrap_or(&[])
}

/// Where a process started now goes: the rescue cgroup's descriptors when the user cgroup is
/// under pressure (see the module docs) and a rescue cgroup exists, else `None` (the user
/// cgroup, the usual way).
pub fn rescue_target() -> Option<&'static [RawFd]> {
    let fds = FDS.get()?;
    if fds.rescue.is_empty() {
        return None;
    }
    let pids_full = fds.user_pids.is_some_and(|(current, max)| {
        matches!(
            (read_counter(current), read_counter(max)),
            (Some(Some(current)), Some(max)) if is_full(current, max)
        )
    });
    let why = if pids_full {
        "pids"
    } else if super::oom::user_memcg().is_some_and(|dir| memory_under_pressure(&dir)) {
        "memory"
    } else {
        return None;
    };
    tracing::info!(
        limit = why,
        "the user cgroup is at its limit: starting in the rescue cgroup"
    );
    Some(fds.rescue.as_slice())
}

/// Reads the user cgroup's OOM-kill count once at startup, so the first start after a kill
/// sees the change.
pub fn note_oom_kills() {
    if let Some(dir) = super::oom::user_memcg() {
        memory_under_pressure(&dir);
    }
}

/// Whether the memory cgroup at `dir` is at its limit with the OOM killer at work.
fn memory_under_pressure(dir: &Path) -> bool {
    let Some(kills) = super::oom::count_in(dir) else {
        return false;
    };
    let now = Instant::now();
    let recent = {
        let mut seen = OOM_SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match *seen {
            Some((before, changed)) if before == kills => changed,
            // The first reading, at startup, is no news.
            None => None,
            Some(_) => Some(now),
        };
        *seen = Some((kills, changed));
        changed.is_some_and(|at| now.duration_since(at) < OOM_RECENT)
    };
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    recent
        && matches!(
            (read("memory.usage_in_bytes"), read("memory.limit_in_bytes")),
            (Some(usage), Some(limit)) if usage.saturating_add(MEMORY_MARGIN) >= limit
        )
}

/// Whether a cgroup with `current` tasks and a limit of `max` (`None`: no limit) is full.
fn is_full(current: u64, max: Option<u64>) -> bool {
    max.is_some_and(|max| current.saturating_add(RESCUE_BELOW_FREE) > max)
}

/// Reads a cgroup counter from the start of `fd`: a number, or `max` (no limit: `Some(None)`).
/// `None` when it cannot be read.
fn read_counter(fd: RawFd) -> Option<Option<u64>> {
    let mut buf = [0u8; 32];
    // SAFETY: reads at most `buf.len()` bytes into a buffer we own from a descriptor envd
    // holds for exactly this purpose; pread leaves the file offset alone.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let text = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
    parse_counter(text)
}

fn parse_counter(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// Moves the calling process into the cgroup of `fds` (user or rescue). For `pre_exec`:
/// async-signal-safe (one `write` per descriptor, no allocation). Best effort: a failed move
/// leaves the process in envd's cgroup, where the sandbox's limits still hold.
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
    fn reads_counters_and_tells_full() {
        assert_eq!(parse_counter("4000\n"), Some(Some(4000)));
        assert_eq!(parse_counter("max\n"), Some(None));
        assert_eq!(parse_counter("x"), None);
        assert!(!is_full(10, Some(4000)));
        assert!(!is_full(4000 - RESCUE_BELOW_FREE, Some(4000)));
        assert!(is_full(4000 - RESCUE_BELOW_FREE + 1, Some(4000)));
        assert!(is_full(4001, Some(4000)));
        assert!(!is_full(1_000_000, None));
        // Read from the start each time, however often (pread, no offset kept).
        let file = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut &file, b"123\n").expect("write");
        use std::os::fd::AsRawFd;
        assert_eq!(read_counter(file.as_raw_fd()), Some(Some(123)));
        assert_eq!(read_counter(file.as_raw_fd()), Some(Some(123)));
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
