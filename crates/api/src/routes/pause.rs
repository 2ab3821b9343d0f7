//! `POST /sandboxes/{id}/pause` (204; 409 when already paused; 503 when the node cannot pause
//! it now, the sandbox left running) and the deprecated `POST /sandboxes/{id}/resume` (201 with
//! a `Sandbox`; 409 when it is running). Both 404 for unknown sandboxes.
//!
//! `memory: false` pauses to disk: the sandbox's processes end and its memory is freed, its
//! files are kept (and survive a restart of the server); resuming starts it again on them.
//! The same on resume starts a sandbox paused in memory again from its files (a cold boot).

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
    /// `false` asks for a filesystem-only pause (to disk).
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
    /// `false` asks for a cold boot from the sandbox's files instead of its memory.
    pub memory: Option<bool>,
}

pub(super) async fn pause(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<PauseBody>,
) -> Result<StatusCode, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    state
        .core
        .pause(&team.0, &path.0, body.memory == Some(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resume(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<ResumeBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.core.get(&team.0, &path.0).await?;
    let timeout = body.timeout.unwrap_or(RESUME_DEFAULT_TIMEOUT_SECS);
    let (rec, was_paused) = state
        .core
        .resume(&team.0, &path.0, timeout, body.memory == Some(false))
        .await?;
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
