//! `GET /sandboxes/{id}/logs` (v1: `start`, `limit` → `{"logs": [{timestamp, line}],
//! "logEntries": [...]}`) and `GET /v2/sandboxes/{id}/logs` (`cursor`, `limit`, `direction`,
//! `level`, `search` → `{"logs": [...]}`). 404 for an id the team does not own; a stopped sandbox
//! whose record is kept still has its logs. What the logs hold and the query semantics are in
//! [`crate::logs`].

use axum::extract::{RawQuery, State};
use axum::Json;

use super::query::parse_pairs;
use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::SandboxPath;
use crate::logs::{self, LogsV1, LogsV2, WireEntry, WireLine};
use crate::AppState;

pub(super) async fn logs_v1(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    RawQuery(raw): RawQuery,
) -> Result<Json<LogsV1>, ApiError> {
    let query = logs::parse_v1(&parse_pairs(raw.as_deref().unwrap_or(""))?)?;
    let entries = state.core.sandbox_logs(&team.0, &path.0).await?;
    let selected = logs::select(entries, &query);
    Ok(Json(LogsV1 {
        logs: selected.iter().map(WireLine::from).collect(),
        log_entries: selected.iter().map(WireEntry::from).collect(),
    }))
}

pub(super) async fn logs_v2(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    RawQuery(raw): RawQuery,
) -> Result<Json<LogsV2>, ApiError> {
    let query = logs::parse_v2(&parse_pairs(raw.as_deref().unwrap_or(""))?)?;
    let entries = state.core.sandbox_logs(&team.0, &path.0).await?;
    Ok(Json(LogsV2 {
        logs: logs::select(entries, &query)
            .iter()
            .map(WireEntry::from)
            .collect(),
    }))
}
