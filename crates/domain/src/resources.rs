//! Resource limits of one sandbox. Defaults follow E2B: 2 vCPU, 512 MiB of memory.

use serde::{Deserialize, Serialize};

/// CPU, memory, pids and disk limits applied to a sandbox's cgroup and writable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Number of vCPUs (CFS quota of `cpu_count` full CPUs).
    pub cpu_count: u32,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Disk size reported for the writable layer, in MiB.
    pub disk_mb: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 10 * 1024,
            pids_max: 4096,
        }
    }
}
