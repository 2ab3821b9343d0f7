//! [`ApiError`]: every failure the REST API reports, with its HTTP status and the E2B error body
//! `{"code": <status>, "message": "..."}`. Details of 5xx failures are logged, never sent, except
//! for a failed create whose reason the client needs.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::lifecycle::Error as LifecycleError;

/// Seconds a client should wait before retrying when the node is busy (429 and 503).
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// A REST API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed input; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or unknown API key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the operation is not allowed on this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown template, sandbox or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the sandbox is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// 429 with `Retry-After`: too many creates in flight, or the node is full; the message
    /// names the limit.
    #[error("{0}")]
    TooManyRequests(String),
    /// 501: a feature Paddock does not have yet.
    #[error("{0}")]
    NotImplemented(String),
    /// 503 with `Retry-After`: shutting down, or a pause or resume failed on the node.
    #[error("{0}")]
    Unavailable(String),
    /// 500 whose reason is sent to the client (sandbox creation failed).
    #[error("{0}")]
    CreateFailed(String),
    /// 500 with a generic message; the source is logged.
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::CreateFailed(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `error` and its sources, joined with `: `.
pub(crate) use paddock_domain::error_chain as chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = match &self {
            ApiError::Internal(source) => {
                tracing::error!(error = %chain(source.as_ref()), "internal error");
                "internal server error".to_string()
            }
            ApiError::CreateFailed(reason) => {
                tracing::error!(reason = %reason, "sandbox creation failed");
                reason.clone()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            code: status.as_u16(),
            message: &message,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            let headers = response.headers_mut();
            headers.insert("retry-after", HeaderValue::from(BUSY_RETRY_AFTER_SECS));
            headers.insert("should-retry", HeaderValue::from_static("true"));
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(err: LifecycleError) -> Self {
        match err {
            LifecycleError::Invalid(msg) => ApiError::BadRequest(msg),
            e @ (LifecycleError::TemplateNotFound(_)
            | LifecycleError::SandboxNotFound(_)
            | LifecycleError::BuildNotFound(_)) => ApiError::NotFound(e.to_string()),
            e @ LifecycleError::NotImplemented(_) => ApiError::NotImplemented(e.to_string()),
            // The node's message says what ran out ("node is at capacity: ...", "no ready
            // node can take a sandbox").
            LifecycleError::Busy(msg) => ApiError::TooManyRequests(msg),
            e @ LifecycleError::Saturated(_) => ApiError::TooManyRequests(e.to_string()),
            e @ LifecycleError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            LifecycleError::TemplatePreparing(msg) => ApiError::Unavailable(msg),
            e @ LifecycleError::StoppedDuringCreate(_) => ApiError::Conflict(e.to_string()),
            LifecycleError::Conflict(msg) => ApiError::Conflict(msg),
            LifecycleError::Forbidden(msg) => ApiError::Forbidden(msg),
            e @ LifecycleError::PauseFailed(_) => ApiError::Unavailable(e.to_string()),
            e @ LifecycleError::CreateFailed(_) => ApiError::CreateFailed(e.to_string()),
            // A node (or, in a cluster, every node) could not be reached: retry later.
            LifecycleError::Node(e) if e.is(paddock_node_contract::ErrorCode::Unavailable) => {
                ApiError::Unavailable(e.message)
            }
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_mapping() {
        let e: ApiError = LifecycleError::TemplateNotFound("x".into()).into();
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(e.to_string(), "template 'x' not found");
        let e: ApiError = LifecycleError::Busy("full".into()).into();
        assert_eq!(e.status_code(), StatusCode::TOO_MANY_REQUESTS);
        let response = e.into_response();
        assert_eq!(response.headers()["retry-after"], "1");
        let e: ApiError =
            LifecycleError::Saturated(crate::AdmissionRejected::Team { limit: 3 }).into();
        assert_eq!(e.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("limit 3"), "{e}");
        let response = e.into_response();
        assert_eq!(response.headers()["retry-after"], "1");
        let e: ApiError = LifecycleError::ShuttingDown.into();
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.into_response().headers()["retry-after"], "1");
    }

    #[test]
    fn chain_joins_sources() {
        let inner = std::io::Error::other("disk on fire");
        let outer = LifecycleError::Store(crate::store::StoreError::Io {
            path: "/x".into(),
            source: inner,
        });
        assert_eq!(
            chain(&outer),
            "store request failed: cannot prepare database at /x: disk on fire"
        );
    }
}
