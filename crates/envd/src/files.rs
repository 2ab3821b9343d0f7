//! Placeholder: HTTP `/files` (being written).
use axum::Router;
use crate::state::EnvdState;
/// Routes of `/files`.
pub fn router() -> Router<EnvdState> {
    Router::new()
}
