//! `GET /files`: streams one file to the client (spec 3.6) with `Content-Disposition: inline;
//! filename=<base>`, a content type by extension or sniffing, and `Content-Length`. A directory
//! is 400, a missing file 404. The body is read in 64 KiB chunks, never loaded whole. The
//! response is always identity-encoded (acceptable for every client).

use std::io;
use std::path::Path;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::files::{authorize, FilesError, FilesQuery};
use crate::state::EnvdState;

/// Read size of download bodies.
const CHUNK: usize = 64 * 1024;
/// Bytes inspected to guess a content type.
const SNIFF_LEN: usize = 512;

/// `GET /files`.
pub async fn download(
    State(state): State<EnvdState>,
    headers: HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Response {
    match serve(&state, &headers, query).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &EnvdState,
    headers: &HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Result<Response, FilesError> {
    let Query(query) = query.map_err(|e| FilesError::BadRequest(format!("invalid query: {e}")))?;
    let caller = authorize(state, headers, &query, "read")?;
    let path = caller.resolve(query.path.as_deref().unwrap_or(""))?;
    let open_err = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => {
            FilesError::NotFound(format!("path '{}' does not exist", path.display()))
        }
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => {
            FilesError::NotFound(format!("path '{}' does not exist", path.display()))
        }
        _ => FilesError::Internal(format!("error opening '{}': {e}", path.display())),
    };
    let meta = tokio::fs::metadata(&path).await.map_err(open_err)?;
    if meta.is_dir() {
        return Err(FilesError::BadRequest(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(open_err)?;
    let len = meta.len();

    // Read a prefix for sniffing, then stream the rest; the prefix goes out first.
    let mut prefix = vec![0u8; SNIFF_LEN.min(usize::try_from(len).unwrap_or(SNIFF_LEN))];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = file.read(&mut prefix[filled..]).await.map_err(|e| {
            FilesError::Internal(format!("error reading '{}': {e}", path.display()))
        })?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    prefix.truncate(filled);
    let content_type = content_type(&path, &prefix);
    let rest = len.saturating_sub(filled as u64);
    let head = futures::stream::once(async move { Ok::<_, io::Error>(Bytes::from(prefix)) });
    let body = Body::from_stream(head.chain(ReaderStream::with_capacity(file.take(rest), CHUNK)));

    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(filled as u64 + rest),
    );
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&base)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(modified) = meta.modified() {
        let http_date =
            chrono::DateTime::<chrono::Utc>::from(modified).format("%a, %d %b %Y %H:%M:%S GMT");
        if let Ok(v) = HeaderValue::from_str(&http_date.to_string()) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    Ok(resp)
}

/// Content type by extension (Go's built-in table), else sniffed: UTF-8 text without control
/// bytes is `text/plain; charset=utf-8`, anything else `application/octet-stream`.
pub fn content_type(path: &Path, prefix: &[u8]) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let by_ext = match ext.as_deref() {
        Some("avif") => Some("image/avif"),
        Some("css") => Some("text/css; charset=utf-8"),
        Some("gif") => Some("image/gif"),
        Some("htm") | Some("html") => Some("text/html; charset=utf-8"),
        Some("jpeg") | Some("jpg") => Some("image/jpeg"),
        Some("js") | Some("mjs") => Some("text/javascript; charset=utf-8"),
        Some("json") => Some("application/json"),
        Some("pdf") => Some("application/pdf"),
        Some("png") => Some("image/png"),
        Some("svg") => Some("image/svg+xml"),
        Some("wasm") => Some("application/wasm"),
        Some("webp") => Some("image/webp"),
        Some("xml") => Some("text/xml; charset=utf-8"),
        _ => None,
    };
    by_ext.unwrap_or_else(|| {
        if looks_like_text(prefix) {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        }
    })
}

fn looks_like_text(prefix: &[u8]) -> bool {
    // A multi-byte character may be cut at the end of the prefix.
    let valid = match std::str::from_utf8(prefix) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && prefix.len() - e.valid_up_to() < 4,
    };
    valid
        && !prefix
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b))
}

/// Characters that force RFC 2231 encoding or quoting of a filename.
const RFC2231: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `inline; filename=<base>` as Go's `mime.FormatMediaType` writes it: bare token, quoted
/// string, or `filename*=utf-8''…` for non-ASCII names.
pub fn content_disposition(base: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c);
    if !base.is_empty() && base.chars().all(is_token_char) {
        format!("inline; filename={base}")
    } else if base
        .chars()
        .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
    {
        let escaped = base.replace('\\', "\\\\").replace('"', "\\\"");
        format!("inline; filename=\"{escaped}\"")
    } else {
        format!(
            "inline; filename*=utf-8''{}",
            utf8_percent_encode(base, RFC2231)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_match_go_formatting() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=a.txt");
        assert_eq!(
            content_disposition("my file.txt"),
            "inline; filename=\"my file.txt\""
        );
        assert_eq!(content_disposition("a\"b"), "inline; filename=\"a\\\"b\"");
        assert_eq!(
            content_disposition("café.txt"),
            "inline; filename*=utf-8''caf%C3%A9.txt"
        );
    }

    #[test]
    fn content_types_by_extension_or_sniffing() {
        assert_eq!(
            content_type(Path::new("/x/a.JSON"), b""),
            "application/json"
        );
        assert_eq!(
            content_type(Path::new("/x/notes"), b"hello\nworld"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("/x/blob.bin"), &[0, 1, 2, 255]),
            "application/octet-stream"
        );
        assert_eq!(
            content_type(Path::new("/x/t"), "ü".as_bytes().split_at(1).0),
            "text/plain; charset=utf-8"
        );
    }
}
