//! `POST /sandboxes/{id}/pause` (204; 409 when already paused; 503 when the node cannot pause
//! it now, the sandbox left running) and the deprecated `POST /sandboxes/{id}/resume` (201 with
//! a `Sandbox`; 409 when it is running). Both 404 for unknown sandboxes.
//!
//! `memory: false` (filesystem-only pause) is refused with 400: Paddock pauses in memory only,
//! and a pause that silently kept the memory would not be what the client asked for.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::{Json, SandboxPath};
use crate::lifecycle::pause::RESUME_DEFAULT_TIMEOUT_SECS;
use crate::wire::Sandbox;
use crate::AppState;

/// `SandboxPauseRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PauseBody {
    /// `false` asks for a filesystem-only pause (not supported).
    pub memory: Option<bool>,
    /// Refuse to pause when envd does not answer (a frozen envd answers again on resume).
    #[allow(dead_code)]
    pub require_healthy_guest: Option<bool>,
}

/// `ResumedSandbox`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResumeBody {
    /// Seconds the sandbox lives after the resume (default 15).
    pub timeout: Option<i64>,
    /// `false` asks for a cold boot instead of the memory snapshot (not supported).
    pub memory: Option<bool>,
}

/// Message of the 400 for `memory: false`.
pub(crate) const FILESYSTEM_ONLY: &str = "filesystem-only pause (memory: false) is not supported \
     by Paddock; sandboxes are paused with their memory (omit memory or send memory: true)";

pub(super) async fn pause(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<PauseBody>,
) -> Result<StatusCode, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    if body.memory == Some(false) {
        return Err(ApiError::BadRequest(FILESYSTEM_ONLY.into()));
    }
    state.core.pause(&team.0, &path.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resume(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<ResumeBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    if body.memory == Some(false) {
        return Err(ApiError::BadRequest(FILESYSTEM_ONLY.into()));
    }
    let timeout = body.timeout.unwrap_or(RESUME_DEFAULT_TIMEOUT_SECS);
    let (rec, was_paused) = state.core.resume(&team.0, &path.0, timeout).await?;
    if !was_paused {
        return Err(ApiError::Conflict(format!(
            "sandbox {} is already running",
            path.0
        )));
    }
    let domain = state.core.config.domain.as_deref();
    Ok((
        StatusCode::CREATED,
        axum::Json(Sandbox::from_record(&rec, domain)),
    ))
}
