//! The template build API as the E2B SDKs drive it (`Template.build`):
//! - `POST /v3/templates` `TemplateBuildRequestV3` → 202 `TemplateRequestResponseV3`
//!   (`templateID` = the name, `buildID`, `public: false`, `names`, `tags`, `aliases`); 400 bad
//!   input, 403 a name owned by another team or a node template, 409 a build already waiting or
//!   running. The tags (`name:tag` and `tags`; none = `default`) name the build once it
//!   succeeds: `name:tag` then starts it (see `lifecycle::tags` and `routes::tags`);
//! - `GET /templates/{id}/files/{hash}` → 201 `{"present", "url"}` (the URL, on this server's
//!   `Host`, carries a signed token: no API key needed to upload); 400 bad hash, 404 not the
//!   team's template;
//! - `PUT /templates/{id}/files/{hash}/upload?token=` (body: the archive) → 201; 403 bad or
//!   expired token, 413 over 10 GiB;
//! - `POST /v2/templates/{id}/builds/{buildID}` `TemplateBuildStartV2` → 202; 400 invalid
//!   recipe or missing files, 404 unknown build, 409 not `waiting`;
//! - `GET /templates/{id}/builds/{buildID}/status?logsOffset&limit&level` → 200
//!   `TemplateBuildInfo` (log lines from `logsOffset` on, counted among those at or above
//!   `level`; `limit` 0..100, default 100);
//! - `GET /templates/{id}/builds/{buildID}/logs?cursor&limit&direction&level` → 200
//!   `{"logs": [BuildLogEntry]}` (`cursor` in Unix ms, inclusive; `source` is ignored: every
//!   line is kept).
//!
//! What a build does is in `lifecycle::build`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use paddock_node_contract::build::{BuildLog, LogLevel};
use paddock_template::wire::BuildStartV2;
use serde::{Deserialize, Serialize};

use super::query::parse_pairs;
use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::Json;
use crate::lifecycle::build::{BuildRequestSpec, MAX_LOG_PAGE};
use crate::lifecycle::build_files::UploadError;
use crate::store::{BuildLogQuery, BuildReason, BuildRecord};
use crate::AppState;

/// `TemplateBuildRequestV3` (`teamID` is ignored: the API key decides the team).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestBody {
    name: Option<String>,
    tags: Option<Vec<String>>,
    alias: Option<String>,
    cpu_count: Option<i64>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<i64>,
    min_free_disk_mb: Option<i64>,
}

/// `TemplateRequestResponseV3`.
#[derive(Debug, Serialize)]
pub(crate) struct RequestedBuild {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "buildID")]
    build_id: String,
    public: bool,
    names: Vec<String>,
    tags: Vec<String>,
    aliases: Vec<String>,
}

impl From<&BuildRecord> for RequestedBuild {
    fn from(b: &BuildRecord) -> Self {
        RequestedBuild {
            template_id: b.template.to_string(),
            build_id: b.id.to_string(),
            public: false,
            names: vec![b.template.to_string()],
            tags: b.tags.clone(),
            aliases: vec![b.template.to_string()],
        }
    }
}

pub(super) async fn request(
    State(state): State<AppState>,
    team: Team,
    Json(body): Json<RequestBody>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = BuildRequestSpec {
        name: body.name,
        alias: body.alias,
        tags: body.tags.unwrap_or_default(),
        cpu_count: body.cpu_count,
        memory_mb: body.memory_mb,
        min_free_disk_mb: body.min_free_disk_mb,
    };
    let build = state.core.request_build(&team.0, spec).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RequestedBuild::from(&build)),
    ))
}

/// `TemplateBuildFileUpload`.
#[derive(Debug, Serialize)]
pub(crate) struct FileUpload {
    present: bool,
    url: String,
}

/// The request's `Host` header, if it is a plausible `host[:port]`.
fn host(headers: &HeaderMap) -> Result<&str, ApiError> {
    let raw = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let plausible = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if plausible {
        Ok(raw)
    } else {
        Err(ApiError::BadRequest(
            "a Host header is needed to make the upload link".into(),
        ))
    }
}

pub(super) async fn upload_link(
    State(state): State<AppState>,
    team: Team,
    Path((template_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let link = state.core.upload_link(&team.0, &template_id, &hash).await?;
    let url = format!(
        "http://{}/templates/{}/files/{}/upload?token={}",
        host(&headers)?,
        link.template,
        link.hash,
        link.token
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(FileUpload {
            present: link.present,
            url,
        }),
    ))
}

/// The E2B error body with status 413 (which [`ApiError`] has no variant for).
fn too_large(message: String) -> Response {
    let body = serde_json::json!({"code": 413, "message": message});
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

pub(super) async fn upload(
    State(state): State<AppState>,
    Path((template_id, hash)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let pairs = match parse_pairs(raw.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let token = pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let result = state
        .core
        .receive_upload(&template_id, &hash, &token, length, body.into_data_stream())
        .await;
    match result {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e @ UploadError::Invalid(_)) => ApiError::BadRequest(e.to_string()).into_response(),
        Err(e @ UploadError::Forbidden) => ApiError::Forbidden(e.to_string()).into_response(),
        Err(e @ UploadError::TooLarge(_)) => too_large(e.to_string()),
        Err(e @ UploadError::Body(_)) => {
            ApiError::BadRequest(crate::error::chain(&e)).into_response()
        }
        Err(UploadError::Lifecycle(e)) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn start(
    State(state): State<AppState>,
    team: Team,
    Path((template_id, build_id)): Path<(String, String)>,
    Json(body): Json<BuildStartV2>,
) -> Result<StatusCode, ApiError> {
    state
        .core
        .start_build(&team.0, &template_id, &build_id, body)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `BuildLogEntry`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct WireBuildLog {
    timestamp: String,
    message: String,
    level: &'static str,
    step: String,
}

impl From<&BuildLog> for WireBuildLog {
    fn from(l: &BuildLog) -> Self {
        WireBuildLog {
            timestamp: l.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
            message: l.message.clone(),
            level: l.level.as_str(),
            step: l.step.clone(),
        }
    }
}

/// A line of the `logs` array: E2B's legacy format, `[<RFC 3339 time>] <message>\n`.
fn legacy_line(l: &BuildLog) -> String {
    format!(
        "[{}] {}\n",
        l.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
        l.message
    )
}

/// `BuildStatusReason`.
#[derive(Debug, Serialize)]
struct WireReason {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(rename = "logEntries")]
    log_entries: Vec<WireBuildLog>,
}

impl From<&BuildReason> for WireReason {
    fn from(r: &BuildReason) -> Self {
        WireReason {
            message: r.message.clone(),
            step: r.step.clone(),
            log_entries: r.log_entries.iter().map(WireBuildLog::from).collect(),
        }
    }
}

/// `TemplateBuildInfo`.
#[derive(Debug, Serialize)]
pub(crate) struct BuildInfo {
    logs: Vec<String>,
    #[serde(rename = "logEntries")]
    log_entries: Vec<WireBuildLog>,
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "buildID")]
    build_id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<WireReason>,
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

fn non_negative(name: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        bad(format!(
            "{name} must be a non-negative integer, got {value:?}"
        ))
    })
}

fn level(value: &str) -> Result<LogLevel, ApiError> {
    Ok(match value {
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        other => {
            return Err(bad(format!(
                "level must be one of debug, info, warn, error, got {other:?}"
            )))
        }
    })
}

/// The query of the status endpoint: `logsOffset`, `limit` (clamped to 100, as E2B does),
/// `level`; other parameters are ignored.
fn status_query(raw: Option<&str>) -> Result<BuildLogQuery, ApiError> {
    let mut q = BuildLogQuery {
        offset: 0,
        limit: MAX_LOG_PAGE,
        min_level: None,
        cursor_ms: None,
        backward: false,
    };
    for (name, value) in parse_pairs(raw.unwrap_or(""))? {
        match name.as_str() {
            "logsOffset" => q.offset = non_negative("logsOffset", &value)?,
            "limit" => q.limit = non_negative("limit", &value)?.min(MAX_LOG_PAGE),
            "level" if !value.is_empty() => q.min_level = Some(level(&value)?),
            _ => {}
        }
    }
    Ok(q)
}

/// The query of the logs endpoint: `cursor` (Unix ms), `limit` (clamped to 100),
/// `direction`, `level`; `source` and other parameters are ignored.
fn logs_query(raw: Option<&str>) -> Result<BuildLogQuery, ApiError> {
    let mut q = status_query(None)?;
    for (name, value) in parse_pairs(raw.unwrap_or(""))? {
        match name.as_str() {
            "cursor" => {
                let ms = non_negative("cursor", &value)?;
                q.cursor_ms = Some(i64::try_from(ms).map_err(|_| bad("cursor is too big".into()))?)
            }
            "limit" => q.limit = non_negative("limit", &value)?.min(MAX_LOG_PAGE),
            "direction" => {
                q.backward = match value.as_str() {
                    "forward" => false,
                    "backward" => true,
                    other => {
                        return Err(bad(format!(
                            "direction must be forward or backward, got {other:?}"
                        )))
                    }
                }
            }
            "level" if !value.is_empty() => q.min_level = Some(level(&value)?),
            _ => {}
        }
    }
    Ok(q)
}

pub(super) async fn status(
    State(state): State<AppState>,
    team: Team,
    Path((template_id, build_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<BuildInfo>, ApiError> {
    let query = status_query(raw.as_deref())?;
    let (build, lines) = state
        .core
        .build_status(&team.0, &template_id, &build_id, &query)
        .await?;
    Ok(axum::Json(BuildInfo {
        logs: lines.iter().map(legacy_line).collect(),
        log_entries: lines.iter().map(WireBuildLog::from).collect(),
        template_id: build.template.to_string(),
        build_id: build.id.to_string(),
        status: build.status.as_str(),
        reason: build.reason.as_ref().map(WireReason::from),
    }))
}

/// `TemplateBuildLogsResponse`.
#[derive(Debug, Serialize)]
pub(crate) struct BuildLogs {
    logs: Vec<WireBuildLog>,
}

pub(super) async fn logs(
    State(state): State<AppState>,
    team: Team,
    Path((template_id, build_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<BuildLogs>, ApiError> {
    let query = logs_query(raw.as_deref())?;
    let (_, lines) = state
        .core
        .build_status(&team.0, &template_id, &build_id, &query)
        .await?;
    Ok(axum::Json(BuildLogs {
        logs: lines.iter().map(WireBuildLog::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn log_lines_have_e2b_shapes() {
        let line = BuildLog {
            timestamp: Utc
                .timestamp_millis_opt(1_700_000_000_123)
                .single()
                .expect("t"),
            level: LogLevel::Warn,
            step: "2".into(),
            message: "careful".into(),
        };
        assert_eq!(
            serde_json::to_value(WireBuildLog::from(&line)).expect("json"),
            serde_json::json!({
                "timestamp": "2023-11-14T22:13:20.123Z",
                "message": "careful",
                "level": "warn",
                "step": "2"
            })
        );
        assert_eq!(legacy_line(&line), "[2023-11-14T22:13:20Z] careful\n");
    }

    #[test]
    fn queries_default_clamp_and_reject() {
        let q = status_query(None).expect("ok");
        assert_eq!((q.offset, q.limit, q.min_level), (0, 100, None));
        let q = status_query(Some("logsOffset=7&limit=500&level=warn")).expect("ok");
        assert_eq!(
            (q.offset, q.limit, q.min_level),
            (7, 100, Some(LogLevel::Warn))
        );
        for bad in ["logsOffset=-1", "limit=x", "level=loud"] {
            assert!(status_query(Some(bad)).is_err(), "{bad}");
        }
        let q = logs_query(Some(
            "cursor=1700000000000&direction=backward&limit=3&source=temporary",
        ))
        .expect("ok");
        assert_eq!(
            (q.cursor_ms, q.backward, q.limit, q.offset),
            (Some(1_700_000_000_000), true, 3, 0)
        );
        assert!(logs_query(Some("direction=up")).is_err());
    }

    #[test]
    fn hosts_must_look_like_hosts() {
        let mut h = HeaderMap::new();
        assert!(host(&h).is_err());
        h.insert("host", "127.0.0.1:3000".parse().expect("value"));
        assert_eq!(host(&h).expect("ok"), "127.0.0.1:3000");
        h.insert("host", "evil.example/x?".parse().expect("value"));
        assert!(host(&h).is_err());
    }
}
