//! Placeholder: the `process.Process` service (being written).
use axum::Router;
use crate::state::EnvdState;
/// Registry of processes started by envd.
#[derive(Clone, Default)]
pub struct ProcessRegistry;
/// Routes of the process service.
pub fn router(_state: EnvdState, _registry: ProcessRegistry) -> Router {
    Router::new()
}
