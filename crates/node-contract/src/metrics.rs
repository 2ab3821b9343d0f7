//! Resource-usage samples of a sandbox and the warm pools' counters, as a node reports them.

use chrono::{DateTime, Utc};
use paddock_domain::TemplateName;

/// One measurement of a sandbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSample {
    /// When it was taken.
    pub timestamp: DateTime<Utc>,
    /// CPUs the sandbox may use.
    pub cpu_count: u32,
    /// CPU used since the previous sample, in percent of `cpu_count` CPUs (0–100).
    pub cpu_used_pct: f64,
    /// Memory in use (without reclaimable inactive page cache), bytes.
    pub mem_used: u64,
    /// The memory limit, bytes.
    pub mem_total: u64,
    /// Page cache charged to the sandbox, bytes.
    pub mem_cache: u64,
    /// Bytes used on the sandbox's disk.
    pub disk_used: u64,
    /// Size of the sandbox's disk, bytes.
    pub disk_total: u64,
}

/// Which samples to return: timestamps (unix seconds) within `[start, end]`, each bound
/// optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricsRange {
    /// Earliest second included.
    pub start: Option<i64>,
    /// Latest second included.
    pub end: Option<i64>,
}

impl MetricsRange {
    /// Whether `t` lies in the range.
    pub fn contains(&self, t: &DateTime<Utc>) -> bool {
        let s = t.timestamp();
        self.start.is_none_or(|start| s >= start) && self.end.is_none_or(|end| s <= end)
    }
}

/// The warm pools of a node, as metrics show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolStats {
    /// One entry per template with a pool, by name.
    pub pools: Vec<TemplatePoolStats>,
    /// Creates served by a warm sandbox.
    pub hits: u64,
    /// Creates that could have used a pool but found none ready.
    pub misses: u64,
    /// Fills that failed.
    pub fill_failures: u64,
    /// Warm sandboxes claimed and not yet handed over.
    pub claimed: usize,
}

/// One template's pool, as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplatePoolStats {
    /// The template.
    pub template: TemplateName,
    /// Sandboxes ready to be handed over.
    pub ready: usize,
    /// Sandboxes being filled.
    pub filling: usize,
    /// The pool's target size.
    pub size: usize,
}
