//! `GET /files`: streams one file to the client (spec 3.6) with `Content-Disposition: inline;
//! filename=<base>` and a content type by extension or sniffing. A directory is 400, a missing
//! file 404.
//!
//! The body is the file read to its end, never `st_size` bytes: files of `/proc` and `/sys` (and
//! FIFOs, devices) report a size of 0 or 4096 whatever they hold. `Content-Length` is sent only
//! when it is known to be right: the file ended within the first chunk read, or it is a regular
//! file on a disk-backed file system (then the body is its size at open time, and single byte
//! ranges are served as 206). Otherwise the body is chunked. As E2B's envd does, the body is
//! gzip-compressed (`Content-Encoding: gzip`, chunked) when `Accept-Encoding` prefers gzip,
//! except for range and conditional requests, which are answered in identity encoding.
//!
//! Files are opened and read on blocking threads (`spawn_blocking`, `tokio::fs`), never on the
//! async workers; the open does not wait for a FIFO's writer. The body is read in 64 KiB chunks
//! as the client consumes it, never loaded whole.

use std::fs::OpenOptions;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::SystemTime;

use async_compression::tokio::bufread::GzipEncoder;
use async_compression::Level;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::auth::http_error;
use crate::files::{authorize, FilesError, FilesQuery};
use crate::state::EnvdState;

/// Read size of download bodies, and of the first read that may find the whole file.
const CHUNK: usize = 64 * 1024;
/// Bytes inspected to guess a content type.
const SNIFF_LEN: usize = 512;

/// File systems whose regular files report a size (`st_size`) that is not their content's
/// length: procfs, sysfs, debugfs, tracefs, cgroup v1 and v2, securityfs, configfs, efivarfs,
/// bpffs, pstore, FUSE (e.g. `direct_io` mounts).
const SIZELESS_FS: [u32; 12] = [
    0x0000_9fa0, // proc
    0x6265_6572, // sysfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x7363_6673, // securityfs
    0x6265_6570, // configfs
    0xde5e_81e4, // efivarfs
    0xcafe_4a11, // bpf
    0x6165_676c, // pstore
    0x6573_5546, // fuse
];

/// The content coding of a download body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As stored.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

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

/// An opened file, with what `fstat` and `fstatfs` said about it.
struct Opened {
    file: std::fs::File,
    modified: Option<SystemTime>,
    /// `st_size`, when it is the length of the content (a regular file on a file system that
    /// keeps sizes); `None` when only reading to the end tells.
    size: Option<u64>,
}

/// Opens `path` for reading without waiting for a FIFO's writer and without acquiring a
/// controlling terminal; a directory is `EISDIR`.
fn open_file(path: &Path) -> io::Result<Opened> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // Reads block again (a FIFO's reader then waits for data rather than failing with EAGAIN).
    let fd = file.as_raw_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let size = if meta.file_type().is_file() && !sizeless_fs(&file) {
        Some(meta.len())
    } else {
        None
    };
    Ok(Opened {
        modified: meta.modified().ok(),
        file,
        size,
    })
}

/// Whether the file lives on a file system whose sizes are not content lengths (an unknown
/// file system type counts as one: reading to the end is always right).
fn sizeless_fs(file: &std::fs::File) -> bool {
    match nix::sys::statfs::fstatfs(file) {
        // The magic is a 32-bit value, stored sign-extended or not depending on the libc.
        Ok(fs) => SIZELESS_FS.contains(&(fs.filesystem_type().0 as u32)),
        Err(_) => true,
    }
}

/// Reads until `buf` holds `max` bytes or the file ends; returns whether it ended.
fn read_head(file: &mut std::fs::File, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = vec![0u8; max];
    let mut filled = 0;
    while filled < max {
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok((buf, true));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((buf, false))
}

/// What the blocking part of a download prepared.
struct Prepared {
    file: std::fs::File,
    modified: Option<SystemTime>,
    size: Option<u64>,
    /// Bytes for content sniffing (the file's first bytes).
    sniff: Vec<u8>,
    /// What to send before the rest of the file (empty for a range).
    head: Vec<u8>,
    /// Whether `head` is the whole file.
    ended: bool,
    /// A satisfiable single range (first, last byte), the file positioned at its start.
    range: Option<(u64, u64)>,
    /// The range asked for cannot be satisfied (416).
    unsatisfiable: bool,
}

/// Opens the file and reads its head (or positions it at the requested range), on a blocking
/// thread.
fn prepare(path: &Path, range: Option<&str>) -> io::Result<Prepared> {
    let Opened {
        mut file,
        modified,
        size,
    } = open_file(path)?;
    let mut prepared = Prepared {
        file,
        modified,
        size,
        sniff: Vec::new(),
        head: Vec::new(),
        ended: false,
        range: None,
        unsatisfiable: false,
    };
    if let (Some(spec), Some(size)) = (range, size) {
        match parse_range(spec, size) {
            RangeSpec::Whole => {}
            RangeSpec::Unsatisfiable => {
                prepared.unsatisfiable = true;
                return Ok(prepared);
            }
            RangeSpec::Bytes(first, last) => {
                let mut sniff = vec![0u8; SNIFF_LEN];
                let n = prepared.file.read_at(&mut sniff, 0)?;
                sniff.truncate(n);
                prepared.file.seek(SeekFrom::Start(first))?;
                prepared.sniff = sniff;
                prepared.range = Some((first, last));
                return Ok(prepared);
            }
        }
    }
    file = prepared.file;
    let (head, ended) = read_head(&mut file, CHUNK)?;
    prepared.file = file;
    prepared.sniff = head[..head.len().min(SNIFF_LEN)].to_vec();
    prepared.head = head;
    prepared.ended = ended;
    Ok(prepared)
}

async fn serve(
    state: &EnvdState,
    headers: &HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Result<Response, FilesError> {
    let Query(query) = query.map_err(|e| FilesError::BadRequest(format!("invalid query: {e}")))?;
    let caller = authorize(state, headers, &query, "read")?;
    let path = caller.resolve(query.path.as_deref().unwrap_or(""))?;

    // Range and conditional requests are answered in identity encoding (as E2B's envd does:
    // a server may always ignore Accept-Encoding). A range with If-Range is served whole.
    let has = |name: header::HeaderName| headers.contains_key(name);
    let conditional = has(header::RANGE)
        || has(header::IF_MODIFIED_SINCE)
        || has(header::IF_NONE_MATCH)
        || has(header::IF_RANGE);
    let range = headers
        .get(header::RANGE)
        .filter(|_| !has(header::IF_RANGE))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let target = path.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&target, range.as_deref()))
        .await
        .map_err(|e| FilesError::Internal(format!("download task failed: {e}")))?
        .map_err(|e| open_error(&path, e))?;
    let encoding = accept_encoding(headers)
        .map_err(|e| FilesError::BadRequest(format!("error parsing Accept-Encoding: {e}")))?;
    let encoding = if conditional {
        Encoding::Identity
    } else {
        encoding
    };

    let content_type = content_type(&path, &prepared.sniff);
    let Prepared {
        file,
        modified,
        size,
        head,
        ended,
        range,
        unsatisfiable,
        ..
    } = prepared;
    if unsatisfiable {
        let mut resp = http_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("invalid range: the file has {} bytes", size.unwrap_or(0)),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", size.unwrap_or(0))) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return Ok(resp);
    }

    let file = tokio::fs::File::from_std(file);
    let head_len = head.len() as u64;
    let head = futures::stream::iter([Ok::<_, io::Error>(Bytes::from(head))]);
    let mut status = StatusCode::OK;
    let mut extra: Vec<(header::HeaderName, HeaderValue)> = Vec::new();
    let body = match (encoding, range) {
        (_, Some((first, last))) => {
            let len = last - first + 1;
            status = StatusCode::PARTIAL_CONTENT;
            let total = size.unwrap_or(0);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{total}")) {
                extra.push((header::CONTENT_RANGE, v));
            }
            extra.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
            Body::from_stream(ReaderStream::with_capacity(file.take(len), CHUNK))
        }
        (Encoding::Gzip, None) => {
            extra.push((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")));
            let plain = head.chain(ReaderStream::with_capacity(file, CHUNK));
            Body::from_stream(gzip(plain))
        }
        (Encoding::Identity, None) if ended => {
            extra.push((header::CONTENT_LENGTH, HeaderValue::from(head_len)));
            Body::from_stream(head)
        }
        (Encoding::Identity, None) => match size.filter(|&s| s >= head_len) {
            // A regular file on a disk: its size at open time is the body (a file growing
            // meanwhile is cut there, so the length stays right).
            Some(size) => {
                extra.push((header::CONTENT_LENGTH, HeaderValue::from(size)));
                let rest = ReaderStream::with_capacity(file.take(size - head_len), CHUNK);
                Body::from_stream(head.chain(rest))
            }
            // Only its end tells its length: chunked.
            None => Body::from_stream(head.chain(ReaderStream::with_capacity(file, CHUNK))),
        },
    };

    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    for (name, value) in extra {
        h.insert(name, value);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if size.is_some() {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&base)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(modified) = modified {
        let http_date =
            chrono::DateTime::<chrono::Utc>::from(modified).format("%a, %d %b %Y %H:%M:%S GMT");
        if let Ok(v) = HeaderValue::from_str(&http_date.to_string()) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    Ok(resp)
}

/// Maps an error opening or first reading `path`.
fn open_error(path: &Path, e: io::Error) -> FilesError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            FilesError::NotFound(format!("path '{}' does not exist", path.display()))
        }
        Some(libc::EISDIR) => {
            FilesError::BadRequest(format!("path '{}' is a directory", path.display()))
        }
        Some(libc::ENXIO) => FilesError::BadRequest(format!(
            "path '{}' cannot be read (a socket, or a device without a driver)",
            path.display()
        )),
        _ => FilesError::Internal(format!("error reading '{}': {e}", path.display())),
    }
}

/// Gzip-compresses a stream of chunks as it is consumed. The fastest level: the sandbox's CPU
/// is the user's, and most readers sit on the same host (E2B's envd uses Go's default level 6).
fn gzip<S>(plain: S) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let encoder = GzipEncoder::with_quality(StreamReader::new(plain), Level::Fastest);
    ReaderStream::with_capacity(encoder, CHUNK)
}

/// A parsed `Range` header against a file of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve the whole file (no usable single range: unknown unit, bad syntax, several ranges).
    Whole,
    /// One satisfiable range, first and last byte (inclusive).
    Bytes(u64, u64),
    /// A well-formed range that starts past the end (416).
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` (RFC 9110 14.1.2); anything else is served
/// whole, which the RFC allows.
pub fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    if first.is_empty() {
        // A suffix: the last n bytes.
        return match num(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Bytes(size.saturating_sub(n), size - 1),
            None => RangeSpec::Whole,
        };
    }
    let Some(first) = num(first) else {
        return RangeSpec::Whole;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match num(last) {
            Some(l) if l >= first => l,
            _ => return RangeSpec::Whole,
        }
    };
    if first >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(first, last.min(size - 1))
}

/// The encoding `Accept-Encoding` asks for, E2B's way: codings by descending quality, `q=0`
/// refuses one; `identity` (always acceptable unless refused) or gzip; `*` means gzip only when
/// identity is refused. An error when identity is refused and gzip is not accepted.
pub fn accept_encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    let mut offers: Vec<(String, f64)> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let mut parts = v.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    let p = p.trim();
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f64>().ok())
                        .flatten()
                })
                .next_back()
                .unwrap_or(1.0);
            (coding, q)
        })
        .collect();
    if offers.is_empty() {
        return Ok(Encoding::Identity);
    }
    offers.sort_by(|a, b| b.1.total_cmp(&a.1));
    let identity_refused = offers.iter().any(|(c, q)| c == "identity" && *q == 0.0);
    for (coding, q) in &offers {
        if *q == 0.0 {
            continue;
        }
        match coding.as_str() {
            "identity" => return Ok(Encoding::Identity),
            "*" if identity_refused => return Ok(Encoding::Gzip),
            "*" => return Ok(Encoding::Identity),
            "gzip" => return Ok(Encoding::Gzip),
            _ => {}
        }
    }
    if identity_refused {
        Err("no acceptable encoding found, supported: [gzip]".into())
    } else {
        Ok(Encoding::Identity)
    }
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
    fn ranges_parse_as_rfc_9110_single_ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Bytes(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        for whole in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "bytes=",
            "bytes=-",
        ] {
            assert_eq!(parse_range(whole, 100), Whole, "{whole}");
        }
    }

    #[test]
    fn accept_encoding_is_negotiated_as_e2b_does() {
        let pick = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("value"),
            );
            accept_encoding(&h)
        };
        assert_eq!(accept_encoding(&HeaderMap::new()), Ok(Encoding::Identity));
        assert_eq!(pick("gzip"), Ok(Encoding::Gzip));
        assert_eq!(pick("gzip, deflate, br, zstd"), Ok(Encoding::Gzip));
        assert_eq!(pick("GZIP;q=0.5"), Ok(Encoding::Gzip));
        assert_eq!(pick("br"), Ok(Encoding::Identity));
        assert_eq!(pick("identity"), Ok(Encoding::Identity));
        assert_eq!(pick("identity;q=1, gzip;q=0.5"), Ok(Encoding::Identity));
        assert_eq!(pick("gzip;q=0"), Ok(Encoding::Identity));
        assert_eq!(pick("*"), Ok(Encoding::Identity));
        assert_eq!(pick("*, identity;q=0"), Ok(Encoding::Gzip));
        assert!(pick("br, identity;q=0").is_err());
    }

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
