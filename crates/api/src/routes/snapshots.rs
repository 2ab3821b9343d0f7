//! Snapshots and forks over HTTP:
//! - `POST /sandboxes/{id}/snapshots` `{"name"?, "memory"?}` → 201 `SnapshotInfo`
//!   (`{"snapshotID": "<name>:default", "names": ["<name>"]}`); 404 unknown sandbox, 409 name
//!   taken, 400 for `memory: true` (Paddock's snapshots keep files, not memory: omit `memory`
//!   or send `false`).
//! - `GET /snapshots?sandboxID&name&limit&nextToken` → 200 `[SnapshotInfo]`, newest first,
//!   with `X-Next-Token` while more pages follow.
//! - `DELETE /templates/{templateID}` → 204, or 404 when the team has no such snapshot (the
//!   id arrives percent-encoded as one segment, e.g. `snap%3Adefault`).
//! - `POST /sandboxes/{id}/fork` `{"timeout"?, "count"?}` → 201 `[SandboxForkResult]`, one per
//!   child, each `{"sandbox": Sandbox}` or `{"error": {"code", "message"}}`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use chrono::{TimeZone, Utc};
use paddock_domain::{SandboxId, TemplateName};
use serde::{Deserialize, Serialize};

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::{Json, SandboxPath};
use crate::lifecycle::snapshot::{snapshot_id, FORK_DEFAULT_TIMEOUT_SECS, SNAPSHOT_PAGE};
use crate::store::{SnapshotQuery, SnapshotRecord};
use crate::wire::Sandbox;
use crate::AppState;

/// `SandboxSnapshotRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SnapshotBody {
    /// Name of the snapshot template (generated when absent).
    pub name: Option<String>,
    /// `true` asks for memory too, which Paddock's snapshots do not keep.
    pub memory: Option<bool>,
}

/// `SnapshotInfo`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    snapshot_id: String,
    names: Vec<String>,
}

impl From<&SnapshotRecord> for SnapshotInfo {
    fn from(rec: &SnapshotRecord) -> Self {
        SnapshotInfo {
            snapshot_id: snapshot_id(&rec.name),
            names: vec![rec.name.to_string()],
        }
    }
}

/// Message of the 400 for `memory: true`.
const NO_MEMORY_SNAPSHOTS: &str = "snapshots with memory are not supported by Paddock: a \
     snapshot keeps the sandbox's files, and sandboxes started from it boot fresh (omit memory \
     or send memory: false, i.e. mode=\"filesystem\")";

pub(super) async fn create(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<SnapshotBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    if body.memory == Some(true) {
        return Err(ApiError::BadRequest(NO_MEMORY_SNAPSHOTS.into()));
    }
    let name = body.name.as_deref().filter(|n| !n.is_empty());
    let rec = state.core.create_snapshot(&team.0, &path.0, name).await?;
    Ok((StatusCode::CREATED, axum::Json(SnapshotInfo::from(&rec))))
}

/// Query of `GET /snapshots`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<i64>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

/// `<created_at ms>.<name>` of the last snapshot of a page.
fn encode_token(rec: &SnapshotRecord) -> String {
    format!("{}.{}", rec.created_at.timestamp_millis(), rec.name)
}

fn decode_token(raw: &str) -> Option<(chrono::DateTime<Utc>, TemplateName)> {
    let (ms, name) = raw.split_once('.')?;
    let at = Utc.timestamp_millis_opt(ms.parse().ok()?).single()?;
    Some((at, TemplateName::parse(name).ok()?))
}

pub(super) async fn list(
    State(state): State<AppState>,
    team: Team,
    Query(params): Query<ListParams>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = params.limit.unwrap_or(SNAPSHOT_PAGE);
    if !(1..=SNAPSHOT_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {SNAPSHOT_PAGE}"
        )));
    }
    let sandbox_id = match params.sandbox_id.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => match SandboxId::parse(raw) {
            Ok(id) => Some(id),
            // No sandbox has that id, so no snapshot was taken of it.
            Err(_) => return Ok((HeaderMap::new(), axum::Json(Vec::new()))),
        },
    };
    let name = match params.name.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => match TemplateName::parse(raw.rsplit('/').next().unwrap_or(raw)) {
            Ok(n) => Some(n),
            Err(_) => return Ok((HeaderMap::new(), axum::Json(Vec::new()))),
        },
    };
    let after = match params.next_token.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(
            decode_token(raw)
                .ok_or_else(|| ApiError::BadRequest(format!("invalid nextToken {raw:?}")))?,
        ),
    };
    let query = SnapshotQuery {
        sandbox_id,
        name,
        after,
        // One more than asked tells whether another page follows.
        limit: limit + 1,
    };
    let mut found = state.core.list_snapshots(&team.0, query).await?;
    let mut headers = HeaderMap::new();
    if found.len() as i64 > limit {
        found.truncate(limit as usize);
        if let Some(last) = found.last() {
            if let Ok(v) = HeaderValue::from_str(&encode_token(last)) {
                headers.insert("x-next-token", v);
            }
        }
    }
    let body: Vec<SnapshotInfo> = found.iter().map(SnapshotInfo::from).collect();
    Ok((headers, axum::Json(body)))
}

pub(super) async fn delete_template(
    State(state): State<AppState>,
    team: Team,
    Path(template_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.core.delete_template(&team.0, &template_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "template '{template_id}' not found"
        )))
    }
}

/// `SandboxForkRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ForkBody {
    /// Seconds each child lives (default 15).
    pub timeout: Option<i64>,
    /// How many children (1..=20, default 1).
    pub count: Option<i64>,
}

/// One entry of the fork response.
#[derive(Debug, Serialize)]
struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<Sandbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ForkError>,
}

#[derive(Debug, Serialize)]
struct ForkError {
    code: u16,
    message: String,
}

pub(super) async fn fork(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<ForkBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    let count = u32::try_from(body.count.unwrap_or(1))
        .map_err(|_| ApiError::BadRequest("count must be from 1 to 20".into()))?;
    let timeout = body.timeout.unwrap_or(FORK_DEFAULT_TIMEOUT_SECS);
    let results = state.core.fork(&team.0, &path.0, count, timeout).await?;
    let domain = state.core.config.domain.as_deref();
    let body: Vec<ForkResult> = results
        .into_iter()
        .map(|r| match r {
            Ok(rec) => ForkResult {
                sandbox: Some(Sandbox::from_record(&rec, domain)),
                error: None,
            },
            Err(e) => {
                let api = ApiError::from(e);
                ForkResult {
                    sandbox: None,
                    error: Some(ForkError {
                        code: api.status_code().as_u16(),
                        message: api.to_string(),
                    }),
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, axum::Json(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tokens_round_trip_and_reject_garbage() {
        let rec = SnapshotRecord {
            name: TemplateName::parse("snap.v1").expect("name"),
            team_id: crate::store::TeamId::generate(),
            sandbox_id: SandboxId::generate(),
            created_at: Utc
                .timestamp_millis_opt(1_700_000_000_123)
                .single()
                .expect("t"),
            size_bytes: 0,
        };
        let token = encode_token(&rec);
        assert_eq!(token, "1700000000123.snap.v1");
        assert_eq!(decode_token(&token), Some((rec.created_at, rec.name)));
        assert_eq!(decode_token("x.y"), None);
        assert_eq!(decode_token("12"), None);
        assert_eq!(decode_token("12.UPPER"), None);
    }

    #[test]
    fn snapshot_info_shape() {
        let rec = SnapshotRecord {
            name: TemplateName::parse("mysnap").expect("name"),
            team_id: crate::store::TeamId::generate(),
            sandbox_id: SandboxId::generate(),
            created_at: Utc::now(),
            size_bytes: 1,
        };
        let v = serde_json::to_value(SnapshotInfo::from(&rec)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"snapshotID": "mysnap:default", "names": ["mysnap"]})
        );
    }
}
