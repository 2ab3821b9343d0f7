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
    headers
        .get(paddock_envd_proto::headers::ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
}

/// E2B envd's 401 text for a request without the right `X-Access-Token`, word for word.
pub const UNAUTHORIZED_MESSAGE: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// Middleware: rejects requests without the right token, except the exempt paths.
pub async fn require_token(State(state): State<EnvdState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == "/health" || path == "/files" || path == "/init";
    if !exempt {
        if let Some(expected) = state.config().access_token {
            let ok = header_token(req.headers()).is_some_and(|t| token_matches(&expected, t));
            if !ok {
                return http_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE);
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

/// Why a `/files` request was not authorised. The messages are E2B envd's, word for word (the
/// SDKs and E2B's own tests match on them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesAuthError {
    /// `X-Access-Token` present but wrong.
    #[error("access token present in header but does not match")]
    BadToken,
    /// Neither token nor signature.
    #[error("missing signature query parameter")]
    MissingSignature,
    /// Signature valid but expired (checked after the signature itself, as E2B does, so a forged
    /// signature is "invalid" whatever its expiry).
    #[error("signature is already expired")]
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
    let want = sign(
        path,
        operation,
        username.unwrap_or(""),
        expected,
        expiration,
    );
    if !token_matches(&want, sig) {
        return Err(FilesAuthError::BadSignature);
    }
    match expiration {
        Some(exp) if exp < now => Err(FilesAuthError::Expired),
        _ => Ok(()),
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
    fn messages_are_e2b_envds() {
        let h = HeaderMap::new();
        let sig = sign("/x", "read", "", "tok", Some(100));
        let check = |sig: Option<&str>, exp: Option<i64>| {
            authorize_files(Some("tok"), &h, "/x", "read", None, sig, exp, 101)
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(check(Some(&sig), Some(100)), "signature is already expired");
        assert_eq!(check(Some("v1_forged"), Some(100)), "invalid signature");
        assert_eq!(check(Some(&sig), None), "invalid signature");
        assert_eq!(check(None, None), "missing signature query parameter");
        let mut bad = HeaderMap::new();
        bad.insert("x-access-token", HeaderValue::from_static("bad"));
        assert_eq!(
            authorize_files(Some("tok"), &bad, "/x", "read", None, None, None, 0)
                .expect_err("refused")
                .to_string(),
            "access token present in header but does not match"
        );
    }

    #[test]
    fn forged_signature_is_invalid_whatever_its_expiry() {
        let h = HeaderMap::new();
        let forged = sign("/x", "read", "", "not-the-token", Some(100));
        assert_eq!(
            authorize_files(
                Some("tok"),
                &h,
                "/x",
                "read",
                None,
                Some(&forged),
                Some(100),
                101
            ),
            Err(FilesAuthError::BadSignature)
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
