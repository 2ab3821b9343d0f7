//! `POST /sandboxes/{id}/timeout` (end = now + timeout, may shorten) and
//! `POST /sandboxes/{id}/refreshes` (keep alive, never shortens): both 204.

use axum::extract::State;
use axum::http::StatusCode;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::{Json, SandboxPath};
use crate::wire::{RefreshBody, TimeoutBody};
use crate::AppState;

pub(super) async fn set_timeout(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<TimeoutBody>,
) -> Result<StatusCode, ApiError> {
    let timeout = body
        .timeout
        .ok_or_else(|| ApiError::BadRequest("timeout is required".into()))?;
    state.core.set_timeout(&team.0, &path.0, timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn refresh(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    state.core.refresh(&team.0, &path.0, body.duration).await?;
    Ok(StatusCode::NO_CONTENT)
}
