//! cgroup v2: one unified tree. Sandboxes live in `<mount>/<parent>/<id>`; the `cpu`, `memory`
//! and `pids` controllers are enabled in `cgroup.subtree_control` of every ancestor down to the
//! parent.

use std::path::{Path, PathBuf};

use super::{create_dirs, write_knob, CgroupBackend, CgroupError, CgroupLimits};

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The cgroup v2 layout.
#[derive(Debug, Clone)]
pub struct V2Backend {
    root: PathBuf,
    parent: String,
}

impl V2Backend {
    /// A backend over the cgroup2 mount `root`, with sandboxes under `parent`.
    pub fn new(root: PathBuf, parent: &str) -> Self {
        V2Backend {
            root,
            parent: parent.to_string(),
        }
    }

    /// Enables the controllers children of `dir` need, unless they already are.
    fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
        let file = dir.join("cgroup.subtree_control");
        let current =
            std::fs::read_to_string(&file).map_err(|e| CgroupError::io("reading", &file, e))?;
        let missing: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| !current.split_whitespace().any(|x| x == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        write_knob(dir, "cgroup.subtree_control", &missing.join(" "))
    }
}

impl CgroupBackend for V2Backend {
    fn name(&self) -> &'static str {
        "v2"
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        vec![self.root.join(&self.parent)]
    }

    fn prepare_parent(&self) -> Result<(), CgroupError> {
        let parent = self.root.join(&self.parent);
        create_dirs(&parent)?;
        // Enable from the root down: a child can only enable what its parent has enabled.
        let mut dir = self.root.clone();
        Self::enable_controllers(&dir)?;
        for part in Path::new(&self.parent).components() {
            dir.push(part);
            Self::enable_controllers(&dir)?;
        }
        Ok(())
    }

    fn write_limits(&self, name: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let dir = self.root.join(&self.parent).join(name);
        write_knob(&dir, "memory.max", &limits.memory_bytes.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write_knob(&dir, "memory.swap.max", "0")?;
        }
        write_knob(
            &dir,
            "cpu.max",
            &format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
        )?;
        write_knob(&dir, "pids.max", &limits.pids_max.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::cgroup::create;

    #[test]
    fn enables_controllers_top_down_and_writes_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        std::fs::write(root.join("cgroup.subtree_control"), "cpu memory pids").expect("write");
        std::fs::create_dir_all(root.join("paddock/sb")).expect("mkdir");
        std::fs::write(root.join("paddock/cgroup.subtree_control"), "memory").expect("write");
        std::fs::write(root.join("paddock/sb/memory.swap.max"), "max").expect("write");
        let backend = V2Backend::new(root.clone(), "paddock");
        let limits = CgroupLimits {
            memory_bytes: 1024,
            cpu_quota_us: 150_000,
            cpu_period_us: 100_000,
            pids_max: 9,
        };
        let cg = create(&backend, "sb", &limits).expect("create");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("read");
        // The root already had everything: untouched. The parent lacked cpu and pids.
        assert_eq!(read("cgroup.subtree_control"), "cpu memory pids");
        assert_eq!(read("paddock/cgroup.subtree_control"), "+cpu +pids");
        assert_eq!(read("paddock/sb/memory.max"), "1024");
        assert_eq!(read("paddock/sb/memory.swap.max"), "0");
        assert_eq!(read("paddock/sb/cpu.max"), "150000 100000");
        assert_eq!(read("paddock/sb/pids.max"), "9");
        assert_eq!(cg.dirs, vec![root.join("paddock/sb")]);
    }
}
