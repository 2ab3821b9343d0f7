//! cgroup v1: one hierarchy per controller (`/sys/fs/cgroup/<controller>`), possibly co-mounted
//! (`cpu,cpuacct`). A sandbox joins `memory`, `cpu`, `pids` and, where mounted, `cpuacct` (usage),
//! `freezer` (pause) and `devices` (an allowlist of the character devices a sandbox may open:
//! [`DEVICE_ALLOW`]). cgroup v2 has no devices controller (it needs a BPF program), so on a pure
//! v2 host the sandbox relies on the missing `MKNOD` capability and the fixed `/dev` instead.

use std::path::PathBuf;

use super::{
    create_dirs, rescue_memory, rescue_pids, user_memory_max, user_pids_max, write_knob,
    CgroupBackend, CgroupError, CgroupLimits, CHILD_CGROUPS, USER_CGROUP,
};

/// Device rules a sandbox gets after `a` (everything) is denied: `/dev/null`, `zero`, `full`,
/// `random`, `urandom`, `tty`, `console`, `pts/ptmx` and every pseudo-terminal (major 136).
pub const DEVICE_ALLOW: [&str; 9] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// The cgroup v1 layout.
#[derive(Debug, Clone)]
pub struct V1Backend {
    /// `(controller, mount point)`, in the order given.
    controllers: Vec<(&'static str, PathBuf)>,
    parent: String,
}

impl V1Backend {
    /// A backend over `controllers` (`(name, mount point)`), with sandboxes under `parent`.
    pub fn new(controllers: Vec<(&'static str, PathBuf)>, parent: &str) -> Self {
        V1Backend {
            controllers,
            parent: parent.to_string(),
        }
    }

    fn dir_of(&self, controller: &str, name: &str) -> Option<PathBuf> {
        self.controllers
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, mount)| mount.join(&self.parent).join(name))
    }
}

impl CgroupBackend for V1Backend {
    fn name(&self) -> &'static str {
        "v1"
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (_, mount) in &self.controllers {
            let dir = mount.join(&self.parent);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    fn prepare_parent(&self) -> Result<(), CgroupError> {
        self.parent_dirs().iter().try_for_each(|d| create_dirs(d))
    }

    fn write_limits(&self, name: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        if let Some(dir) = self.dir_of("memory", name) {
            let bytes = limits.memory_bytes.to_string();
            write_knob(&dir, "memory.limit_in_bytes", &bytes)?;
            // memory+swap equal to memory: the sandbox cannot use swap. The file only exists
            // when the kernel accounts swap.
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write_knob(&dir, "memory.memsw.limit_in_bytes", &bytes)?;
            }
        }
        if let Some(dir) = self.dir_of("cpu", name) {
            write_knob(&dir, "cpu.cfs_period_us", &limits.cpu_period_us.to_string())?;
            write_knob(&dir, "cpu.cfs_quota_us", &limits.cpu_quota_us.to_string())?;
        }
        if let Some(dir) = self.dir_of("pids", name) {
            write_knob(&dir, "pids.max", &limits.pids_max.to_string())?;
        }
        if let Some(dir) = self.dir_of("devices", name) {
            // Each write adds one rule; the shim joins only after all are in place.
            write_knob(&dir, "devices.deny", "a")?;
            for rule in DEVICE_ALLOW {
                write_knob(&dir, "devices.allow", rule)?;
            }
        }
        Ok(())
    }

    /// v1 lets a cgroup hold tasks and children at once, so envd stays in the sandbox's cgroup
    /// and the user's processes go one level down in the `pids`, `memory` and `cpu`
    /// hierarchies: [`USER_CGROUP`] (the sandbox's limits minus envd's reserve, and minus the
    /// rescue cgroup's tasks) and [`super::RESCUE_CGROUP`] (its small share); CPU by group weight.
    fn create_user(&self, name: &str, limits: &CgroupLimits) -> Result<Vec<PathBuf>, CgroupError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for controller in ["pids", "memory", "cpu"] {
            let Some(dir) = self.dir_of(controller, name) else {
                continue;
            };
            for child_name in CHILD_CGROUPS {
                let child = dir.join(child_name);
                if dirs.contains(&child) {
                    continue;
                }
                match std::fs::create_dir(&child) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(CgroupError::io("creating", &child, e)),
                }
                let user = child_name == USER_CGROUP;
                if controller == "pids" {
                    let max = if user {
                        user_pids_max(limits.pids_max)
                    } else {
                        rescue_pids(limits.pids_max)
                    };
                    write_knob(&child, "pids.max", &max.to_string())?;
                }
                if controller == "memory" {
                    let bytes = if user {
                        user_memory_max(limits.memory_bytes)
                    } else {
                        rescue_memory(limits.memory_bytes)
                    };
                    write_knob(&child, "memory.limit_in_bytes", &bytes.to_string())?;
                    if child.join("memory.memsw.limit_in_bytes").exists() {
                        write_knob(&child, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                    }
                }
                dirs.push(child);
            }
        }
        Ok(dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::cgroup::create;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn writes_all_limits_and_memsw_only_when_present() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mount = |c: &str| tmp.path().join(c);
        let backend = V1Backend::new(
            vec![
                ("memory", mount("memory")),
                ("cpu", mount("cpu")),
                ("pids", mount("pids")),
                ("devices", mount("devices")),
            ],
            "paddock",
        );
        // Pretend the kernel accounts swap for sandbox "a" only.
        std::fs::create_dir_all(mount("memory").join("paddock/a")).expect("mkdir");
        std::fs::write(
            mount("memory").join("paddock/a/memory.memsw.limit_in_bytes"),
            "max",
        )
        .expect("write");
        let limits = CgroupLimits {
            memory_bytes: 536_870_912,
            cpu_quota_us: 200_000,
            cpu_period_us: 100_000,
            pids_max: 4096,
        };
        create(&backend, "a", &limits).expect("create a");
        create(&backend, "b", &limits).expect("create b");
        let a = mount("memory").join("paddock/a");
        assert_eq!(read(a.join("memory.limit_in_bytes")), "536870912");
        assert_eq!(read(a.join("memory.memsw.limit_in_bytes")), "536870912");
        assert!(!mount("memory")
            .join("paddock/b/memory.memsw.limit_in_bytes")
            .exists());
        assert_eq!(
            read(mount("cpu").join("paddock/b/cpu.cfs_quota_us")),
            "200000"
        );
        assert_eq!(
            read(mount("cpu").join("paddock/b/cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(read(mount("pids").join("paddock/b/pids.max")), "4096");
        // The user's processes get their own child in pids and cpu, with envd's reserve kept.
        assert_eq!(read(mount("pids").join("paddock/b/user/pids.max")), "4000");
        assert!(mount("cpu").join("paddock/b/user").is_dir());
        assert_eq!(
            read(mount("memory").join("paddock/b/user/memory.limit_in_bytes")),
            (536_870_912u64 - (32 << 20)).to_string()
        );
        // Its sibling for commands started while the user cgroup is full.
        assert_eq!(read(mount("pids").join("paddock/b/rescue/pids.max")), "64");
        assert!(mount("cpu").join("paddock/b/rescue").is_dir());
        assert_eq!(
            read(mount("memory").join("paddock/b/rescue/memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        // On a plain directory each rule overwrites the last; the kernel keeps them all.
        let devices = mount("devices").join("paddock/b");
        assert_eq!(read(devices.join("devices.deny")), "a");
        assert_eq!(read(devices.join("devices.allow")), DEVICE_ALLOW[8]);
        assert_eq!(
            backend.list().expect("list"),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
