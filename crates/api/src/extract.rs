//! Request extractors: [`Json`], which turns every malformed body into a 400 with the E2B error
//! body (an empty body counts as `{}`; the content type is not enforced), and [`SandboxPath`],
//! which parses the `{sandboxID}` path segment (an id that cannot exist is simply not found).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use paddock_domain::SandboxId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body whose rejection is an [`ApiError::BadRequest`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::BadRequest(format!("cannot read request body: {}", e.body_text()))
        })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body)
            .map(Json)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// The `{sandboxID}` path parameter, parsed with [`SandboxId::parse`]. An unparseable id is a
/// 404 `sandbox '<raw>' not found`, like any unknown id: the SDKs map 404 to "not found"
/// (`kill` returns false, `connect` raises `SandboxNotFoundException`).
#[derive(Debug, Clone)]
pub struct SandboxPath(pub SandboxId);

impl<S: Send + Sync> FromRequestParts<S> for SandboxPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        SandboxId::parse(&raw)
            .map(SandboxPath)
            .map_err(|_| ApiError::NotFound(format!("sandbox '{raw}' not found")))
    }
}
