//! Histograms and counters with labels, lock-free on the hot path once a label set exists,
//! and their Prometheus text exposition.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds (seconds) for request and phase latencies: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of fast calls (the store): 20 µs to 1 s.
pub const FAST_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0,
];

/// At most this many label sets per metric; later ones are counted under `other` values, so a
/// bug that puts unbounded values in a label cannot grow memory without end.
pub const MAX_SERIES: usize = 1000;

/// Whether observations are recorded (see [`set_recording`]).
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns recording off (or on again) for the whole process: observations and increments are
/// then dropped, and `/metrics` shows the series as they were. Only for the overhead
/// benchmark's baseline (`PADDOCK_METRICS=off`): an operator has no reason to.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Something [`render`] can write.
pub trait Render: Sync {
    /// Appends the metric's `# HELP`, `# TYPE` and sample lines to `out`.
    fn render(&self, out: &mut String);
}

/// Writes every metric in `metrics` in the text format.
pub fn render(metrics: &[&dyn Render]) -> String {
    let mut out = String::new();
    for m in metrics {
        m.render(&mut out);
    }
    out
}

/// One histogram series.
#[derive(Debug)]
struct Histogram {
    /// Count per bucket (not cumulative), plus one for `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A histogram with labels.
#[derive(Debug)]
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: RwLock<BTreeMap<Vec<String>, Arc<Histogram>>>,
}

impl HistogramVec {
    /// A histogram named `name` with `labels` and bucket upper bounds `bounds` (ascending).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> HistogramVec {
        HistogramVec {
            name,
            help,
            labels,
            bounds,
            series: RwLock::default(),
        }
    }

    /// Records `took` for the label values `values` (one per label, in order).
    pub fn observe(&self, values: &[&str], took: Duration) {
        if !recording() {
            return;
        }
        let series = series_of(&self.series, values, self.labels.len(), || Histogram {
            buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        });
        let seconds = took.as_secs_f64();
        let at = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        series.buckets[at].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        series.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        series.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many observations the label values `values` have (0 if none yet).
    pub fn count(&self, values: &[&str]) -> u64 {
        existing(&self.series, values).map_or(0, |h| h.count.load(Ordering::Relaxed))
    }
}

impl Render for HistogramVec {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (values, h) in series.iter() {
            let labels = label_pairs(self.labels, values);
            let mut cumulative = 0;
            for (i, bound) in self
                .bounds
                .iter()
                .map(|b| b.to_string())
                .chain(["+Inf".to_string()])
                .enumerate()
            {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let sep = if labels.is_empty() { "" } else { "," };
                let _ = writeln!(
                    out,
                    "{}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}",
                    self.name
                );
            }
            let braces = braced(&labels);
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{}_sum{braces} {sum}", self.name);
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_count{braces} {count}", self.name);
        }
    }
}

/// A counter with labels.
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: RwLock<BTreeMap<Vec<String>, Arc<AtomicU64>>>,
}

impl CounterVec {
    /// A counter named `name` (ending in `_total`) with `labels`.
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> CounterVec {
        CounterVec {
            name,
            help,
            labels,
            series: RwLock::default(),
        }
    }

    /// Adds one for the label values `values`.
    pub fn inc(&self, values: &[&str]) {
        if !recording() {
            return;
        }
        series_of(&self.series, values, self.labels.len(), || {
            AtomicU64::new(0)
        })
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The count of the label values `values` (0 if none yet).
    pub fn get(&self, values: &[&str]) -> u64 {
        existing(&self.series, values).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Render for CounterVec {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (values, c) in series.iter() {
            let braces = braced(&label_pairs(self.labels, values));
            let _ = writeln!(out, "{}{braces} {}", self.name, c.load(Ordering::Relaxed));
        }
    }
}

/// The series of `values` in `map`, made by `make` if new (past [`MAX_SERIES`], every label
/// value becomes `other`).
fn series_of<T>(
    map: &RwLock<BTreeMap<Vec<String>, Arc<T>>>,
    values: &[&str],
    arity: usize,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut key: Vec<String> = values.iter().take(arity).map(|v| v.to_string()).collect();
    key.resize(arity, String::new());
    if let Some(s) = map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Arc::clone(s);
    }
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_SERIES && !map.contains_key(&key) {
        key = vec!["other".to_string(); arity];
    }
    Arc::clone(map.entry(key).or_insert_with(|| Arc::new(make())))
}

/// The series of `values` in `map`, if it exists.
fn existing<T>(map: &RwLock<BTreeMap<Vec<String>, Arc<T>>>, values: &[&str]) -> Option<Arc<T>> {
    let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    map.read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned()
}

/// `a="x",b="y"` with values escaped as the text format wants.
fn label_pairs(names: &[&str], values: &[String]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    out
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        static BOUNDS: &[f64] = &[0.01, 0.1];
        let h = HistogramVec::new("t_seconds", "Help.", &["route"], BOUNDS);
        h.observe(&["/a"], Duration::from_millis(5));
        h.observe(&["/a"], Duration::from_millis(50));
        h.observe(&["/a"], Duration::from_secs(1));
        h.observe(&["/b\"x"], Duration::from_millis(1));
        assert_eq!(h.count(&["/a"]), 3);
        let text = render(&[&h]);
        let want = "# HELP t_seconds Help.\n# TYPE t_seconds histogram\n\
            t_seconds_bucket{route=\"/a\",le=\"0.01\"} 1\n\
            t_seconds_bucket{route=\"/a\",le=\"0.1\"} 2\n\
            t_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3\n\
            t_seconds_sum{route=\"/a\"} 1.055\n\
            t_seconds_count{route=\"/a\"} 3\n\
            t_seconds_bucket{route=\"/b\\\"x\",le=\"0.01\"} 1\n\
            t_seconds_bucket{route=\"/b\\\"x\",le=\"0.1\"} 1\n\
            t_seconds_bucket{route=\"/b\\\"x\",le=\"+Inf\"} 1\n\
            t_seconds_sum{route=\"/b\\\"x\"} 0.001\n\
            t_seconds_count{route=\"/b\\\"x\"} 1\n";
        assert_eq!(text, want);
    }

    #[test]
    fn counters_count_per_label_set_and_series_are_bounded() {
        let c = CounterVec::new("t_total", "Help.", &["outcome"]);
        c.inc(&["ok"]);
        c.inc(&["ok"]);
        c.inc(&["failed"]);
        assert_eq!(
            render(&[&c]),
            "# HELP t_total Help.\n# TYPE t_total counter\nt_total{outcome=\"failed\"} 1\nt_total{outcome=\"ok\"} 2\n"
        );
        for i in 0..MAX_SERIES + 10 {
            c.inc(&[&format!("v{i}")]);
        }
        assert!(c.series.read().expect("lock").len() <= MAX_SERIES + 1);
        assert_eq!(c.get(&["other"]), 12);
    }
}
