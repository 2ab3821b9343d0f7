//! envd's plain HTTP endpoints other than `/files` (spec 3.6): `GET /health`, `POST /init`
//! (orchestrator configuration: env vars, access token, default user and workdir),
//! `GET /envs` (global environment) and `GET /metrics` (CPU, memory, disk from `/proc` and
//! `statvfs`). Token enforcement is the `auth` middleware's job; `/init` checks its own rule.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, HeaderValue, StatusCode};
use paddock_envd_proto::rpc;
use serde::{Deserialize, Serialize};

use crate::auth::{header_token, http_error, token_matches};
use crate::state::EnvdState;

/// Routes of the plain HTTP API.
pub fn router() -> Router<EnvdState> {
    Router::new()
        .route(rpc::HEALTH, get(health))
        .route(rpc::INIT, post(init))
        .route(rpc::ENVS, get(envs))
        .route(rpc::METRICS, get(metrics))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding response: {e}"),
        ),
    }
}

/// `GET /health`: 204, no body.
async fn health() -> Response {
    no_store(StatusCode::NO_CONTENT.into_response())
}

/// Body of `POST /init` (all optional). Unknown fields (caBundle, volumeMounts…) are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Replaces the global environment.
    #[serde(default, alias = "env_vars")]
    pub env_vars: Option<HashMap<String, String>>,
    /// Sets (or, when absent, clears) the access token.
    #[serde(default, alias = "access_token")]
    pub access_token: Option<String>,
    /// RFC 3339 time of the request; older than the last applied ⇒ ignored as a replay.
    #[serde(default)]
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// New default user.
    #[serde(default, alias = "default_user")]
    pub default_user: Option<String>,
    /// New default workdir.
    #[serde(default, alias = "default_workdir")]
    pub default_workdir: Option<String>,
}

/// Why an `/init` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// The request proves no knowledge of the current token.
    #[error("access token mismatch: /init must carry the current access token")]
    TokenMismatch,
}

/// Applies an `/init` request. Returns `Ok(false)` for an ignored replay.
///
/// Auth: accepted when no token is set yet (first boot), or when the body's `accessToken` or the
/// `X-Access-Token` header equals the current token. The guest clock is not set from
/// `timestamp`: sandboxes share the host kernel's clock.
pub fn apply_init(
    state: &EnvdState,
    header_token: Option<&str>,
    req: InitRequest,
) -> Result<bool, InitError> {
    state.update(|cfg| {
        if let Some(current) = cfg.access_token.as_deref() {
            let body_ok = req
                .access_token
                .as_deref()
                .is_some_and(|t| token_matches(current, t));
            let header_ok = header_token.is_some_and(|t| token_matches(current, t));
            if !body_ok && !header_ok {
                return Err(InitError::TokenMismatch);
            }
        }
        if let (Some(ts), Some(last)) = (req.timestamp, cfg.last_init) {
            if ts < last {
                return Ok(false);
            }
        }
        if let Some(ts) = req.timestamp {
            cfg.last_init = Some(ts);
        }
        if let Some(env) = req.env_vars {
            cfg.env_vars = env;
        }
        cfg.access_token = req.access_token.filter(|t| !t.is_empty());
        if let Some(user) = req.default_user.filter(|u| !u.is_empty()) {
            cfg.default_user = user;
        }
        if let Some(dir) = req.default_workdir.filter(|d| !d.is_empty()) {
            cfg.default_workdir = Some(dir);
        }
        Ok(true)
    })
}

/// `POST /init`.
async fn init(State(state): State<EnvdState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return http_error(StatusCode::BAD_REQUEST, format!("invalid /init body: {e}"))
            }
        }
    };
    match apply_init(&state, header_token(&headers), req) {
        Ok(applied) => {
            if applied {
                tracing::info!("configuration updated by /init");
            } else {
                tracing::info!("ignored a replayed /init with an older timestamp");
            }
            let mut resp = no_store(StatusCode::NO_CONTENT.into_response());
            resp.headers_mut().insert(
                "x-envd-version",
                HeaderValue::from_static(paddock_envd_proto::ENVD_VERSION),
            );
            resp
        }
        Err(e) => http_error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

/// `GET /envs`: the global environment.
async fn envs(State(state): State<EnvdState>) -> Response {
    no_store(json_response(&state.global_env()))
}

/// `GET /metrics` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    /// Usable CPUs.
    pub cpu_count: u32,
    /// CPU utilisation since the previous sample, percent.
    pub cpu_used_pct: f64,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Used memory (total - free - buffers - cached), bytes.
    pub mem_used: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Total memory, MiB.
    pub mem_total_mib: u64,
    /// Used memory, MiB.
    pub mem_used_mib: u64,
    /// Used space of `/`, bytes.
    pub disk_used: u64,
    /// Size of `/`, bytes.
    pub disk_total: u64,
}

/// Aggregate CPU times from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// All jiffies.
    pub total: u64,
    /// Idle + iowait jiffies.
    pub idle: u64,
}

/// Parses the `cpu ` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if vals.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice).
    let total = vals.iter().take(8).sum();
    let idle = vals[3] + vals.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// CPU utilisation between two samples, percent.
pub fn cpu_percent(prev: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let busy = total.saturating_sub(now.idle.saturating_sub(prev.idle));
    ((busy as f64 / total as f64) * 10000.0).round() / 100.0
}

/// Memory figures from `/proc/meminfo`, bytes: (total, used, cached).
pub fn parse_meminfo(text: &str) -> (u64, u64, u64) {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(key), Some(val)) = (parts.next(), parts.next()) {
            if let Ok(kib) = val.parse::<u64>() {
                fields.insert(key.trim_end_matches(':').to_string(), kib * 1024);
            }
        }
    }
    let get = |k: &str| fields.get(k).copied().unwrap_or(0);
    let total = get("MemTotal");
    let cached = get("Cached") + get("SReclaimable");
    let used = total.saturating_sub(get("MemFree") + get("Buffers") + cached);
    (total, used, cached)
}

/// (used, total) bytes of the filesystem holding `path`.
fn disk_usage(path: &str) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frsize = s.fragment_size();
            let total = s.blocks() * frsize;
            let free = s.blocks_free() * frsize;
            (total.saturating_sub(free), total)
        }
        Err(_) => (0, 0),
    }
}

/// The previous CPU sample, for utilisation between calls.
static LAST_CPU: Mutex<Option<(Instant, CpuTimes)>> = Mutex::new(None);

async fn cpu_sample() -> Option<CpuTimes> {
    let text = tokio::fs::read_to_string("/proc/stat").await.ok()?;
    parse_proc_stat(&text)
}

/// Collects the current metrics.
pub async fn collect_metrics() -> Metrics {
    let previous = *LAST_CPU.lock().unwrap_or_else(|p| p.into_inner());
    let prev = match previous {
        Some((at, times)) if at.elapsed() >= Duration::from_millis(100) => Some(times),
        _ => {
            // No usable earlier sample: measure over a short window.
            let first = cpu_sample().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            first
        }
    };
    let now = cpu_sample().await;
    if let Some(now) = now {
        *LAST_CPU.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), now));
    }
    let cpu_used_pct = match (prev, now) {
        (Some(p), Some(n)) => cpu_percent(p, n),
        _ => 0.0,
    };
    let meminfo = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .unwrap_or_default();
    let (mem_total, mem_used, mem_cache) = parse_meminfo(&meminfo);
    let (disk_used, disk_total) = tokio::task::spawn_blocking(|| disk_usage("/"))
        .await
        .unwrap_or((0, 0));
    Metrics {
        ts: chrono::Utc::now().timestamp(),
        cpu_count: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        cpu_used_pct,
        mem_total,
        mem_used,
        mem_cache,
        mem_total_mib: mem_total >> 20,
        mem_used_mib: mem_used >> 20,
        disk_used,
        disk_total,
    }
}

/// `GET /metrics`.
async fn metrics() -> Response {
    no_store(json_response(&collect_metrics().await))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::UserDb;
    use crate::BootConfig;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    fn state(token: Option<&str>) -> EnvdState {
        let boot = BootConfig {
            access_token: token.map(String::from),
            ..Default::default()
        };
        EnvdState::new(boot, UserDb::default(), std::env::temp_dir())
    }

    #[test]
    fn init_rules() {
        let s = state(None);
        let req = InitRequest {
            access_token: Some("t1".into()),
            env_vars: Some(HashMap::from([("A".into(), "1".into())])),
            default_user: Some("root".into()),
            timestamp: Some("2030-01-01T00:00:00Z".parse().expect("ts")),
            ..Default::default()
        };
        assert_eq!(apply_init(&s, None, req), Ok(true));
        let cfg = s.config();
        assert_eq!(cfg.access_token.as_deref(), Some("t1"));
        assert_eq!(cfg.default_user, "root");
        assert_eq!(s.global_env().get("A").map(String::as_str), Some("1"));
        // Wrong token: refused.
        let req = InitRequest {
            access_token: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(apply_init(&s, None, req), Err(InitError::TokenMismatch));
        // Older timestamp with the right token: ignored as a replay.
        let req = InitRequest {
            access_token: Some("t1".into()),
            default_user: Some("user".into()),
            timestamp: Some("2029-01-01T00:00:00Z".parse().expect("ts")),
            ..Default::default()
        };
        assert_eq!(apply_init(&s, None, req), Ok(false));
        assert_eq!(s.config().default_user, "root");
        // Header token proves knowledge; an absent body token clears it.
        assert_eq!(apply_init(&s, Some("t1"), InitRequest::default()), Ok(true));
        assert_eq!(s.config().access_token, None);
    }

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        let a = parse_proc_stat(stat).expect("parses");
        assert_eq!(
            a,
            CpuTimes {
                total: 1000,
                idle: 800
            }
        );
        let b = CpuTimes {
            total: 1100,
            idle: 850,
        };
        assert_eq!(cpu_percent(a, b), 50.0);
        assert_eq!(cpu_percent(a, a), 0.0);
        let mem = "MemTotal: 1000 kB\nMemFree: 200 kB\nBuffers: 100 kB\nCached: 300 kB\nSReclaimable: 0 kB\n";
        assert_eq!(parse_meminfo(mem), (1_024_000, 409_600, 307_200));
    }

    #[tokio::test]
    async fn endpoints_answer_per_spec() {
        let app = router().with_state(state(None));
        let resp = app
            .clone()
            .oneshot(Request::get("/health").body(Body::empty()).expect("req"))
            .await
            .expect("health");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let resp = app
            .clone()
            .oneshot(
                Request::post("/init")
                    .body(Body::from(r#"{"envVars":{"K":"V"},"accessToken":"abc"}"#))
                    .expect("req"),
            )
            .await
            .expect("init");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            resp.headers()["x-envd-version"],
            paddock_envd_proto::ENVD_VERSION
        );
        let resp = app
            .clone()
            .oneshot(
                Request::post("/init")
                    .body(Body::from("{not json"))
                    .expect("req"),
            )
            .await
            .expect("init");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let resp = app
            .clone()
            .oneshot(Request::get("/envs").body(Body::empty()).expect("req"))
            .await
            .expect("envs");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let env: HashMap<String, String> = serde_json::from_slice(&body).expect("json");
        assert_eq!(env.get("K").map(String::as_str), Some("V"));
        assert_eq!(env.get("E2B_SANDBOX").map(String::as_str), Some("true"));
        let resp = app
            .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
            .await
            .expect("metrics");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let m: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(m["mem_total"].as_u64().expect("mem_total") > 0);
        assert!(m["disk_total"].as_u64().expect("disk_total") > 0);
        assert!(m["cpu_count"].as_u64().expect("cpu_count") >= 1);
        assert!(m["cpu_used_pct"].is_number());
    }
}
