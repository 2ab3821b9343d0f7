//! `POST /files`: writes uploaded files (spec 3.6). Bodies are `multipart/form-data` (parts
//! named `file`, the part's filename is the full destination unless query `path` overrides it)
//! or a raw `application/octet-stream` body for query `path`; `Content-Encoding: gzip` is
//! inflated on the fly. Every file is streamed to disk: missing parents are created for the
//! acting user, the target is truncated and chowned to the user, and its `user.e2b.*` metadata
//! is replaced by the request's `X-Metadata-*` headers.
//!
//! Whatever the handler leaves of the body (the epilogue after a multipart body's final
//! boundary, or the rest after an early error) is read and dropped before the response goes
//! out, up to [`DRAIN_CAP`] bytes: the HTTP server closes a connection whose request it did not
//! read to the end, and a client (or the proxy) still writing that body would see a broken pipe
//! instead of the answer.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::fchown;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::files::gzip::gunzip;
use crate::files::metadata::parse_metadata;
use crate::files::{authorize, FilesCaller, FilesError, FilesQuery};
use crate::filesystem::entry::replace_metadata;
use crate::filesystem::make_dir::ensure_dirs;
use crate::state::EnvdState;

/// A request body as a stream of (decoded) chunks.
type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Most bytes of an unread body rest that are read (and dropped) after handling.
pub const DRAIN_CAP: usize = 1 << 20;
/// Longest wait for that rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The raw request body, shared between the handler (which may stop reading early) and the
/// drain after it. One consumer at a time: the lock is held only within one poll.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<BodyStream>>);

impl SharedBody {
    fn new(body: Body) -> Self {
        SharedBody(Arc::new(Mutex::new(Box::pin(
            body.into_data_stream().map_err(io::Error::other),
        ))))
    }

    /// Reads the rest of the body, up to `cap` bytes and [`DRAIN_TIMEOUT`].
    async fn drain(mut self, cap: usize) {
        let mut left = cap;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(Ok(chunk)) = self.next().await {
                if chunk.len() >= left {
                    break;
                }
                left -= chunk.len();
            }
        })
        .await;
    }
}

impl Stream for SharedBody {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

/// One written file, as the SDKs expect it in the response array.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WrittenFile {
    /// Absolute path.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Always `file`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The metadata stored with the file, when any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `POST /files`.
pub async fn upload(
    State(state): State<EnvdState>,
    headers: HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let raw = SharedBody::new(body);
    let result = handle(&state, &headers, query, raw.clone()).await;
    raw.drain(DRAIN_CAP).await;
    match result {
        Ok(written) => {
            let mut resp = (
                StatusCode::OK,
                serde_json::to_string(&written).unwrap_or_else(|_| "[]".into()),
            )
                .into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &EnvdState,
    headers: &HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
    body: SharedBody,
) -> Result<Vec<WrittenFile>, FilesError> {
    let Query(query) = query.map_err(|e| FilesError::BadRequest(format!("invalid query: {e}")))?;
    let caller = authorize(state, headers, &query, "write")?;
    let metadata = parse_metadata(headers)?;
    let stream = decoded_body(headers, body)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let query_path = query.path.as_deref().filter(|p| !p.is_empty());
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "multipart/form-data" => multipart(&caller, query_path, content_type, stream, &metadata).await,
        "" | "application/octet-stream" => {
            let dest = query_path
                .ok_or_else(|| FilesError::BadRequest("query parameter 'path' is required for raw uploads".into()))?;
            let path = caller.resolve(dest)?;
            Ok(vec![write_file(&caller, &path, stream, &metadata).await?])
        }
        other => Err(FilesError::BadRequest(format!(
            "unsupported content type {other:?}: use multipart/form-data or application/octet-stream"
        ))),
    }
}

/// The body stream, inflated when `Content-Encoding: gzip`.
fn decoded_body(headers: &HeaderMap, raw: SharedBody) -> Result<BodyStream, FilesError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(Box::pin(raw)),
        "gzip" | "x-gzip" => Ok(Box::pin(gunzip(raw))),
        other => Err(FilesError::BadRequest(format!(
            "unsupported Content-Encoding {other:?}: only gzip is accepted"
        ))),
    }
}

async fn multipart(
    caller: &FilesCaller,
    query_path: Option<&str>,
    content_type: &str,
    stream: BodyStream,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<WrittenFile>, FilesError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| FilesError::BadRequest(format!("invalid multipart body: {e}")))?;
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut seen = HashSet::new();
    let mut written = Vec::new();
    while let Some(field) = parts
        .next_field()
        .await
        .map_err(|e| FilesError::BadRequest(format!("invalid multipart body: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let dest = match query_path.or(field.file_name()) {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => {
                return Err(FilesError::BadRequest(
                    "file part has no filename and no 'path' was given".into(),
                ))
            }
        };
        let path = caller.resolve(&dest)?;
        if !seen.insert(path.clone()) {
            return Err(FilesError::BadRequest(format!(
                "path '{}' is uploaded more than once",
                path.display()
            )));
        }
        let data = field.map_err(io::Error::other);
        written.push(write_file(caller, &path, data, metadata).await?);
    }
    if written.is_empty() {
        return Err(FilesError::BadRequest(
            "the multipart body contains no part named 'file'".into(),
        ));
    }
    Ok(written)
}

/// Streams `data` into `path` for the caller: parents, truncation, ownership, metadata.
pub async fn write_file<S>(
    caller: &FilesCaller,
    path: &Path,
    data: S,
    metadata: &BTreeMap<String, String>,
) -> Result<WrittenFile, FilesError>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let (uid, gid) = (caller.user.uid, caller.user.gid);
    let target = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || open_for_user(&target, uid, gid))
        .await
        .map_err(|e| FilesError::Internal(format!("upload task failed: {e}")))??;
    let mut file = tokio::fs::File::from_std(file);
    let mut data = std::pin::pin!(data);
    while let Some(chunk) = data.next().await {
        let chunk = chunk
            .map_err(|e| FilesError::BadRequest(format!("error reading the request body: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| FilesError::from_write(&format!("writing '{}'", path.display()), &e))?;
    }
    file.flush()
        .await
        .map_err(|e| FilesError::from_write(&format!("writing '{}'", path.display()), &e))?;
    drop(file);

    let target = path.to_path_buf();
    let md = metadata.clone();
    tokio::task::spawn_blocking(move || replace_metadata(&target, &md))
        .await
        .map_err(|e| FilesError::Internal(format!("upload task failed: {e}")))?
        .map_err(|e| {
            FilesError::from_write(&format!("storing metadata of '{}'", path.display()), &e)
        })?;
    Ok(WrittenFile {
        path: path.to_string_lossy().into_owned(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
        metadata: metadata.clone(),
    })
}

/// Creates the parents (owned by the user), refuses directories, and opens the target truncated
/// and owned by the user.
fn open_for_user(path: &Path, uid: u32, gid: u32) -> Result<std::fs::File, FilesError> {
    let context = |what: &str| format!("{what} '{}'", path.display());
    if let Some(parent) = path.parent() {
        ensure_dirs(parent, uid, gid)
            .map_err(|e| FilesError::from_write(&context("creating parents of"), &e))?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(FilesError::BadRequest(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| FilesError::from_write(&context("opening"), &e))?;
    fchown(&file, Some(uid), Some(gid))
        .map_err(|e| FilesError::from_write(&context("changing owner of"), &e))?;
    Ok(file)
}
