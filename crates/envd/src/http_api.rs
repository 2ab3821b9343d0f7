//! Placeholder: `/health`, `/init`, `/envs`, `/metrics` (being written).
use axum::Router;
use crate::state::EnvdState;
/// Routes of the plain HTTP API.
pub fn router() -> Router<EnvdState> {
    Router::new()
}
