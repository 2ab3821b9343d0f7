//! Resource metrics of the sandboxes of this node, measured from the host (never from inside a
//! sandbox): CPU and memory from the sandbox's cgroup, disk from its writable-layer disk
//! (`<state_dir>/disk`, an ext4 mount per sandbox). This module owns the parsing of the cgroup
//! files, the CPU-percentage arithmetic, and [`MetricsStore`], the bounded series of samples
//! per sandbox.
//!
//! Sources, per cgroup layout (the directories come from the runtime driver; each is probed for
//! the files it holds, so v1's one-directory-per-controller and v2's single directory look
//! the same here):
//! - CPU: v2 `cpu.stat` `usage_usec`, or v1 `cpuacct.usage` (ns); a sample's `cpu_used_pct` is
//!   the usage over the interval since the previous reading as a percentage of `cpu_count`
//!   full CPUs (the first reading of a sandbox averages over its life so far).
//! - Memory used: v2 `memory.current` − `inactive_file`, v1 `memory.usage_in_bytes` −
//!   `total_inactive_file` (from `memory.stat`); `mem_cache` is the page cache (`file`, v1
//!   `total_cache`); `mem_total` is the sandbox's memory limit.
//! - Disk: `statvfs` of the disk mount: used = (blocks − free blocks) × fragment size, total =
//!   blocks × fragment size. Without a mount (other drivers) disk used is 0 and total the
//!   sandbox's disk limit.
//!
//! Lifecycle of a series: created on the first successful sample of a sandbox (by the node's
//! sampler every [`SAMPLE_INTERVAL`], or at once when metrics are requested for a live
//! sandbox that has none), at most [`RING_CAPACITY`] samples (the oldest dropped first), and
//! removed once the sandbox's state directory is gone ([`MetricsStore::retain`]) or the node
//! forgets the sandbox ([`MetricsStore::remove`]). A sandbox that is no longer sampled (paused
//! and taken off the node's table) keeps its last samples.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use paddock_domain::{Resources, SandboxId};

use crate::LocalNode;

/// How often the node samples every live sandbox.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: the last hour at [`SAMPLE_INTERVAL`].
pub const RING_CAPACITY: usize = 720;

const MIB: u64 = 1024 * 1024;

pub use paddock_node_contract::metrics::{MetricSample, MetricsRange};

/// Why a sandbox could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A cgroup or disk file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file did not hold what the kernel documents.
    #[error("unexpected content in {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// None of the sandbox's cgroup directories has the file needed for this value.
    #[error("no cgroup directory of the sandbox provides {0}")]
    Missing(&'static str),
}

/// Where the numbers of one sandbox come from.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    /// The sandbox's cgroup directories (one per hierarchy on v1, one on v2).
    pub cgroup_dirs: Vec<PathBuf>,
    /// The mount point of the sandbox's disk.
    pub disk_dir: PathBuf,
    /// The sandbox's limits.
    pub resources: Resources,
}

/// The cgroup's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupReading {
    /// Total CPU time used by the cgroup since it was created, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes (usage minus inactive page cache).
    pub mem_used: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
}

fn read(path: &Path) -> Result<String, MetricsError> {
    std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, MetricsError> {
    text.trim().parse().map_err(|_| MetricsError::Parse {
        path: path.to_path_buf(),
        detail: format!("{:?} is not a counter", text.trim()),
    })
}

/// The `key value` lines of a flat-keyed cgroup file (`memory.stat`, `cpu.stat`); lines that do
/// not parse are skipped.
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// The first of `dirs` that holds `file`.
fn find(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(file)).find(|p| p.exists())
}

/// Reads CPU and memory counters from a sandbox's cgroup directories (v1 or v2).
pub fn read_cgroup(dirs: &[PathBuf]) -> Result<CgroupReading, MetricsError> {
    let cpu_usage_ns = read_cpu_usage(dirs)?;
    let (mem_used, mem_cache) = read_memory(dirs)?;
    Ok(CgroupReading {
        cpu_usage_ns,
        mem_used,
        mem_cache,
    })
}

fn read_cpu_usage(dirs: &[PathBuf]) -> Result<u64, MetricsError> {
    // v2 first: v1's cpu controller has a `cpu.stat` too, but without `usage_usec`.
    for dir in dirs {
        let path = dir.join("cpu.stat");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(usec) = parse_flat_keyed(&text).get("usage_usec") {
                return Ok(usec.saturating_mul(1000));
            }
        }
    }
    let path = find(dirs, "cpuacct.usage").ok_or(MetricsError::Missing("CPU usage"))?;
    parse_u64(&path, &read(&path)?)
}

fn read_memory(dirs: &[PathBuf]) -> Result<(u64, u64), MetricsError> {
    if let Some(current) = find(dirs, "memory.current") {
        let usage = parse_u64(&current, &read(&current)?)?;
        let stat_path = current.with_file_name("memory.stat");
        let text = read(&stat_path)?;
        let stat = parse_flat_keyed(&text);
        let inactive = stat.get("inactive_file").copied().unwrap_or(0);
        let cache = stat.get("file").copied().unwrap_or(0);
        return Ok((usage.saturating_sub(inactive), cache));
    }
    let usage_path =
        find(dirs, "memory.usage_in_bytes").ok_or(MetricsError::Missing("memory usage"))?;
    let usage = parse_u64(&usage_path, &read(&usage_path)?)?;
    let stat_path = usage_path.with_file_name("memory.stat");
    let text = read(&stat_path)?;
    let stat = parse_flat_keyed(&text);
    // `total_*` are hierarchical (include the `user` child cgroup).
    let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
    let cache = stat.get("total_cache").copied().unwrap_or(0);
    Ok((usage.saturating_sub(inactive), cache))
}

/// How many processes of the sandbox's own cgroup the kernel's OOM killer has killed: `oom_kill`
/// of v2 `memory.events.local` (`memory.events` on kernels before 5.2) or v1
/// `memory.oom_control`. On v1 the user's processes run in a `user` child cgroup whose kills
/// the parent's counter does not include, so this counts kills of envd alone; on v2 every
/// process of the sandbox shares the one cgroup and this counts them all. `None` when no
/// directory has any of the files (no memory cgroup, or it is gone).
pub fn init_oom_kills(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|dir| {
        ["memory.events.local", "memory.oom_control", "memory.events"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .and_then(|text| parse_flat_keyed(&text).get("oom_kill").copied())
    })
}

/// `(used, total)` bytes of the file system mounted at `disk_dir`, or `None` when nothing is
/// mounted there (same device as its parent) or it cannot be read.
pub fn disk_usage(disk_dir: &Path) -> Option<(u64, u64)> {
    if !paddock_sandbox::namespace::is_mount_point(disk_dir) {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(disk_dir).ok()?;
    let frsize = st.fragment_size();
    let blocks = st.blocks();
    let free = st.blocks_free();
    Some((blocks.saturating_sub(free) * frsize, blocks * frsize))
}

/// CPU used between two readings `elapsed` apart, in percent of `cpu_count` CPUs, clamped to
/// 0–100 (a counter that went backwards, e.g. a recreated cgroup, counts as 0).
pub fn cpu_pct(prev_ns: u64, now_ns: u64, elapsed: Duration, cpu_count: u32) -> f64 {
    let capacity = elapsed.as_nanos() as f64 * f64::from(cpu_count.max(1));
    if capacity <= 0.0 {
        return 0.0;
    }
    let used = now_ns.saturating_sub(prev_ns) as f64;
    (used / capacity * 100.0).clamp(0.0, 100.0)
}

/// The samples of one sandbox and the counter reading the next CPU percentage starts from.
#[derive(Debug)]
struct Series {
    samples: VecDeque<MetricSample>,
    last_cpu: (u64, Instant),
}

/// The series of every sandbox measured on this node. Safe to share between tasks.
#[derive(Debug)]
pub struct MetricsStore {
    capacity: usize,
    series: Mutex<HashMap<SandboxId, Series>>,
}

impl Default for MetricsStore {
    fn default() -> Self {
        Self::new(RING_CAPACITY)
    }
}

impl MetricsStore {
    /// A store keeping at most `capacity` (≥ 1) samples per sandbox.
    pub fn new(capacity: usize) -> Self {
        MetricsStore {
            capacity: capacity.max(1),
            series: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Series>> {
        // Every update is a single insert/push/remove; a poisoned lock is still consistent.
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measures sandbox `id` now and appends the sample. `started` is when the sandbox started
    /// (its first CPU percentage averages over the time since then); `None` makes the first
    /// sample's CPU percentage 0. Blocking file I/O: call from a blocking context.
    pub fn sample(
        &self,
        id: &SandboxId,
        source: &MetricsSource,
        started: Option<SystemTime>,
    ) -> Result<MetricSample, MetricsError> {
        let reading = read_cgroup(&source.cgroup_dirs)?;
        let res = &source.resources;
        let (disk_used, disk_total) =
            disk_usage(&source.disk_dir).unwrap_or((0, res.disk_mb.saturating_mul(MIB)));
        let now = Instant::now();
        let mut series = self.lock();
        let (prev_ns, since) = match series.get(id) {
            Some(s) => (s.last_cpu.0, now.saturating_duration_since(s.last_cpu.1)),
            None => (
                0,
                started
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or(Duration::ZERO),
            ),
        };
        let sample = MetricSample {
            timestamp: Utc::now(),
            cpu_count: res.cpu_count,
            cpu_used_pct: cpu_pct(prev_ns, reading.cpu_usage_ns, since, res.cpu_count),
            mem_used: reading.mem_used,
            mem_total: res.memory_mb.saturating_mul(MIB),
            mem_cache: reading.mem_cache,
            disk_used,
            disk_total,
        };
        let entry = series.entry(id.clone()).or_insert_with(|| Series {
            samples: VecDeque::new(),
            last_cpu: (0, now),
        });
        entry.last_cpu = (reading.cpu_usage_ns, now);
        if entry.samples.len() == self.capacity {
            entry.samples.pop_front();
        }
        entry.samples.push_back(sample.clone());
        Ok(sample)
    }

    /// Whether sandbox `id` has at least one sample.
    pub fn has_samples(&self, id: &SandboxId) -> bool {
        self.lock().get(id).is_some_and(|s| !s.samples.is_empty())
    }

    /// The samples of `id` within `range`, oldest first (empty for an unknown sandbox).
    pub fn query(&self, id: &SandboxId, range: MetricsRange) -> Vec<MetricSample> {
        self.lock()
            .get(id)
            .map(|s| {
                s.samples
                    .iter()
                    .filter(|m| range.contains(&m.timestamp))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The newest sample of `id`.
    pub fn latest(&self, id: &SandboxId) -> Option<MetricSample> {
        self.lock().get(id).and_then(|s| s.samples.back().cloned())
    }

    /// Forgets sandbox `id`.
    pub fn remove(&self, id: &SandboxId) {
        self.lock().remove(id);
    }

    /// Keeps only the series for which `keep` is true.
    pub fn retain(&self, mut keep: impl FnMut(&SandboxId) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }

    /// Sandboxes that have a series.
    pub fn ids(&self) -> Vec<SandboxId> {
        self.lock().keys().cloned().collect()
    }
}

/// Reads the sandbox's resources from the `node.json` the node writes into every state
/// directory, and the time it was written (≈ when the sandbox was created).
pub fn read_node_meta(state_dir: &Path) -> Option<(Resources, SystemTime)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        resources: Resources,
    }
    let path = state_dir.join("node.json");
    let meta: Meta = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    Some((meta.resources, written))
}

/// Samples every live sandbox of `node` each [`SAMPLE_INTERVAL`] (see [`sample_tick`]);
/// returns once the node is dropped.
pub(crate) async fn run_sampler(node: Weak<LocalNode>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Only a weak reference across the wait, so the sampler never keeps the node alive.
        let Some(node) = node.upgrade() else { return };
        sample_tick(&node).await;
    }
}

/// One round of the sampler: a sample of every live sandbox, then the series of sandboxes
/// whose state directory is gone are dropped.
pub(crate) async fn sample_tick(node: &LocalNode) {
    let jobs: Vec<_> = node
        .live_ids()
        .into_iter()
        .filter_map(|id| node.metrics_source(&id).map(|(src, t)| (id, src, t)))
        .collect();
    let store = Arc::clone(node.metrics_store());
    let root = node.sandboxes_dir().to_path_buf();
    let done = tokio::task::spawn_blocking(move || {
        for (id, source, started) in jobs {
            if let Err(e) = store.sample(&id, &source, Some(started)) {
                // Usually a sandbox that went away since the list was taken.
                tracing::debug!(sandbox_id = %id, error = %e, "cannot sample sandbox");
            }
        }
        store.retain(|id| root.join(id.as_str()).is_dir());
    })
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "metrics sampler task failed");
    }
}

/// [`crate::Node::metrics`] of a [`LocalNode`]: the stored samples, after taking one at once
/// for a live sandbox that has none yet.
pub(crate) async fn query(
    node: &LocalNode,
    id: &SandboxId,
    range: MetricsRange,
) -> Vec<MetricSample> {
    let store = node.metrics_store();
    if !store.has_samples(id) && node.live_ids().contains(id) {
        if let Some((source, started)) = node.metrics_source(id) {
            let store = Arc::clone(store);
            let sid = id.clone();
            let taken =
                tokio::task::spawn_blocking(move || store.sample(&sid, &source, Some(started)))
                    .await;
            match taken {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(sandbox_id = %id, error = %e, "cannot sample sandbox"),
                Err(e) => tracing::error!(error = %e, "metrics sample task failed"),
            }
        }
    }
    store.query(id, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::parse(s).expect("id")
    }

    fn resources(cpus: u32) -> Resources {
        Resources {
            cpu_count: cpus,
            memory_mb: 512,
            disk_mb: 1024,
            pids_max: 100,
        }
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(file), text).expect("write");
    }

    /// A v1 layout: memory and cpu,cpuacct hierarchies in separate directories.
    fn v1_fixture(root: &Path, cpu_ns: u64) -> Vec<PathBuf> {
        let mem = root.join("memory/paddock/iabc");
        let cpu = root.join("cpu,cpuacct/paddock/iabc");
        write(&mem, "memory.usage_in_bytes", "104857600\n");
        write(
            &mem,
            "memory.stat",
            "cache 999\ninactive_file 1\ntotal_cache 41943040\ntotal_inactive_file 20971520\n\
             total_active_file 20971520\n",
        );
        write(
            &cpu,
            "cpu.stat",
            "nr_periods 10\nnr_throttled 0\nthrottled_time 0\n",
        );
        write(&cpu, "cpuacct.usage", &format!("{cpu_ns}\n"));
        vec![mem, cpu]
    }

    #[test]
    fn v1_counters() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = v1_fixture(tmp.path(), 123_456_789);
        let r = read_cgroup(&dirs).expect("read");
        assert_eq!(r.cpu_usage_ns, 123_456_789);
        assert_eq!(
            r.mem_used,
            100 * MIB - 20 * MIB,
            "usage minus total_inactive_file"
        );
        assert_eq!(r.mem_cache, 40 * MIB, "total_cache, not the local cache");
    }

    #[test]
    fn v2_counters() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("paddock/iabc");
        write(
            &dir,
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        write(&dir, "memory.current", "209715200\n");
        write(
            &dir,
            "memory.stat",
            "anon 104857600\nfile 94371840\nactive_file 10485760\ninactive_file 83886080\n",
        );
        let r = read_cgroup(&[dir]).expect("read");
        assert_eq!(r.cpu_usage_ns, 2_500_000_000);
        assert_eq!(r.mem_used, 200 * MIB - 80 * MIB);
        assert_eq!(r.mem_cache, 90 * MIB);
    }

    #[test]
    fn missing_and_malformed_files_are_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("x");
        write(&dir, "memory.current", "1\n");
        write(&dir, "memory.stat", "file 0\n");
        let err = read_cgroup(std::slice::from_ref(&dir)).expect_err("no cpu file");
        assert!(matches!(err, MetricsError::Missing("CPU usage")), "{err}");
        write(&dir, "cpuacct.usage", "lots\n");
        let err = read_cgroup(&[dir]).expect_err("bad counter");
        assert!(matches!(err, MetricsError::Parse { .. }), "{err}");
    }

    #[test]
    fn cpu_percentage_of_the_sandbox_cpus() {
        let sec = Duration::from_secs(1);
        // One busy core of a 2-CPU sandbox for 5 s = 50 %.
        assert_eq!(cpu_pct(0, 5_000_000_000, 5 * sec, 2), 50.0);
        assert_eq!(cpu_pct(1_000, 1_000, sec, 1), 0.0);
        assert_eq!(cpu_pct(5, 1, sec, 1), 0.0, "counter went backwards");
        assert_eq!(cpu_pct(0, 9_000_000_000, sec, 2), 100.0, "clamped");
        assert_eq!(cpu_pct(0, 10, Duration::ZERO, 2), 0.0, "no interval");
        assert_eq!(cpu_pct(0, 500_000_000, sec, 0), 50.0, "0 CPUs counts as 1");
    }

    #[test]
    fn store_computes_intervals_bounds_the_ring_and_filters() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = v1_fixture(tmp.path(), 0);
        let source = MetricsSource {
            cgroup_dirs: dirs.clone(),
            disk_dir: tmp.path().join("no-such-disk"),
            resources: resources(2),
        };
        let store = MetricsStore::new(3);
        let a = id("iabc");
        // First sample: averaged since the start, 2 CPUs for ≥ 10 s and 0 ns used = 0 %.
        let started = SystemTime::now() - Duration::from_secs(10);
        let first = store.sample(&a, &source, Some(started)).expect("sample");
        assert_eq!(first.cpu_used_pct, 0.0);
        assert_eq!(first.cpu_count, 2);
        assert_eq!(first.mem_total, 512 * MIB);
        assert_eq!(first.mem_used, 80 * MIB);
        assert_eq!(
            (first.disk_used, first.disk_total),
            (0, 1024 * MIB),
            "no mount"
        );
        // 100 s of CPU used since: far more than 2 CPUs could in the (short) interval.
        write(&dirs[1], "cpuacct.usage", "100000000000\n");
        let second = store.sample(&a, &source, None).expect("sample");
        assert_eq!(second.cpu_used_pct, 100.0);
        // Nothing used since the last reading.
        let third = store.sample(&a, &source, None).expect("sample");
        assert_eq!(third.cpu_used_pct, 0.0);
        store.sample(&a, &source, None).expect("sample");
        let all = store.query(&a, MetricsRange::default());
        assert_eq!(all.len(), 3, "ring keeps the newest 3");
        assert_eq!(all[0], second, "the oldest was dropped");
        assert_eq!(store.latest(&a).as_ref(), all.last());

        let now = Utc::now().timestamp();
        let past = MetricsRange {
            start: None,
            end: Some(now - 3600),
        };
        assert!(store.query(&a, past).is_empty());
        let current = MetricsRange {
            start: Some(now - 60),
            end: Some(now + 60),
        };
        assert_eq!(store.query(&a, current).len(), 3);
        let future = MetricsRange {
            start: Some(now + 60),
            end: None,
        };
        assert!(store.query(&a, future).is_empty());

        assert!(store.has_samples(&a));
        assert!(!store.has_samples(&id("iother")));
        store.retain(|x| x != &a);
        assert!(store.query(&a, MetricsRange::default()).is_empty());
        assert!(store.ids().is_empty());
    }

    #[test]
    fn failed_sample_leaves_no_series() {
        let tmp = tempfile::tempdir().expect("tmp");
        let source = MetricsSource {
            cgroup_dirs: vec![tmp.path().join("gone")],
            disk_dir: tmp.path().join("disk"),
            resources: resources(1),
        };
        let store = MetricsStore::default();
        assert!(store.sample(&id("iabc"), &source, None).is_err());
        assert!(store.ids().is_empty());
    }

    #[test]
    fn disk_usage_needs_a_mount() {
        let tmp = tempfile::tempdir().expect("tmp");
        let plain = tmp.path().join("disk");
        std::fs::create_dir(&plain).expect("mkdir");
        assert_eq!(disk_usage(&plain), None, "a plain directory is not a disk");
        assert_eq!(disk_usage(&tmp.path().join("missing")), None);
        // /proc is its own mount; statvfs works on it (0 blocks).
        assert_eq!(disk_usage(Path::new("/proc")), Some((0, 0)));
    }

    #[test]
    fn node_meta_is_read_from_node_json() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(read_node_meta(tmp.path()).is_none());
        let json = serde_json::json!({"template": "base", "resources": resources(3)});
        std::fs::write(tmp.path().join("node.json"), json.to_string()).expect("write");
        let (r, written) = read_node_meta(tmp.path()).expect("meta");
        assert_eq!(r, resources(3));
        assert!(written <= SystemTime::now());
    }

    /// A runtime whose sandboxes "run" as soon as they are created and whose cgroup is a
    /// directory of fixture files.
    struct FixtureRuntime {
        cgroup_root: PathBuf,
        alive: Mutex<std::collections::HashSet<SandboxId>>,
        exits: tokio::sync::broadcast::Sender<SandboxId>,
    }

    #[async_trait::async_trait]
    impl paddock_sandbox::RuntimeDriver for FixtureRuntime {
        fn name(&self) -> &'static str {
            "fixture"
        }
        async fn create(
            &self,
            spec: paddock_sandbox::SandboxSpec,
        ) -> Result<paddock_sandbox::SandboxHandle, paddock_sandbox::RuntimeError> {
            self.alive.lock().expect("lock").insert(spec.id.clone());
            let run_dir = spec.state_dir.clone();
            Ok(paddock_sandbox::SandboxHandle {
                id: spec.id,
                init_pid: 1,
                envd_socket: run_dir.join("envd.sock"),
                forward_socket: run_dir.join("forward.sock"),
            })
        }
        async fn kill(
            &self,
            id: &SandboxId,
            state_dir: &Path,
        ) -> Result<(), paddock_sandbox::RuntimeError> {
            self.alive.lock().expect("lock").remove(id);
            let _ = std::fs::remove_dir_all(state_dir);
            Ok(())
        }
        async fn adopt(
            &self,
            _id: &SandboxId,
            _state_dir: &Path,
        ) -> Result<Option<paddock_sandbox::SandboxHandle>, paddock_sandbox::RuntimeError> {
            Ok(None)
        }
        async fn reap_orphans(
            &self,
            _keep: &[SandboxId],
        ) -> Result<usize, paddock_sandbox::RuntimeError> {
            Ok(0)
        }
        fn exits(&self) -> tokio::sync::broadcast::Receiver<SandboxId> {
            self.exits.subscribe()
        }
        fn is_alive(&self, id: &SandboxId) -> bool {
            self.alive.lock().expect("lock").contains(id)
        }
        fn cgroup_dirs(&self, id: &SandboxId) -> Vec<PathBuf> {
            vec![self.cgroup_root.join(id.as_str())]
        }
        async fn release(&self) {}
    }

    #[tokio::test]
    async fn node_samples_on_request_each_tick_and_forgets_killed_sandboxes() {
        use paddock_templates::{TemplateMeta, TemplateSource, TemplateStore};

        let tmp = tempfile::tempdir().expect("tmp");
        let template = tmp.path().join("templates/base");
        std::fs::create_dir_all(template.join("rootfs")).expect("mkdir");
        let meta = TemplateMeta {
            name: paddock_domain::TemplateName::parse("base").expect("name"),
            resources: resources(2),
            created_at: Utc::now(),
            source: TemplateSource::Import {
                archive: "/base.tar".into(),
                format: "tar".into(),
            },
            config: Default::default(),
        };
        std::fs::write(
            template.join("template.json"),
            serde_json::to_vec(&meta).expect("json"),
        )
        .expect("write");
        let runtime = Arc::new(FixtureRuntime {
            cgroup_root: tmp.path().join("cgroup"),
            alive: Mutex::default(),
            exits: tokio::sync::broadcast::channel(4).0,
        });
        let cfg = crate::NodeConfig {
            sandboxes_dir: tmp.path().join("sandboxes"),
            envd_bin: tmp.path().join("envd"),
            interpreter_bin: None,
            max_sandboxes: 4,
            network: None,
            warm_pool: Default::default(),
            start_concurrency: 4,
        };
        let store = TemplateStore::open(tmp.path().join("templates")).expect("store");
        let node = LocalNode::new(cfg, store, runtime).expect("node");

        let a = SandboxId::generate();
        let cg = tmp.path().join("cgroup").join(a.as_str());
        write(&cg, "cpu.stat", "usage_usec 0\n");
        write(&cg, "memory.current", "10485760\n");
        write(&cg, "memory.stat", "file 0\ninactive_file 0\n");
        let req = crate::CreateRequest {
            id: a.clone(),
            template: paddock_domain::TemplateName::parse("base").expect("name"),
            env_vars: HashMap::new(),
            access_token: "t".into(),
            resources: None,
            network: Default::default(),
            start_cmd: true,
        };
        node.create(req).await.expect("create");

        // No tick has measured it yet (or one has): either way a request finds a sample.
        let first = node.metrics(&a, MetricsRange::default()).await;
        assert!(!first.is_empty(), "a live sandbox always has a sample");
        assert_eq!(first[0].cpu_count, 2);
        assert_eq!(first[0].mem_used, 10 * MIB);
        assert_eq!(first[0].mem_total, 512 * MIB);
        assert_eq!(first[0].disk_total, 1024 * MIB, "no disk mount: the limit");

        write(&cg, "memory.current", "20971520\n");
        sample_tick(&node).await;
        let after = node.metrics(&a, MetricsRange::default()).await;
        assert!(after.len() > first.len(), "the tick added a sample");
        assert_eq!(after.last().map(|m| m.mem_used), Some(20 * MIB));
        // The newest sample: the tick's, or one the background sampler took since.
        let latest = crate::Node::latest_metrics(node.as_ref(), std::slice::from_ref(&a))
            .await
            .expect("latest metrics");
        let newest = latest.get(&a).expect("a latest sample");
        let tick = after.last().expect("samples");
        assert_eq!(newest.mem_used, 20 * MIB);
        assert!(
            newest.timestamp >= tick.timestamp,
            "{newest:?} older than {tick:?}"
        );

        // Unknown sandboxes have nothing and get nothing sampled.
        let unknown = SandboxId::generate();
        assert!(node
            .metrics(&unknown, MetricsRange::default())
            .await
            .is_empty());

        node.kill(&a).await.expect("kill");
        sample_tick(&node).await;
        assert!(node.metrics(&a, MetricsRange::default()).await.is_empty());
        assert!(node.metrics_store().ids().is_empty());
    }

    #[test]
    fn oom_kills_are_read_from_the_sandboxs_own_cgroup() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // v2: the local counter, not the hierarchical one (which counts the user's kills).
        let v2 = tmp.path().join("v2/iabc");
        write(
            &v2,
            "memory.events",
            "low 0\nhigh 0\nmax 9\noom 4\noom_kill 4\n",
        );
        write(
            &v2,
            "memory.events.local",
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n",
        );
        assert_eq!(init_oom_kills(std::slice::from_ref(&v2)), Some(0));
        write(
            &v2,
            "memory.events.local",
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n",
        );
        assert_eq!(init_oom_kills(std::slice::from_ref(&v2)), Some(1));
        // v1: the memory hierarchy's directory among the others.
        let mem = tmp.path().join("memory/paddock/iabc");
        let cpu = tmp.path().join("cpu,cpuacct/paddock/iabc");
        write(&cpu, "cpuacct.usage", "5\n");
        write(
            &mem,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(init_oom_kills(&[cpu.clone(), mem]), Some(2));
        // No memory cgroup (or it is gone already).
        assert_eq!(init_oom_kills(&[cpu, tmp.path().join("gone")]), None);
    }
}
