//! `Update` (spec 3.4): resizes the terminal of a PTY process (`internal` without a PTY).

use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;

use super::messages::{Empty, UpdateRequest};
use super::{unary, Ctx};
use crate::connect::UnaryBody;

/// `POST /process.Process/Update`.
pub(super) async fn update(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
) -> Response {
    unary(&headers, &body, |req: UpdateRequest| async move {
        let process = ctx.registry.running(&req.process)?;
        if let Some(size) = req.pty.and_then(|p| p.size) {
            process.resize(size)?;
        }
        Ok(Empty {})
    })
    .await
}
