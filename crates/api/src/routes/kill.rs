//! `DELETE /sandboxes/{id}`: 204 once killed, 404 when unknown or already stopped.

use axum::extract::State;
use axum::http::StatusCode;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::SandboxPath;
use crate::AppState;

pub(super) async fn kill(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
) -> Result<StatusCode, ApiError> {
    state.core.kill(&team.0, &path.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
