//! `POST /sandboxes/{id}/pause` and `/resume`: pause/resume is later work, so both answer 501
//! with a clear E2B error body (after the usual 404 for unknown sandboxes).

use axum::extract::State;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::SandboxPath;
use crate::lifecycle::Error;
use crate::AppState;

pub(super) async fn pause(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
) -> Result<(), ApiError> {
    state.core.get(&team.0, &path.0).await?;
    Err(Error::NotImplemented("pausing sandboxes").into())
}

pub(super) async fn resume(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
) -> Result<(), ApiError> {
    state.core.get(&team.0, &path.0).await?;
    Err(Error::NotImplemented("resuming sandboxes").into())
}
