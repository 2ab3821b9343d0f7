//! Sandbox cgroups. A [`CgroupBackend`] knows one host layout (cgroup v1 with a directory per
//! controller, or the unified cgroup v2 tree) and is picked once by [`detect`], per controller, from
//! `/proc/self/mountinfo`. Every sandbox gets `<parent>/<id>` in each hierarchy the backend uses;
//! [`SandboxCgroup`] holds those directories and does what is the same everywhere: list, kill,
//! remove. Limits come from [`CgroupLimits`]. This module never forks or joins a cgroup itself:
//! the shim writes its own pid into the `cgroup.procs` files the driver hands it.
//!
//! Lifecycle: [`create`] (parent + limits) → the shim joins → [`SandboxCgroup::kill_all`] →
//! [`SandboxCgroup::remove`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paddock_domain::Resources;

mod freezer;
mod v1;
mod v2;

pub use freezer::FreezerState;
pub use v1::{V1Backend, DEVICE_ALLOW};
pub use v2::V2Backend;

/// CFS period used for the CPU limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Cgroup failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading or writing a cgroup file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The host lacks a controller the driver needs.
    #[error("cgroup controller {0} is neither mounted as cgroup v1 nor enabled in cgroup v2")]
    MissingController(&'static str),
    /// The needed controllers are split between v1 and v2, which the driver does not handle.
    #[error("cgroup controllers are split between v1 ({v1}) and v2 ({v2})")]
    Mixed {
        /// Controllers found on v1.
        v1: String,
        /// Controllers found on v2.
        v2: String,
    },
    /// Processes were still in the cgroup after killing them for a while.
    #[error("processes still in cgroup {0} after kill")]
    NotEmpty(PathBuf),
    /// The sandbox's cgroups have no freezer (neither v1 `freezer.state` nor v2 `cgroup.freeze`).
    #[error("no cgroup freezer for {0}")]
    NoFreezer(PathBuf),
    /// The freezer did not reach the requested state in time (a freeze is undone).
    #[error("cgroup freezer {0} did not settle in time")]
    FreezeTimeout(PathBuf),
}

impl CgroupError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Limits written into a sandbox's cgroup, computed from [`Resources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit in bytes (swap is not allowed beyond it).
    pub memory_bytes: u64,
    /// CFS quota per period, in microseconds (`cpu_count` full CPUs).
    pub cpu_quota_us: u64,
    /// CFS period, in microseconds.
    pub cpu_period_us: u64,
    /// Most tasks (processes and threads).
    pub pids_max: u64,
}

impl CgroupLimits {
    /// Limits for `resources`. A zero CPU count still gets one CPU.
    pub fn from_resources(resources: &Resources) -> Self {
        let cpus = u64::from(resources.cpu_count.max(1));
        CgroupLimits {
            memory_bytes: resources.memory_mb.saturating_mul(1024 * 1024),
            cpu_quota_us: cpus.saturating_mul(CPU_PERIOD_US),
            cpu_period_us: CPU_PERIOD_US,
            pids_max: resources.pids_max.max(1),
        }
    }
}

/// One host cgroup layout. Implementations: [`V1Backend`], [`V2Backend`].
pub trait CgroupBackend: Send + Sync + fmt::Debug {
    /// `v1` or `v2`, for logs.
    fn name(&self) -> &'static str;
    /// The `<mount>/<parent>` directory of every hierarchy a sandbox joins.
    fn parent_dirs(&self) -> Vec<PathBuf>;
    /// Creates the parent directories and enables what children need (v2 `subtree_control`).
    fn prepare_parent(&self) -> Result<(), CgroupError>;
    /// Writes `limits` into the already created cgroup of sandbox `name`.
    fn write_limits(&self, name: &str, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Creates the [`CHILD_CGROUPS`] of sandbox `name` (where the backend splits envd from the
    /// user's processes) with their limits, and returns their directories. Default: no split.
    fn create_user(
        &self,
        _name: &str,
        _limits: &CgroupLimits,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(Vec::new())
    }

    /// The directories of sandbox `name` (whether or not they exist).
    fn sandbox(&self, name: &str) -> SandboxCgroup {
        SandboxCgroup {
            dirs: self
                .parent_dirs()
                .into_iter()
                .map(|p| p.join(name))
                .collect(),
        }
    }

    /// Names of the sandbox cgroups that exist under the parent, in any hierarchy.
    fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for parent in self.parent_dirs() {
            let entries = match std::fs::read_dir(&parent) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CgroupError::io("listing", &parent, e)),
            };
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Creates the cgroup of sandbox `name` in every hierarchy and writes its limits. On failure
/// whatever was created is removed again.
pub fn create(
    backend: &dyn CgroupBackend,
    name: &str,
    limits: &CgroupLimits,
) -> Result<SandboxCgroup, CgroupError> {
    backend.prepare_parent()?;
    let cg = backend.sandbox(name);
    let result = (|| {
        for dir in &cg.dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::io("creating", dir, e)),
            }
        }
        backend.write_limits(name, limits)?;
        backend.create_user(name, limits).map(drop)
    })();
    if let Err(e) = result {
        let _ = cg.remove();
        return Err(e);
    }
    Ok(cg)
}

/// Name of the child cgroup the user's processes run in, below the sandbox's own (v1: in the
/// `pids`, `memory` and `cpu` hierarchies). envd stays in the parent, so a fork or memory bomb
/// that fills the child's limits leaves envd [`ENVD_PIDS_RESERVE`] tasks and
/// [`envd_memory_reserve`] bytes, and the child competes with envd for CPU as one group
/// instead of as thousands of tasks.
pub const USER_CGROUP: &str = "user";
/// Name of the user cgroup's sibling where envd starts new commands while [`USER_CGROUP`] is
/// (nearly) at its pids limit, e.g. during a fork bomb: [`rescue_pids`] tasks of the
/// sandbox's limit that the user cgroup cannot take, at most [`rescue_memory`] bytes, and a
/// CPU share of its own, so `ps`, `kill` or `pkill` still run and the bomb can be ended from
/// inside.
pub const RESCUE_CGROUP: &str = "rescue";
/// The children of a sandbox's cgroup, in the order they are created.
pub const CHILD_CGROUPS: [&str; 2] = [USER_CGROUP, RESCUE_CGROUP];
/// Tasks of a sandbox's pids limit only envd (and what it starts before moving it) can use.
pub const ENVD_PIDS_RESERVE: u64 = 32;
/// Most tasks of a sandbox's pids limit kept for the [`RESCUE_CGROUP`] (see [`rescue_pids`]).
pub const RESCUE_PIDS: u64 = 64;

/// Tasks of a sandbox limit of `total` kept for the [`RESCUE_CGROUP`]: a sixteenth, between 1
/// and [`RESCUE_PIDS`].
pub fn rescue_pids(total: u64) -> u64 {
    (total / 16).clamp(1, RESCUE_PIDS)
}

/// Memory of a sandbox only envd can use: a sixteenth of the limit, at most 32 MiB (envd's
/// own resident size is about 10 MiB).
pub fn envd_memory_reserve(total: u64) -> u64 {
    (total / 16).min(32 << 20)
}

/// The memory limit of the [`RESCUE_CGROUP`]: the same as envd's reserve, enough for a shell
/// and a few small tools. A cap, not a reservation (the user cgroup keeps all but envd's
/// reserve): when a bomb has filled the user cgroup's memory, the sandbox's own limit
/// reclaims from (or OOM-kills in) the bomb, the largest part.
pub fn rescue_memory(total: u64) -> u64 {
    envd_memory_reserve(total)
}

/// The pids limit of the user child for a sandbox limit of `total` (at least 1).
pub fn user_pids_max(total: u64) -> u64 {
    total
        .saturating_sub(ENVD_PIDS_RESERVE + rescue_pids(total))
        .max(1)
}

/// The memory limit of the user child for a sandbox limit of `total` bytes.
pub fn user_memory_max(total: u64) -> u64 {
    total - envd_memory_reserve(total)
}

/// The cgroup directories of one sandbox, one per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCgroup {
    /// `<mount>/<parent>/<id>` for each hierarchy.
    pub dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The `cgroup.procs` files of the `child` cgroups ([`USER_CGROUP`] or [`RESCUE_CGROUP`])
    /// that exist.
    pub fn child_procs_files(&self, child: &str) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(child))
            .filter(|d| d.is_dir())
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The `pids.current` and `pids.max` files of the [`USER_CGROUP`] child in the `pids`
    /// hierarchy, when it exists: envd reads them to tell when the user's processes are at
    /// their limit.
    pub fn user_pids_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.dirs
            .iter()
            .map(|d| d.join(USER_CGROUP))
            .find(|d| d.join("pids.current").is_file() && d.join("pids.max").is_file())
            .map(|d| (d.join("pids.current"), d.join("pids.max")))
    }

    /// Pids in any of the directories or their [`CHILD_CGROUPS`] (deduplicated); missing
    /// directories count as empty.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        let files = self
            .procs_files()
            .into_iter()
            .chain(self.dirs.iter().flat_map(|d| {
                CHILD_CGROUPS
                    .iter()
                    .map(move |c| d.join(c).join("cgroup.procs"))
            }));
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError::io("reading", &file, e)),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Whether `pid` is in the first hierarchy's cgroup.
    pub fn contains(&self, pid: u32) -> bool {
        self.pids().map(|p| p.contains(&pid)).unwrap_or(false)
    }

    /// SIGKILLs every process until none is left, thawing a frozen cgroup first. Gives up
    /// after `timeout`.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            // A frozen task does not die until thawed; cgroup.kill (v2) kills atomically.
            for (knob, value) in [
                ("freezer.state", "THAWED"),
                ("cgroup.freeze", "0"),
                ("cgroup.kill", "1"),
            ] {
                let file = dir.join(knob);
                if file.exists() {
                    let _ = std::fs::write(&file, value);
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if Instant::now() >= deadline {
                let dir = self.dirs.first().cloned().unwrap_or_default();
                return Err(CgroupError::NotEmpty(dir));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the directories; retries briefly while the kernel still reports them busy.
    /// Missing directories are fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let children = self
            .dirs
            .iter()
            .flat_map(|d| CHILD_CGROUPS.iter().map(move |c| d.join(c)));
        let all: Vec<PathBuf> = children.chain(self.dirs.iter().cloned()).collect();
        for dir in &all {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // A plain directory (unit tests) still holds files: remove them with it.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) => {
                        std::fs::remove_dir_all(dir)
                            .map_err(|e| CgroupError::io("removing", dir, e))?;
                        break;
                    }
                    Err(e) => return Err(CgroupError::io("removing", dir, e)),
                }
            }
        }
        Ok(())
    }
}

fn is_cgroupfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::CGROUP_SUPER_MAGIC || t == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// A cgroup filesystem mount found in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `None` for cgroup2, else the v1 controllers of this hierarchy.
    pub v1_controllers: Option<Vec<String>>,
}

/// The cgroup mounts in the text of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (Some(fstype), Some(_source), Some(opts)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(mount_point));
        let v1_controllers = match fstype {
            "cgroup2" => None,
            "cgroup" => Some(
                opts.split(',')
                    .filter(|o| !o.contains('=') && !is_mount_flag(o))
                    .map(str::to_string)
                    .collect(),
            ),
            _ => continue,
        };
        mounts.push(CgroupMount {
            mount_point,
            v1_controllers,
        });
    }
    mounts
}

fn is_mount_flag(opt: &str) -> bool {
    matches!(
        opt,
        "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode" | "favordynmods"
    )
}

/// Undoes mountinfo's octal escapes (`\040` for space and friends).
pub fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Controllers every sandbox needs.
const REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];

/// Picks the backend for this host from `/proc/self/mountinfo`; `parent` is the cgroup under
/// which sandboxes live (e.g. `paddock`).
pub fn detect(parent: &str) -> Result<Box<dyn CgroupBackend>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|e| CgroupError::io("reading", path, e))?;
    detect_from(&parse_mountinfo(&text), parent)
}

/// Where the v1 hierarchy holding `controller` is mounted, if any.
pub fn v1_mount_of<'a>(mounts: &'a [CgroupMount], controller: &str) -> Option<&'a Path> {
    mounts
        .iter()
        .find(|m| {
            m.v1_controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|x| x == controller))
        })
        .map(|m| m.mount_point.as_path())
}

/// Where cgroup2 is mounted, if it is.
pub fn v2_root_of(mounts: &[CgroupMount]) -> Option<&Path> {
    mounts
        .iter()
        .find(|m| m.v1_controllers.is_none())
        .map(|m| m.mount_point.as_path())
}

/// [`detect`] over already parsed mounts.
pub(crate) fn detect_from(
    mounts: &[CgroupMount],
    parent: &str,
) -> Result<Box<dyn CgroupBackend>, CgroupError> {
    let v1_mount = |ctrl: &str| v1_mount_of(mounts, ctrl).map(Path::to_path_buf);
    let v2_root = v2_root_of(mounts).map(Path::to_path_buf);
    let v2_controllers: Vec<String> = v2_root
        .as_ref()
        .and_then(|root| std::fs::read_to_string(root.join("cgroup.controllers")).ok())
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();

    let mut on_v1 = Vec::new();
    let mut on_v2 = Vec::new();
    for ctrl in REQUIRED {
        if v1_mount(ctrl).is_some() {
            on_v1.push(ctrl);
        } else if v2_controllers.iter().any(|c| c == ctrl) {
            on_v2.push(ctrl);
        } else {
            return Err(CgroupError::MissingController(ctrl));
        }
    }
    if on_v2.is_empty() {
        let mut controllers = Vec::new();
        for ctrl in ["memory", "cpu", "pids", "cpuacct", "freezer", "devices"] {
            if let Some(mount) = v1_mount(ctrl) {
                controllers.push((ctrl, mount));
            }
        }
        return Ok(Box::new(V1Backend::new(controllers, parent)));
    }
    if on_v1.is_empty() {
        if let Some(root) = v2_root {
            return Ok(Box::new(V2Backend::new(root, parent)));
        }
    }
    Err(CgroupError::Mixed {
        v1: on_v1.join(","),
        v2: on_v2.join(","),
    })
}

/// Writes `value` into the existing cgroup file `dir/knob`.
pub(crate) fn write_knob(dir: &Path, knob: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(knob);
    std::fs::write(&path, value).map_err(|e| CgroupError::io("writing", &path, e))
}

/// Creates `dir` and its missing ancestors.
pub(crate) fn create_dirs(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|e| CgroupError::io("creating", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:7 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:9 - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/freezer rw,nosuid shared:10 - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/devices rw,nosuid shared:11 - cgroup cgroup rw,devices
";

    #[test]
    fn limits_follow_resources() {
        let r = Resources {
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1,
            pids_max: 100,
        };
        let l = CgroupLimits::from_resources(&r);
        assert_eq!(l.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(l.cpu_quota_us, 200_000);
        assert_eq!(l.cpu_period_us, 100_000);
        assert_eq!(l.pids_max, 100);
        let zero = Resources {
            cpu_count: 0,
            memory_mb: 1,
            disk_mb: 1,
            pids_max: 0,
        };
        assert_eq!(CgroupLimits::from_resources(&zero).cpu_quota_us, 100_000);
    }

    #[test]
    fn mountinfo_parsing_finds_v1_and_v2() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[0],
            CgroupMount {
                mount_point: "/sys/fs/cgroup/unified".into(),
                v1_controllers: None
            }
        );
        // `xattr,name=systemd`: a named hierarchy with mount options only, no controllers.
        assert_eq!(mounts[1].v1_controllers, Some(vec![]));
        assert_eq!(
            mounts[2].v1_controllers,
            Some(vec!["cpu".to_string(), "cpuacct".to_string()])
        );
    }

    #[test]
    fn hybrid_host_picks_v1_with_comounted_dirs_deduplicated() {
        let backend = detect_from(&parse_mountinfo(HYBRID), "paddock").expect("v1 backend");
        assert_eq!(backend.name(), "v1");
        let dirs = backend.parent_dirs();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/paddock"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/paddock"),
                PathBuf::from("/sys/fs/cgroup/pids/paddock"),
                PathBuf::from("/sys/fs/cgroup/freezer/paddock"),
                PathBuf::from("/sys/fs/cgroup/devices/paddock"),
            ]
        );
        let cg = backend.sandbox("iabc");
        assert_eq!(
            cg.procs_files()[0],
            PathBuf::from("/sys/fs/cgroup/memory/paddock/iabc/cgroup.procs")
        );
    }

    #[test]
    fn pure_v2_host_and_missing_controllers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        let mounts = vec![CgroupMount {
            mount_point: tmp.path().to_path_buf(),
            v1_controllers: None,
        }];
        let backend = detect_from(&mounts, "paddock").expect("v2 backend");
        assert_eq!(backend.name(), "v2");
        assert_eq!(backend.parent_dirs(), vec![tmp.path().join("paddock")]);

        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory\n").expect("write");
        let err = detect_from(&mounts, "paddock").expect_err("pids missing");
        assert!(
            matches!(err, CgroupError::MissingController("pids")),
            "{err}"
        );

        let mut mixed = mounts.clone();
        mixed.push(CgroupMount {
            mount_point: "/x".into(),
            v1_controllers: Some(vec!["pids".into()]),
        });
        let err = detect_from(&mixed, "paddock").expect_err("mixed");
        assert!(matches!(err, CgroupError::Mixed { .. }), "{err}");
    }

    #[test]
    fn create_writes_limits_and_remove_cleans_up_on_plain_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mem = tmp.path().join("memory");
        let pids = tmp.path().join("pids");
        let backend = V1Backend::new(vec![("memory", mem.clone()), ("pids", pids.clone())], "p");
        let limits = CgroupLimits {
            memory_bytes: 1 << 20,
            cpu_quota_us: 1,
            cpu_period_us: 1,
            pids_max: 7,
        };
        let cg = create(&backend, "sb", &limits).expect("create");
        assert_eq!(
            std::fs::read_to_string(mem.join("p/sb/memory.limit_in_bytes")).expect("read"),
            "1048576"
        );
        assert_eq!(
            std::fs::read_to_string(pids.join("p/sb/pids.max")).expect("read"),
            "7"
        );
        assert_eq!(backend.list().expect("list"), vec!["sb".to_string()]);
        std::fs::write(mem.join("p/sb/cgroup.procs"), "12\n5\n").expect("write");
        assert_eq!(cg.pids().expect("pids"), vec![5, 12]);
        cg.remove().expect("remove");
        assert!(!mem.join("p/sb").exists());
        assert!(backend.list().expect("list").is_empty());
        cg.remove().expect("remove twice");
    }
}
