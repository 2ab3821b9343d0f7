//! `PUT /sandboxes/{id}/network`: 204 once the new egress policy is in force.

use axum::extract::State;
use axum::http::StatusCode;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::{Json, SandboxPath};
use crate::wire::NetworkBody;
use crate::AppState;

pub(super) async fn update(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    Json(body): Json<NetworkBody>,
) -> Result<StatusCode, ApiError> {
    state.core.update_network(&team.0, &path.0, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}
