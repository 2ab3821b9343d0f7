//! Pausing a sandbox with the cgroup freezer: every process of the sandbox's cgroup (and of its
//! [`super::USER_CGROUP`] child) stops being scheduled, keeps its memory, open files and sockets,
//! and resumes exactly where it was when thawed. It is the same processes, so nothing is lost.
//!
//! Which freezer a sandbox has is found from its directories: cgroup v1 has a `freezer`
//! hierarchy whose sandbox directory holds `freezer.state` (write `FROZEN`, wait until it reads
//! `FROZEN`; `FREEZING` means some task has not stopped yet); cgroup v2 has `cgroup.freeze` in
//! the sandbox's own directory (write `1`, wait for `frozen 1` in `cgroup.events`). Freezing a
//! cgroup freezes its descendants in both versions.
//!
//! A freeze that does not complete within its timeout is undone (thawed) and reported, so a
//! sandbox is never left half frozen. The frozen state lives in the kernel, so it survives a
//! restart of the node; [`SandboxCgroup::freezer_state`] reads it back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CgroupError, SandboxCgroup};

/// How often a pending freeze or thaw is polled (and, for v1, the freeze re-requested).
const POLL: Duration = Duration::from_millis(1);

/// What the freezer of a sandbox reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    /// Processes run normally.
    Thawed,
    /// A freeze was requested and some tasks have not stopped yet.
    Freezing,
    /// Every task is frozen.
    Frozen,
}

/// The freezer interface of one sandbox cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Knob {
    /// cgroup v1: `<freezer hierarchy>/<parent>/<id>/freezer.state`.
    V1(PathBuf),
    /// cgroup v2: the sandbox's directory (`cgroup.freeze`, `cgroup.events`).
    V2(PathBuf),
}

impl SandboxCgroup {
    /// The freezer of this sandbox: the first directory with `freezer.state` (v1) or
    /// `cgroup.freeze` (v2).
    fn freezer(&self) -> Result<Knob, CgroupError> {
        for dir in &self.dirs {
            let v1 = dir.join("freezer.state");
            if v1.exists() {
                return Ok(Knob::V1(v1));
            }
            if dir.join("cgroup.freeze").exists() {
                return Ok(Knob::V2(dir.clone()));
            }
        }
        Err(CgroupError::NoFreezer(
            self.dirs.first().cloned().unwrap_or_default(),
        ))
    }

    /// The current freezer state of the sandbox.
    pub fn freezer_state(&self) -> Result<FreezerState, CgroupError> {
        match self.freezer()? {
            Knob::V1(file) => parse_v1_state(&read(&file)?, &file),
            Knob::V2(dir) => {
                let events = dir.join("cgroup.events");
                Ok(if v2_frozen(&read(&events)?) {
                    FreezerState::Frozen
                } else if read(&dir.join("cgroup.freeze"))?.trim() == "1" {
                    FreezerState::Freezing
                } else {
                    FreezerState::Thawed
                })
            }
        }
    }

    /// Freezes every process of the sandbox and returns once the kernel reports all of them
    /// frozen. If that takes longer than `timeout` the sandbox is thawed again and
    /// [`CgroupError::FreezeTimeout`] returned. Freezing a frozen sandbox is a no-op.
    pub fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        let knob = self.freezer()?;
        let deadline = Instant::now() + timeout;
        let done = match &knob {
            Knob::V1(file) => loop {
                // v1 re-checks the tasks on every write: repeating it is how a freeze that
                // found a task busy (e.g. in a vfork) completes.
                write(file, "FROZEN")?;
                if parse_v1_state(&read(file)?, file)? == FreezerState::Frozen {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(POLL);
            },
            Knob::V2(dir) => {
                write(&dir.join("cgroup.freeze"), "1")?;
                wait_v2(dir, true, deadline)?
            }
        };
        if done {
            return Ok(());
        }
        // Never leave a sandbox half frozen.
        let _ = self.thaw(Duration::from_secs(1));
        Err(CgroupError::FreezeTimeout(match knob {
            Knob::V1(file) => file,
            Knob::V2(dir) => dir,
        }))
    }

    /// Asks the kernel to thaw the sandbox without waiting for it (before a kill: a task
    /// frozen by the v1 freezer does not die until thawed). No freezer, no-op.
    pub fn request_thaw(&self) {
        match self.freezer() {
            Ok(Knob::V1(file)) => {
                let _ = write(&file, "THAWED");
            }
            Ok(Knob::V2(dir)) => {
                let _ = write(&dir.join("cgroup.freeze"), "0");
            }
            Err(_) => {}
        }
    }

    /// Thaws the sandbox and returns once the kernel reports it thawed (or after `timeout`,
    /// with [`CgroupError::FreezeTimeout`]). Thawing a running sandbox is a no-op.
    pub fn thaw(&self, timeout: Duration) -> Result<(), CgroupError> {
        let knob = self.freezer()?;
        let deadline = Instant::now() + timeout;
        let done = match &knob {
            Knob::V1(file) => loop {
                write(file, "THAWED")?;
                if parse_v1_state(&read(file)?, file)? == FreezerState::Thawed {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(POLL);
            },
            Knob::V2(dir) => {
                write(&dir.join("cgroup.freeze"), "0")?;
                wait_v2(dir, false, deadline)?
            }
        };
        if done {
            Ok(())
        } else {
            Err(CgroupError::FreezeTimeout(match knob {
                Knob::V1(file) => file,
                Knob::V2(dir) => dir,
            }))
        }
    }
}

/// Polls `cgroup.events` until `frozen` equals `want` or `deadline` passes; returns whether it
/// got there.
fn wait_v2(dir: &Path, want: bool, deadline: Instant) -> Result<bool, CgroupError> {
    let events = dir.join("cgroup.events");
    loop {
        if v2_frozen(&read(&events)?) == want {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

/// Whether a v2 `cgroup.events` text says `frozen 1`.
fn v2_frozen(events: &str) -> bool {
    events
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"])
}

fn parse_v1_state(text: &str, file: &Path) -> Result<FreezerState, CgroupError> {
    match text.trim() {
        "THAWED" => Ok(FreezerState::Thawed),
        "FREEZING" => Ok(FreezerState::Freezing),
        "FROZEN" => Ok(FreezerState::Frozen),
        other => Err(CgroupError::io(
            "parsing",
            file,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown freezer state {other:?}"),
            ),
        )),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::io("reading", path, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    //! Real cgroups (as root): a child process is frozen, observed not to run, and thawed.
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    #[test]
    fn parses_states_and_events() {
        let f = Path::new("/x");
        assert_eq!(
            parse_v1_state("FROZEN\n", f).expect("ok"),
            FreezerState::Frozen
        );
        assert_eq!(
            parse_v1_state("FREEZING\n", f).expect("ok"),
            FreezerState::Freezing
        );
        assert_eq!(
            parse_v1_state("THAWED", f).expect("ok"),
            FreezerState::Thawed
        );
        assert!(parse_v1_state("MELTED", f).is_err());
        assert!(v2_frozen("populated 1\nfrozen 1\n"));
        assert!(!v2_frozen("populated 1\nfrozen 0\n"));
        assert!(!v2_frozen("frozen 10\n"));
    }

    #[test]
    fn plain_directories_have_no_freezer() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cg = SandboxCgroup {
            dirs: vec![tmp.path().to_path_buf()],
        };
        assert!(matches!(
            cg.freeze(Duration::from_secs(1)),
            Err(CgroupError::NoFreezer(_))
        ));
    }

    /// A real freezer cgroup for this test: the v1 `freezer` hierarchy if mounted, else the
    /// v2 tree. `None` when the test cannot run (not root, no freezer).
    fn real_cgroup(name: &str) -> Option<SandboxCgroup> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let mounts =
            super::super::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
        let base = super::super::v1_mount_of(&mounts, "freezer")
            .map(Path::to_path_buf)
            .or_else(|| super::super::v2_root_of(&mounts).map(Path::to_path_buf))?;
        let dir = base.join(format!(
            "paddock-freezer-test-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).ok()?;
        Some(SandboxCgroup { dirs: vec![dir] })
    }

    /// The bytes a `yes` child wrote into its pipe so far, read without blocking.
    fn drain(out: &mut std::process::ChildStdout) -> usize {
        use std::os::fd::AsRawFd;
        let fd = out.as_raw_fd();
        // SAFETY: fcntl on an fd this process owns (the child's stdout pipe); only flags change.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let mut total = 0;
        let mut buf = [0u8; 65536];
        loop {
            match out.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(_) => return total,
            }
        }
    }

    #[test]
    fn freeze_stops_a_process_and_thaw_resumes_it() {
        let Some(cg) = real_cgroup("stop") else {
            eprintln!("skipped: needs root and a cgroup freezer");
            return;
        };
        let mut child = Command::new("yes")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn yes");
        let pid = child.id();
        std::fs::write(cg.procs_files()[0].clone(), pid.to_string()).expect("join cgroup");
        let mut out = child.stdout.take().expect("stdout");

        assert_eq!(cg.freezer_state().expect("state"), FreezerState::Thawed);
        cg.freeze(Duration::from_secs(5)).expect("freeze");
        assert_eq!(cg.freezer_state().expect("state"), FreezerState::Frozen);
        cg.freeze(Duration::from_secs(5))
            .expect("freezing twice is fine");
        // Whatever it wrote before the freeze is drained; a frozen writer adds nothing, so a
        // second drain finds the pipe empty.
        drain(&mut out);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(drain(&mut out), 0, "a frozen process wrote output");
        // Frozen, not dead: the same process, in state stopped/sleeping, still exists.
        assert!(Path::new(&format!("/proc/{pid}")).exists());

        cg.thaw(Duration::from_secs(5)).expect("thaw");
        assert_eq!(cg.freezer_state().expect("state"), FreezerState::Thawed);
        // The same process writes again once thawed.
        let mut got = 0;
        while got == 0 {
            got = drain(&mut out);
        }

        // Killing a frozen cgroup works (kill_all thaws first).
        cg.freeze(Duration::from_secs(5)).expect("freeze again");
        cg.kill_all(Duration::from_secs(5)).expect("kill frozen");
        let _ = child.wait();
        assert!(cg.pids().expect("pids").is_empty());
        cg.remove().expect("remove");
    }
}
