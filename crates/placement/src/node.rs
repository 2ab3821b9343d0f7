//! What the control plane knows of one node: [`NodeView`] (status, capacity, what is allocated,
//! what is in flight, measured load, warm templates) and the arithmetic placement does on it:
//! whether a [`Demand`] fits ([`NodeView::fits`]) and how good a home the node would be
//! ([`NodeView::score`]). No sampling or bookkeeping lives here (see `placer`).

use std::collections::HashSet;
use std::fmt;

use paddock_domain::{Resources, TemplateName};

/// A node's state as E2B's `NodeStatus` spells it; only `Ready` nodes take new sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Serving and taking new sandboxes.
    Ready,
    /// Serving its sandboxes but taking no new ones (set by an admin).
    Draining,
    /// Joined, not yet reported ready.
    Connecting,
    /// Missed its reports or failed its checks.
    Unhealthy,
    /// Kept in reserve, taking no sandboxes.
    Standby,
}

impl NodeStatus {
    /// The status as E2B's API writes it (`ready`, `draining`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Draining => "draining",
            NodeStatus::Connecting => "connecting",
            NodeStatus::Unhealthy => "unhealthy",
            NodeStatus::Standby => "standby",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node registered it can hold. A node that overcommits CPUs registers the overcommitted
/// count: placement treats every field as a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// vCPUs sandboxes may be given in total.
    pub cpus: u32,
    /// Memory for sandboxes, MiB.
    pub memory_mb: u64,
    /// Disk for sandboxes' writable layers, MiB.
    pub disk_mb: u64,
    /// Most sandboxes the node runs at once.
    pub max_sandboxes: u32,
}

/// Resources of one sandbox, as placement counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
}

impl From<&Resources> for Demand {
    fn from(r: &Resources) -> Self {
        Demand {
            cpus: r.cpu_count,
            memory_mb: r.memory_mb,
            disk_mb: r.disk_mb,
        }
    }
}

impl fmt::Display for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vCPU, {} MiB memory, {} MiB disk",
            self.cpus, self.memory_mb, self.disk_mb
        )
    }
}

/// Resources held by a number of sandboxes (allocated ones, or creates in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
    /// Number of sandboxes.
    pub sandboxes: u32,
}

impl Usage {
    /// Adds one sandbox of `d`.
    pub fn add(&mut self, d: &Demand) {
        self.cpus = self.cpus.saturating_add(d.cpus);
        self.memory_mb = self.memory_mb.saturating_add(d.memory_mb);
        self.disk_mb = self.disk_mb.saturating_add(d.disk_mb);
        self.sandboxes = self.sandboxes.saturating_add(1);
    }

    /// Takes one sandbox of `d` away (never below zero: a report may already have dropped it).
    pub fn remove(&mut self, d: &Demand) {
        self.cpus = self.cpus.saturating_sub(d.cpus);
        self.memory_mb = self.memory_mb.saturating_sub(d.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(d.disk_mb);
        self.sandboxes = self.sandboxes.saturating_sub(1);
    }
}

/// Load the node measured and reported, as fractions of the host (0..=1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// CPU busy fraction.
    pub cpu: f64,
    /// Memory in use fraction.
    pub memory: f64,
}

/// How [`NodeView::score`] weighs its parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    /// Weight of the measured load against the reserved share (0..=1); the reserved share
    /// gets `1 - load`.
    pub load: f64,
    /// Subtracted from the score of a node holding a warm sandbox of the requested template.
    pub warm_bonus: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            load: 0.3,
            warm_bonus: 0.15,
        }
    }
}

/// What the control plane knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The node's id (its `--name`).
    pub id: String,
    /// Its status; only `Ready` nodes take new sandboxes.
    pub status: NodeStatus,
    /// What it registered it can hold.
    pub capacity: Capacity,
    /// What its sandboxes hold, as last reported (plus creates answered since).
    pub allocated: Usage,
    /// Creates sent to it and not yet answered.
    pub in_flight: Usage,
    /// Load it measured.
    pub load: Load,
    /// Templates it has a ready warm sandbox of.
    pub warm: HashSet<TemplateName>,
}

impl NodeView {
    /// A ready node with nothing allocated, no load and no warm sandbox.
    pub fn new(id: impl Into<String>, capacity: Capacity) -> Self {
        NodeView {
            id: id.into(),
            status: NodeStatus::Ready,
            capacity,
            allocated: Usage::default(),
            in_flight: Usage::default(),
            load: Load::default(),
            warm: HashSet::new(),
        }
    }

    /// Whether one more sandbox of `d` fits beside what is allocated and in flight, on every
    /// resource and under the sandbox limit.
    pub fn fits(&self, d: &Demand) -> bool {
        let (a, f, c) = (&self.allocated, &self.in_flight, &self.capacity);
        u64::from(a.cpus) + u64::from(f.cpus) + u64::from(d.cpus) <= u64::from(c.cpus)
            && a.memory_mb
                .saturating_add(f.memory_mb)
                .saturating_add(d.memory_mb)
                <= c.memory_mb
            && a.disk_mb
                .saturating_add(f.disk_mb)
                .saturating_add(d.disk_mb)
                <= c.disk_mb
            && u64::from(a.sandboxes) + u64::from(f.sandboxes) < u64::from(c.max_sandboxes)
    }

    /// How full the node would be with one more sandbox of `d`: lower is better. The reserved
    /// share is the largest fraction of any resource (allocated + in flight + `d`, against
    /// capacity, sandbox count included); the measured share is the larger of CPU and memory
    /// load; they are mixed by `w.load`, and a warm sandbox of the requested template takes
    /// `w.warm_bonus` off. Only meaningful where [`NodeView::fits`] holds.
    pub fn score(&self, d: &Demand, warm: bool, w: &ScoreWeights) -> f64 {
        let (a, f, c) = (&self.allocated, &self.in_flight, &self.capacity);
        let cpu = share(
            u64::from(a.cpus) + u64::from(f.cpus) + u64::from(d.cpus),
            u64::from(c.cpus),
        );
        let mem = share(a.memory_mb + f.memory_mb + d.memory_mb, c.memory_mb);
        let disk = share(a.disk_mb + f.disk_mb + d.disk_mb, c.disk_mb);
        let count = share(
            u64::from(a.sandboxes) + u64::from(f.sandboxes) + 1,
            u64::from(c.max_sandboxes),
        );
        let reserved = cpu.max(mem).max(disk).max(count);
        let measured = self.load.cpu.max(self.load.memory).clamp(0.0, 1.0);
        let score = (1.0 - w.load) * reserved + w.load * measured;
        if warm {
            score - w.warm_bonus
        } else {
            score
        }
    }
}

/// `used / cap` as a fraction; an empty resource nobody asks for counts as unused.
fn share(used: u64, cap: u64) -> f64 {
    if cap == 0 {
        if used == 0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        used as f64 / cap as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capacity {
        Capacity {
            cpus: 4,
            memory_mb: 4096,
            disk_mb: 10_000,
            max_sandboxes: 3,
        }
    }

    const D: Demand = Demand {
        cpus: 1,
        memory_mb: 1024,
        disk_mb: 1000,
    };

    #[test]
    fn fits_counts_allocated_in_flight_and_the_sandbox_limit() {
        let mut n = NodeView::new("a", cap());
        assert!(n.fits(&D));
        n.allocated.add(&D);
        n.in_flight.add(&D);
        assert!(n.fits(&D));
        n.in_flight.add(&D);
        assert!(!n.fits(&D), "three sandboxes is the limit");
        n.in_flight.remove(&D);
        n.allocated.memory_mb = 3000;
        assert!(!n.fits(&D), "1024 + 3000 + 1024 > 4096");
    }

    #[test]
    fn score_takes_the_dominant_share_and_load() {
        let w = ScoreWeights {
            load: 0.5,
            warm_bonus: 0.25,
        };
        let mut n = NodeView::new("a", cap());
        // cpu 1/4, mem 1/4, disk 1/10, count 1/3 -> reserved 1/3.
        assert!((n.score(&D, false, &w) - (0.5 / 3.0)).abs() < 1e-9);
        n.load.memory = 0.8;
        assert!((n.score(&D, false, &w) - (0.5 / 3.0 + 0.4)).abs() < 1e-9);
        assert!((n.score(&D, true, &w) - (0.5 / 3.0 + 0.4 - 0.25)).abs() < 1e-9);
    }

    #[test]
    fn usage_never_goes_below_zero() {
        let mut u = Usage::default();
        u.remove(&D);
        assert_eq!(u, Usage::default());
    }
}
