//! The data of one node: what it registers ([`NodeRegistration`]), what it reports
//! ([`NodeReport`]), the state an admin sets ([`AdminStatus`]) and the snapshot readers get
//! ([`NodeInfo`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use paddock_placement::{Capacity, Load, NodeStatus, NodeView, Usage};

/// The node's CPU, as E2B's `MachineInfo` describes it (from `/proc/cpuinfo` and the
/// architecture the node was built for).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineInfo {
    /// `cpu family` (e.g. `6`).
    pub cpu_family: String,
    /// `model` (e.g. `85`).
    pub cpu_model: String,
    /// `model name` (e.g. `Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz`).
    pub cpu_model_name: String,
    /// Architecture (e.g. `x86_64`, `aarch64`).
    pub cpu_architecture: String,
}

/// What a node says about itself when it joins (and again when it rejoins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// The node's id (its `--name`, or a stable id kept in its data dir): `[A-Za-z0-9._-]`,
    /// at most 128 characters.
    pub id: String,
    /// Id of this run of the node process (new at every start): E2B's `serviceInstanceID`.
    pub service_instance_id: String,
    /// The cluster it belongs to: E2B's `clusterID`.
    pub cluster_id: String,
    /// Version of the node software.
    pub version: String,
    /// Commit the node software was built from.
    pub commit: String,
    /// Its CPU.
    pub machine_info: MachineInfo,
    /// What it can hold.
    pub capacity: Capacity,
    /// Free-form labels (e.g. `zone=a`), for placement.
    pub labels: BTreeMap<String, String>,
}

/// Resources the sandboxes on a node were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocated {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
}

/// One filesystem of the node, as E2B's `DiskMetrics` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskUsage {
    /// Where it is mounted.
    pub mount_point: String,
    /// Its device.
    pub device: String,
    /// Its filesystem type (e.g. `ext4`).
    pub filesystem_type: String,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes in total.
    pub total_bytes: u64,
}

/// The host's huge page pool (`/proc/meminfo`), as E2B reports it; all zero when the host has
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HugePages {
    /// Pages preallocated.
    pub total: u64,
    /// Pages in use (total - free).
    pub used: u64,
    /// Pages reserved (committed, not yet faulted).
    pub reserved: u64,
    /// Size of one page, bytes.
    pub page_size_bytes: u64,
}

/// What a node reports every second or two (`cluster.proto`'s `NodeReport`: one disk, the
/// filesystem of the node's data dir).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeReport {
    /// Sandboxes running (or paused in memory) on it.
    pub sandbox_count: u32,
    /// Creates it is working on.
    pub starting_count: u32,
    /// Ids of the sandboxes it holds.
    pub sandboxes: Vec<String>,
    /// What its sandboxes were given.
    pub allocated: Allocated,
    /// CPUs of the host.
    pub cpu_count: u32,
    /// CPU busy fraction of the host, `0.0..=1.0`.
    pub cpu_load: f64,
    /// Memory of the host in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory of the host, bytes.
    pub memory_total_bytes: u64,
    /// The host's filesystems that hold sandbox data.
    pub disks: Vec<DiskUsage>,
    /// The host's huge page pool.
    pub huge_pages: HugePages,
    /// Creates that succeeded since the node started.
    pub create_successes: u64,
    /// Creates that failed since the node started.
    pub create_fails: u64,
    /// When the control plane received the report (its own clock, not the node's): the health
    /// sweep measures the node's silence from here.
    pub at: DateTime<Utc>,
}

/// The state an admin sets on a node (`POST /nodes/{nodeID}`). It is the node's status while
/// the node is healthy; a node that is connecting or unhealthy shows that instead and returns
/// to its admin state when its reports resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AdminStatus {
    /// Takes new sandboxes.
    #[default]
    Ready,
    /// Keeps its sandboxes, takes no new ones.
    Draining,
}

impl AdminStatus {
    /// The status word (`ready`, `draining`).
    pub fn as_str(self) -> &'static str {
        NodeStatus::from(self).as_str()
    }

    /// Parses `ready` or `draining`; every other word (including E2B's other statuses, which an
    /// admin cannot set) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(AdminStatus::Ready),
            "draining" => Some(AdminStatus::Draining),
            _ => None,
        }
    }
}

impl From<AdminStatus> for NodeStatus {
    fn from(s: AdminStatus) -> Self {
        match s {
            AdminStatus::Ready => NodeStatus::Ready,
            AdminStatus::Draining => NodeStatus::Draining,
        }
    }
}

/// A snapshot of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// What it registered (the latest registration).
    pub registration: NodeRegistration,
    /// The status it shows.
    pub status: NodeStatus,
    /// When [`NodeInfo::status`] last changed.
    pub status_changed_at: DateTime<Utc>,
    /// The state an admin set (kept while the node is connecting or unhealthy).
    pub admin_status: AdminStatus,
    /// When it last registered.
    pub registered_at: DateTime<Utc>,
    /// Its latest report, if it sent one since it last registered.
    pub last_report: Option<NodeReport>,
}

impl NodeInfo {
    /// The node's id.
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// When the node was last heard from: its latest report, or its registration.
    pub fn last_seen(&self) -> DateTime<Utc> {
        self.last_report
            .as_ref()
            .map_or(self.registered_at, |r| r.at.max(self.registered_at))
    }

    /// Ids of the sandboxes it reported holding (none before its first report).
    pub fn sandboxes(&self) -> &[String] {
        self.last_report
            .as_ref()
            .map_or(&[], |r| r.sandboxes.as_slice())
    }

    /// What placement needs of the node: status, capacity, allocation and load as last
    /// reported (no creates in flight, no warm sandboxes: the placer keeps those).
    pub fn placement_view(&self) -> NodeView {
        let mut view = NodeView::new(self.registration.id.clone(), self.registration.capacity);
        view.status = self.status;
        if let Some(r) = &self.last_report {
            view.allocated = Usage {
                cpus: r.allocated.cpus,
                memory_mb: r.allocated.memory_mb,
                disk_mb: r.allocated.disk_mb,
                sandboxes: r.sandbox_count,
            };
            let memory = if r.memory_total_bytes == 0 {
                0.0
            } else {
                r.memory_used_bytes as f64 / r.memory_total_bytes as f64
            };
            view.load = Load {
                cpu: r.cpu_load.clamp(0.0, 1.0),
                memory: memory.clamp(0.0, 1.0),
            };
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(report: Option<NodeReport>) -> NodeInfo {
        let t: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().expect("time");
        NodeInfo {
            registration: NodeRegistration {
                id: "n1".into(),
                service_instance_id: "i1".into(),
                cluster_id: "c".into(),
                version: "0.1.0".into(),
                commit: "abc".into(),
                machine_info: MachineInfo::default(),
                capacity: Capacity {
                    cpus: 8,
                    memory_mb: 16384,
                    disk_mb: 100_000,
                    max_sandboxes: 50,
                },
                labels: BTreeMap::new(),
            },
            status: NodeStatus::Draining,
            status_changed_at: t,
            admin_status: AdminStatus::Draining,
            registered_at: t,
            last_report: report,
        }
    }

    #[test]
    fn admin_status_words() {
        assert_eq!(AdminStatus::parse("ready"), Some(AdminStatus::Ready));
        assert_eq!(AdminStatus::parse("draining"), Some(AdminStatus::Draining));
        for other in ["standby", "unhealthy", "connecting", "Ready", ""] {
            assert_eq!(AdminStatus::parse(other), None, "{other}");
        }
        assert_eq!(AdminStatus::Draining.as_str(), "draining");
    }

    #[test]
    fn placement_view_carries_the_report() {
        let empty = info(None).placement_view();
        assert_eq!(empty.status, NodeStatus::Draining);
        assert_eq!(empty.allocated, Usage::default());
        assert_eq!(empty.capacity.cpus, 8);
        let view = info(Some(NodeReport {
            sandbox_count: 3,
            allocated: Allocated {
                cpus: 6,
                memory_mb: 1536,
                disk_mb: 3072,
            },
            cpu_load: 1.7,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 4 << 30,
            ..NodeReport::default()
        }))
        .placement_view();
        assert_eq!(view.allocated.cpus, 6);
        assert_eq!(view.allocated.sandboxes, 3);
        assert_eq!(view.allocated.memory_mb, 1536);
        assert_eq!(view.load.cpu, 1.0);
        assert_eq!(view.load.memory, 0.25);
    }
}
