//! `GET /sandboxes/{id}`: 200 with a `SandboxDetail`, 404 when unknown or not running.

use axum::extract::State;
use axum::Json;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::SandboxPath;
use crate::wire::SandboxDetail;
use crate::AppState;

pub(super) async fn get(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
) -> Result<Json<SandboxDetail>, ApiError> {
    let rec = state.core.get(&team.0, &path.0).await?;
    let lifecycle = state.core.lifecycle_of(&rec.id).await?;
    let mut detail = SandboxDetail::detail(&rec, state.core.config.domain.as_deref());
    detail.lifecycle = Some(lifecycle.into());
    let sent = state.core.sent_to_node(&rec.id).await?;
    detail.pause_mode = sent.pause_mode.map(|m| match m {
        paddock_node_contract::PauseMode::Memory => "full",
        paddock_node_contract::PauseMode::Disk => "filesystem",
    });
    Ok(Json(detail))
}
