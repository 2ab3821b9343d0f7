//! Placeholder: the `filesystem.Filesystem` service (being written).
use axum::Router;
use crate::state::EnvdState;
/// Routes of the filesystem service.
pub fn router() -> Router<EnvdState> {
    Router::new()
}
