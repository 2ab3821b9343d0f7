//! Out-of-memory attribution. The node bind-mounts the sandbox's memory cgroup read-only at
//! `<run dir>/memcg`; its OOM-kill counter (`oom_kill` in v1 `memory.oom_control`, v2
//! `memory.events`) tells whether a process that died of SIGKILL was killed by the kernel's OOM
//! killer, so the SDK caller sees "out of memory" instead of a bare "signal: killed".
//! envd itself runs with `oom_score_adj` -1000 (set by the node) and its children with 0, so
//! the OOM killer picks the user's process and the sandbox survives.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static MEMCG: OnceLock<PathBuf> = OnceLock::new();

/// Text appended to the end event's error when a process was OOM-killed.
pub const OOM_NOTE: &str = "out of memory: the sandbox reached its memory limit";

/// Sets where the memory cgroup is mounted (`<run dir>/memcg`). Later calls are ignored.
pub fn init(run_dir: &Path) {
    let _ = MEMCG.set(run_dir.join("memcg"));
}

/// The sandbox's OOM-kill count so far, if the memory cgroup is visible: its own counter plus
/// the ones of its `user` and `rescue` children (where the node puts the user's processes; a
/// v1 counter does not include its children's kills).
pub fn kills() -> Option<u64> {
    let dir = MEMCG.get()?;
    let own = count_in(dir)?;
    let children = ["user", "rescue"].map(|c| count_in(&dir.join(c)).unwrap_or(0));
    Some(own + children.iter().sum::<u64>())
}

/// The memory cgroup of the user's processes (`<run dir>/memcg/user`), if set.
pub fn user_memcg() -> Option<PathBuf> {
    MEMCG.get().map(|d| d.join("user"))
}

/// The OOM-kill count of the memory cgroup at `dir`.
pub fn count_in(dir: &Path) -> Option<u64> {
    ["memory.events.local", "memory.oom_control"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|text| parse_oom_kill(&text))
}

/// The `oom_kill N` line of `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kill(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(2));
        assert_eq!(parse_oom_kill("oom 1\n"), None);
    }
}
