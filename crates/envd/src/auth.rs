//! Access-token enforcement (spec 3.2): every request but `GET /health`, `/files` and `POST /init`
//! must carry `X-Access-Token` when a token is set; `/files` may instead carry a `v1_` signature,
//! which [`verify_signature`] checks. Failures are 401 with a JSON body and an integer `code`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state::EnvdState;

/// A plain-HTTP JSON error `{"code":<status>,"message":…}` as envd's HTTP endpoints send it.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message.into() });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Constant-time token comparison.
pub fn token_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The `X-Access-Token` header, if present.
pub fn header_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-access-token").and_then(|v| v.to_str().ok())
}

/// Middleware: rejects requests without the right token, except the exempt paths.
pub async fn require_token(State(state): State<EnvdState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == "/health" || path == "/files" || path == "/init";
    if !exempt {
        if let Some(expected) = state.config().access_token {
            let ok = header_token(req.headers()).is_some_and(|t| token_matches(&expected, t));
            if !ok {
                return http_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized access, please provide a valid access token (X-Access-Token header)",
                );
            }
        }
    }
    next.run(req).await
}

/// Computes a `v1_` signature (spec 3.2) for `path`, `operation` (`read`/`write`), `username`
/// (empty when not given), the access token and an optional expiry (unix seconds).
pub fn sign(
    path: &str,
    operation: &str,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{operation}:{username}:{token}:{exp}"),
        None => format!("{path}:{operation}:{username}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Why a `/files` request was not authorised.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesAuthError {
    /// `X-Access-Token` present but wrong.
    #[error("invalid access token")]
    BadToken,
    /// Neither token nor signature.
    #[error("missing signature: provide X-Access-Token or a signed URL")]
    MissingSignature,
    /// Signature expired.
    #[error("signature has expired")]
    Expired,
    /// Signature does not match.
    #[error("invalid signature")]
    BadSignature,
}

/// Authorises a `/files` request (spec 3.2). `now` is unix seconds.
#[allow(clippy::too_many_arguments)] // each argument is one field of the spec's rule
pub fn authorize_files(
    expected_token: Option<&str>,
    headers: &HeaderMap,
    path: &str,
    operation: &str,
    username: Option<&str>,
    signature: Option<&str>,
    expiration: Option<i64>,
    now: i64,
) -> Result<(), FilesAuthError> {
    let Some(expected) = expected_token else {
        return Ok(());
    };
    if let Some(t) = header_token(headers) {
        return if token_matches(expected, t) {
            Ok(())
        } else {
            Err(FilesAuthError::BadToken)
        };
    }
    let sig = signature.ok_or(FilesAuthError::MissingSignature)?;
    if let Some(exp) = expiration {
        if exp < now {
            return Err(FilesAuthError::Expired);
        }
    }
    let want = sign(
        path,
        operation,
        username.unwrap_or(""),
        expected,
        expiration,
    );
    if token_matches(&want, sig) {
        Ok(())
    } else {
        Err(FilesAuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_expire() {
        let h = HeaderMap::new();
        let sig = sign("/x", "read", "root", "tok", Some(100));
        assert!(sig.starts_with("v1_"));
        assert_eq!(
            authorize_files(
                Some("tok"),
                &h,
                "/x",
                "read",
                Some("root"),
                Some(&sig),
                Some(100),
                50
            ),
            Ok(())
        );
        assert_eq!(
            authorize_files(
                Some("tok"),
                &h,
                "/x",
                "read",
                Some("root"),
                Some(&sig),
                Some(100),
                101
            ),
            Err(FilesAuthError::Expired)
        );
        assert_eq!(
            authorize_files(
                Some("tok"),
                &h,
                "/x",
                "write",
                Some("root"),
                Some(&sig),
                Some(100),
                50
            ),
            Err(FilesAuthError::BadSignature)
        );
        assert_eq!(
            authorize_files(Some("tok"), &h, "/x", "read", None, None, None, 50),
            Err(FilesAuthError::MissingSignature)
        );
        assert_eq!(
            authorize_files(None, &h, "/x", "read", None, None, None, 50),
            Ok(())
        );
    }

    #[test]
    fn header_token_wins_over_signature() {
        let mut h = HeaderMap::new();
        h.insert("x-access-token", HeaderValue::from_static("bad"));
        assert_eq!(
            authorize_files(Some("tok"), &h, "/x", "read", None, None, None, 0),
            Err(FilesAuthError::BadToken)
        );
    }
}
