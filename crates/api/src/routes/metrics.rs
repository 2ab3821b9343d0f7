//! `GET /sandboxes/{id}/metrics` (a sandbox's series of resource-usage samples, optionally
//! between `start` and `end`, unix seconds) and `GET /sandboxes/metrics?sandbox_ids=a,b` (the
//! newest sample of each listed sandbox). Samples come from the node ([`Node::metrics`]); this
//! file owns the query parsing, team scoping and the `SandboxMetric` JSON.
//!
//! Scoping: only the caller's running or paused sandboxes are visible (404 for the single
//! endpoint, left out of the batch). A paused sandbox reports its last samples.
//!
//! [`Node::metrics`]: paddock_node_contract::Node::metrics

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::SecondsFormat;
use paddock_domain::{SandboxId, SandboxState};
use paddock_node_contract::{MetricSample, MetricsRange};
use serde::Serialize;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::SandboxPath;
use crate::routes::query::parse_pairs;
use crate::AppState;

/// Most sandbox ids one batch request may name (the reference's limit).
pub const MAX_BATCH_IDS: usize = 100;

/// `SandboxMetric` (spec 2.4).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// RFC 3339 (deprecated by E2B in favour of `timestampUnix`).
    pub timestamp: String,
    /// Unix seconds.
    pub timestamp_unix: i64,
    /// CPUs of the sandbox.
    pub cpu_count: u32,
    /// CPU used, percent of `cpu_count` CPUs.
    pub cpu_used_pct: f64,
    /// Memory used, bytes.
    pub mem_used: u64,
    /// Memory limit, bytes.
    pub mem_total: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Disk used, bytes.
    pub disk_used: u64,
    /// Disk size, bytes.
    pub disk_total: u64,
}

impl From<&MetricSample> for SandboxMetric {
    fn from(m: &MetricSample) -> Self {
        SandboxMetric {
            timestamp: m.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
            timestamp_unix: m.timestamp.timestamp(),
            cpu_count: m.cpu_count,
            // Two decimals are plenty and keep the JSON short.
            cpu_used_pct: (m.cpu_used_pct * 100.0).round() / 100.0,
            mem_used: m.mem_used,
            mem_total: m.mem_total,
            mem_cache: m.mem_cache,
            disk_used: m.disk_used,
            disk_total: m.disk_total,
        }
    }
}

/// `{"sandboxes": {<id>: SandboxMetric}}`.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxesWithMetrics {
    /// Newest sample per sandbox.
    pub sandboxes: BTreeMap<String, SandboxMetric>,
}

/// Parses `start`/`end` (unix seconds, each optional, non-negative, `start <= end`).
pub fn parse_range(raw: Option<&str>) -> Result<MetricsRange, ApiError> {
    let mut range = MetricsRange::default();
    for (key, value) in parse_pairs(raw.unwrap_or(""))? {
        let slot = match key.as_str() {
            "start" => &mut range.start,
            "end" => &mut range.end,
            _ => continue,
        };
        let secs = value.trim().parse::<i64>().ok().filter(|s| *s >= 0);
        let Some(secs) = secs else {
            return Err(ApiError::BadRequest(format!(
                "{key} must be a unix timestamp in seconds, got {value:?}"
            )));
        };
        *slot = Some(secs);
    }
    if let (Some(start), Some(end)) = (range.start, range.end) {
        if start > end {
            return Err(ApiError::BadRequest(format!(
                "start ({start}) must not be after end ({end})"
            )));
        }
    }
    Ok(range)
}

/// Parses `sandbox_ids` (comma-joined, required, at most [`MAX_BATCH_IDS`]). Ids that cannot
/// exist are dropped (they are unknown, and unknown ids are left out of the answer).
pub fn parse_batch_ids(raw: Option<&str>) -> Result<Vec<SandboxId>, ApiError> {
    let mut joined: Option<String> = None;
    for (key, value) in parse_pairs(raw.unwrap_or(""))? {
        if key == "sandbox_ids" {
            let all = joined.get_or_insert_with(String::new);
            if !all.is_empty() {
                all.push(',');
            }
            all.push_str(&value);
        }
    }
    let joined = joined.ok_or_else(|| {
        ApiError::BadRequest("query parameter sandbox_ids is required".to_string())
    })?;
    let names: Vec<&str> = joined
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.len() > MAX_BATCH_IDS {
        return Err(ApiError::BadRequest(format!(
            "Too many sandboxes requested, maximum is {MAX_BATCH_IDS}"
        )));
    }
    let mut ids: Vec<SandboxId> = names
        .into_iter()
        // `<id>-<clientID>` from older clients (spec 2.6).
        .filter_map(|n| SandboxId::parse(n.split('-').next().unwrap_or(n)).ok())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

pub(super) async fn sandbox_metrics(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let range = parse_range(raw.as_deref())?;
    state.core.get(&team.0, &path.0).await?;
    let samples = state
        .core
        .node
        .metrics(&path.0, range)
        .await
        .map_err(|e| ApiError::from(crate::lifecycle::Error::from(e)))?;
    Ok(Json(samples.iter().map(SandboxMetric::from).collect()))
}

pub(super) async fn batch_metrics(
    State(state): State<AppState>,
    team: Team,
    RawQuery(raw): RawQuery,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let ids = parse_batch_ids(raw.as_deref())?;
    let mut visible = Vec::with_capacity(ids.len());
    for id in ids {
        let rec = state
            .core
            .store
            .sandbox(&id)
            .await
            .map_err(|e| ApiError::from(crate::lifecycle::Error::from(e)))?;
        if rec.is_some_and(|r| {
            r.team_id == team.0 && matches!(r.state, SandboxState::Running | SandboxState::Paused)
        }) {
            visible.push(id);
        }
    }
    let latest = state
        .core
        .node
        .latest_metrics(&visible)
        .await
        .map_err(|e| ApiError::from(crate::lifecycle::Error::from(e)))?;
    let sandboxes = latest
        .iter()
        .map(|(id, m)| (id.to_string(), SandboxMetric::from(m)))
        .collect();
    Ok(Json(SandboxesWithMetrics { sandboxes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None).expect("none"), MetricsRange::default());
        assert_eq!(
            parse_range(Some("start=10&end=20&other=x")).expect("both"),
            MetricsRange {
                start: Some(10),
                end: Some(20)
            }
        );
        assert_eq!(
            parse_range(Some("end=5")).expect("end only"),
            MetricsRange {
                start: None,
                end: Some(5)
            }
        );
        for bad in [
            "start=abc",
            "start=-1",
            "end=1.5",
            "start=",
            "start=20&end=10",
        ] {
            let err = parse_range(Some(bad)).expect_err(bad);
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn batch_ids() {
        let ids = parse_batch_ids(Some("sandbox_ids=ib%2Cia,ia-6532622b,,BAD!")).expect("ids");
        let names: Vec<&str> = ids.iter().map(SandboxId::as_str).collect();
        assert_eq!(names, vec!["ia", "ib"]);
        assert!(parse_batch_ids(Some("sandbox_ids="))
            .expect("empty")
            .is_empty());
        assert!(matches!(
            parse_batch_ids(None),
            Err(ApiError::BadRequest(_))
        ));
        let many: Vec<String> = (0..=MAX_BATCH_IDS).map(|i| format!("i{i}")).collect();
        let err = parse_batch_ids(Some(&format!("sandbox_ids={}", many.join(","))))
            .expect_err("too many");
        assert!(err.to_string().contains("maximum is 100"), "{err}");
        let exactly: Vec<String> = (0..MAX_BATCH_IDS).map(|i| format!("i{i}")).collect();
        let ok = parse_batch_ids(Some(&format!("sandbox_ids={}", exactly.join(","))));
        assert_eq!(ok.expect("100 ids").len(), MAX_BATCH_IDS);
    }

    #[test]
    fn wire_shape() {
        let sample = MetricSample {
            timestamp: "2026-01-02T03:04:05.678Z".parse().expect("time"),
            cpu_count: 2,
            cpu_used_pct: 12.3456,
            mem_used: 1,
            mem_total: 2,
            mem_cache: 3,
            disk_used: 4,
            disk_total: 5,
        };
        let json = serde_json::to_value(SandboxMetric::from(&sample)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "timestamp": "2026-01-02T03:04:05.678Z",
                "timestampUnix": 1767323045,
                "cpuCount": 2,
                "cpuUsedPct": 12.35,
                "memUsed": 1,
                "memTotal": 2,
                "memCache": 3,
                "diskUsed": 4,
                "diskTotal": 5,
            })
        );
    }
}
