//! `POST /v2/sandboxes/{id}/connect` (timeout optional, default 300 s) and
//! `POST /sandboxes/{id}/connect` (timeout required): 200 with a `Sandbox`, 201 when the sandbox
//! was paused and has been resumed.

use axum::extract::State;
use axum::response::IntoResponse;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::{Json, SandboxPath};
use crate::wire::{ConnectBody, Sandbox};
use crate::AppState;

/// Default timeout of a v2 connect, in seconds.
pub const CONNECT_DEFAULT_TIMEOUT_SECS: i64 = 300;

async fn run(
    state: AppState,
    team: Team,
    path: SandboxPath,
    timeout: i64,
    cold: bool,
) -> Result<impl IntoResponse, ApiError> {
    let (rec, resumed) = state.core.connect(&team.0, &path.0, timeout, cold).await?;
    let domain = state.core.config.domain.as_deref();
    // 201 when a paused sandbox was resumed, 200 when it was running.
    let status = if resumed {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, axum::Json(Sandbox::from_record(&rec, domain))))
}

pub(super) async fn connect_v2(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<ConnectBody>,
) -> Result<impl IntoResponse, ApiError> {
    run(
        state,
        team,
        path,
        body.timeout.unwrap_or(CONNECT_DEFAULT_TIMEOUT_SECS),
        body.memory == Some(false),
    )
    .await
}

pub(super) async fn connect_v1(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<ConnectBody>,
) -> Result<impl IntoResponse, ApiError> {
    let timeout = body
        .timeout
        .ok_or_else(|| ApiError::BadRequest("timeout is required".into()))?;
    run(state, team, path, timeout, body.memory == Some(false)).await
}
