//! The open-files limit (`RLIMIT_NOFILE`). envd serves many connections, watchers and process
//! pipes at once, so at startup it raises its own soft limit to the hard limit
//! ([`raise_nofile`]); the processes it starts get the original soft limit back
//! ([`child_nofile`], applied in `spawn.rs` before `exec`), as many programs misbehave with a huge
//! soft limit (e.g. loops closing every possible fd).

use std::io;
use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The limit envd had before [`raise_nofile`] raised it.
static ORIGINAL: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft open-files limit of envd to its hard limit, remembering the original soft
/// limit for child processes. Returns the new soft limit. Calling it again is harmless.
pub fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ORIGINAL.get_or_init(|| (soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The open-files limit a child should get: envd's original soft limit with the unchanged hard
/// limit; `None` when envd never raised it.
pub fn child_nofile() -> Option<libc::rlimit> {
    ORIGINAL.get().map(|&(soft, hard)| libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_hard_and_remembers_the_original() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let raised = raise_nofile().expect("raise");
        assert_eq!(raised, hard);
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit"),
            (hard, hard)
        );
        let child = child_nofile().expect("recorded");
        assert_eq!(child.rlim_max, hard);
        // Another test may have raised it first; the original is never above the hard limit.
        assert!(child.rlim_cur <= hard);
        if ORIGINAL.get() == Some(&(soft, hard)) {
            assert_eq!(child.rlim_cur, soft);
        }
    }
}
