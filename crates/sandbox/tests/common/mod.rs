//! Helpers shared by the sandbox crate's integration tests.

use std::path::PathBuf;

/// The shared libraries `bin` loads, as `ldd` lists them (absolute paths only).
pub fn shared_libraries(bin: &str) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        .filter_map(|line| line.split("=>").last()?.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// A cgroup parent of its own for one test; on drop (also when the test panics) kills and
/// removes whatever is left under it in any hierarchy, `user` children of sandboxes included.
pub struct TestParent(pub String);

impl TestParent {
    pub fn new() -> Self {
        TestParent(format!(
            "paddock-test-{}",
            paddock_domain::SandboxId::generate()
        ))
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        let parents: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&self.0))
            .filter(|p| p.is_dir())
            .collect();
        let subdirs = |dir: &PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        };
        for _ in 0..500 {
            let mut busy = false;
            for sandbox in parents.iter().flat_map(subdirs) {
                // Children first: a cgroup with a child cannot be removed.
                let cgroups: Vec<PathBuf> =
                    subdirs(&sandbox).into_iter().chain([sandbox]).collect();
                for cg in &cgroups {
                    for pid in std::fs::read_to_string(cg.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                    {
                        busy = true;
                        let _ = std::process::Command::new("kill")
                            .args(["-9", pid])
                            .status();
                    }
                    let _ = std::fs::remove_dir(cg);
                }
            }
            if !busy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for parent in &parents {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
