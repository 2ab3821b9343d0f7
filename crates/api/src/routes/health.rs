//! `GET /health`: 200 once the control plane serves requests (no auth).

use axum::http::StatusCode;

/// Answers 200 with an empty body.
pub(super) async fn health() -> StatusCode {
    StatusCode::OK
}
