//! HTTP file transfer `GET /files` and `POST /files` (spec 3.6). Both take the query
//! `path`, `username`, `signature`, `signature_expiration`; authorisation is the access token or
//! a `v1_` signature ([`crate::auth::authorize_files`]); errors are JSON
//! `{"code":<status>,"message":…}`.
//!
//! [`download`] streams a file out, [`upload`] streams multipart or raw (optionally gzip) bodies to
//! disk, [`metadata`] validates `X-Metadata-*` headers and [`gzip`] decodes request bodies. No
//! file is ever held in memory whole.
use paddock_envd_proto::rpc;

pub mod download;
pub mod gzip;
pub mod metadata;
pub mod upload;

use std::path::PathBuf;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::auth::{authorize_files, http_error};
use crate::state::EnvdState;
use crate::users::{resolve_path, User};

/// Routes of `/files`.
pub fn router() -> Router<EnvdState> {
    Router::new().route(rpc::FILES, get(download::download).post(upload::upload))
}

/// The query of both `/files` methods.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct FilesQuery {
    /// Client path (resolved with the user's rules); raw value is what signatures cover.
    pub path: Option<String>,
    /// Acting user; the default user when absent or empty.
    pub username: Option<String>,
    /// `v1_…` signature when no access token header is sent.
    pub signature: Option<String>,
    /// Signature expiry in unix seconds.
    pub signature_expiration: Option<i64>,
}

/// A `/files` failure with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    /// 400: bad input (directory target, bad path, bad body, bad metadata).
    #[error("{0}")]
    BadRequest(String),
    /// 401: token, signature or user rejected.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: the file does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 507: the disk is full.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

impl FilesError {
    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            FilesError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FilesError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FilesError::NotFound(_) => StatusCode::NOT_FOUND,
            FilesError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            FilesError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a write-side I/O error: a full disk (or quota) is 507, anything else 500.
    pub fn from_write(context: &str, e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                FilesError::InsufficientStorage(format!("not enough disk space: {context}: {e}"))
            }
            Some(libc::EISDIR) => FilesError::BadRequest(format!("{context}: path is a directory")),
            Some(libc::ENOTDIR) => {
                FilesError::BadRequest(format!("{context}: a parent is not a directory"))
            }
            _ => FilesError::Internal(format!("{context}: {e}")),
        }
    }
}

impl IntoResponse for FilesError {
    fn into_response(self) -> Response {
        if matches!(self, FilesError::Internal(_)) {
            tracing::warn!(error = %self, "files request failed");
        }
        http_error(self.status_code(), self.to_string())
    }
}

/// The authorised caller of a `/files` request.
#[derive(Debug, Clone)]
pub struct FilesCaller {
    /// Acting user.
    pub user: User,
    /// Default workdir for empty paths.
    pub default_workdir: Option<String>,
}

impl FilesCaller {
    /// Resolves a client path for this user (spec 3.2).
    pub fn resolve(&self, path: &str) -> Result<PathBuf, FilesError> {
        resolve_path(path, &self.user, self.default_workdir.as_deref())
            .map_err(|e| FilesError::BadRequest(format!("invalid path {path:?}: {e}")))
    }
}

/// Checks the token or signature for `operation` (`read`/`write`) and picks the user.
pub fn authorize(
    state: &EnvdState,
    headers: &HeaderMap,
    query: &FilesQuery,
    operation: &str,
) -> Result<FilesCaller, FilesError> {
    let cfg = state.config();
    let username = query.username.as_deref().filter(|u| !u.is_empty());
    authorize_files(
        cfg.access_token.as_deref(),
        headers,
        query.path.as_deref().unwrap_or(""),
        operation,
        username,
        query.signature.as_deref(),
        query.signature_expiration,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| FilesError::Unauthorized(e.to_string()))?;
    let name = username.map(str::to_string).unwrap_or(cfg.default_user);
    let user = state
        .users
        .lookup(&name)
        .map_err(|e| FilesError::Unauthorized(e.to_string()))?;
    Ok(FilesCaller {
        user,
        default_workdir: cfg.default_workdir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_map_to_statuses() {
        let status = |errno| {
            FilesError::from_write("writing", &std::io::Error::from_raw_os_error(errno))
                .status_code()
        };
        assert_eq!(status(libc::ENOSPC), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(status(libc::EDQUOT), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(status(libc::EISDIR), StatusCode::BAD_REQUEST);
        assert_eq!(status(libc::ENOTDIR), StatusCode::BAD_REQUEST);
        assert_eq!(status(libc::EIO), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn errors_render_as_envd_json() {
        let resp = FilesError::InsufficientStorage("full".into()).into_response();
        assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
    }
}
