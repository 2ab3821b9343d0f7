//! A client of one sandbox's envd, reached through its Unix socket on the host: runs processes
//! (`process.Process/Start`, E2B's Connect protocol with the JSON codec), writes files
//! (`POST /files`) and hands a warm sandbox to its user (`POST /init`). The template builder,
//! create's start and ready commands and the warm pools use it.
//!
//! Owns: one HTTP/1.1 connection per call, opened without following a symlink (the socket's
//! directory is writable from inside the sandbox, see [`EnvdClient`]); the framing of Connect
//! responses; the mapping of envd's answers to [`EnvdClientError`]. Does not own deadlines:
//! [`EnvdClient::run`] waits as long as the process runs, so callers bound it with
//! `tokio::time::timeout`. Only setting a call up is bounded, by [`SETUP_TIMEOUT`].
//!
//! Task boundaries: each call spawns the task that drives its connection and aborts it when the
//! call (or its future) is dropped, so nothing outlives a call. envd keeps a process running
//! when the stream that started it goes away (it only detaches the stream), which is what
//! [`EnvdClient::spawn`] relies on; it also means that dropping [`EnvdClient::run`] early leaves
//! the process running in the sandbox.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use paddock_envd::connect::{envelope, pbjson, COMPRESSED_FLAG, END_STREAM_FLAG};
use paddock_envd::process::messages::{Base64, ProcessConfig};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::net::UnixStream;

/// How long connecting to envd, and for a process envd's answer to `Start` (sent once the
/// process is spawned, normally within milliseconds), may take before envd counts as dead.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Connect message accepted from envd (its output chunks are a few KiB).
const MAX_MESSAGE: usize = 16 << 20;
/// Most bytes of an error answer's body kept for [`EnvdClientError::Http`].
const MAX_ERROR_BODY: usize = 64 << 10;
/// Read size of file uploads.
const UPLOAD_CHUNK: usize = 256 << 10;
/// The `Start` RPC of envd's process service.
const START_PATH: &str = "/process.Process/Start";

/// What to run in the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Executable; looked up in the sandbox's `PATH` when it has no slash.
    pub cmd: String,
    /// Arguments after the executable.
    pub args: Vec<String>,
    /// The user to run as (a name in the sandbox's `/etc/passwd`); empty for envd's default
    /// user.
    pub user: String,
    /// Working directory; `None` for envd's default (the template's workdir, else the user's
    /// home). Relative paths are resolved against the user's home.
    pub cwd: Option<String>,
    /// Environment variables on top of the sandbox's own (for a repeated name, the last wins).
    pub envs: Vec<(String, String)>,
    /// A tag envd's `List`/`Connect` can select the process by.
    pub tag: Option<String>,
}

impl ProcessSpec {
    /// `command` run by a login bash (`/bin/bash -l -c <command>`), as the E2B SDKs'
    /// `commands.run` starts commands, as `user`.
    pub fn shell(command: &str, user: &str) -> Self {
        ProcessSpec {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), command.into()],
            user: user.into(),
            ..Default::default()
        }
    }
}

/// Which output of a process a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a process ended, as envd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code; -1 when the process was killed by a signal.
    pub exit_code: i32,
    /// envd's status text: `exit status 1`, `signal: killed`.
    pub status: String,
    /// envd's error text for unsuccessful ends (e.g. an out-of-memory kill).
    pub error: Option<String>,
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.error.is_none()
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(error) if *error != self.status => write!(f, "{} ({error})", self.status),
            _ => f.write_str(&self.status),
        }
    }
}

/// Why a call to envd failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvdClientError {
    /// The socket is missing, is not a socket (a symlink, say), or refused the connection: the
    /// sandbox's envd is not running.
    #[error("cannot connect to envd at {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// envd took longer than [`SETUP_TIMEOUT`] to accept the connection or to start the process.
    #[error("envd at {} did not answer within {after:?}", socket.display())]
    Unresponsive {
        /// The socket.
        socket: PathBuf,
        /// How long was waited.
        after: Duration,
    },
    /// envd answered with an HTTP error (401 for a wrong access token, 4xx/5xx from `/files`).
    #[error("envd answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The body (envd's JSON `{"code":…,"message":…}`), at most 64 KiB of it.
        body: String,
    },
    /// envd refused or failed the RPC (unknown user, bad working directory, spawn failure).
    #[error("envd: {code}: {message}")]
    Rpc {
        /// The Connect code (`unauthenticated`, `invalid_argument`, …).
        code: String,
        /// envd's message.
        message: String,
    },
    /// envd's answer broke the protocol (or its stream ended before the process did).
    #[error("unexpected answer from envd: {0}")]
    Protocol(String),
    /// The connection failed while the call was in flight.
    #[error("the connection to envd failed")]
    Io(#[from] hyper::Error),
}

/// A client of one sandbox's envd. Cheap to clone; every call opens its own connection.
///
/// The socket is never connected to by name: its last component is opened without following
/// symlinks and must be a socket, and the connection goes through `/proc/self/fd/<n>`, so a
/// sandbox cannot point the node at another socket of the host.
#[derive(Clone)]
pub struct EnvdClient {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    access_token: Option<String>,
}

impl std::fmt::Debug for EnvdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvdClient")
            .field("socket", &self.inner.socket)
            .field(
                "access_token",
                &self.inner.access_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl EnvdClient {
    /// A client of the envd listening on `socket`, sending `access_token` (the sandbox's
    /// `X-Access-Token`) when one is given.
    pub fn new(socket: PathBuf, access_token: Option<String>) -> Self {
        EnvdClient {
            inner: Arc::new(Inner {
                socket,
                access_token,
            }),
        }
    }

    /// The envd socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// Runs a process to its end; output chunks go to `on_output` as they arrive (stdout and
    /// stderr, raw bytes). The process's stdin is `/dev/null`. There is no overall deadline;
    /// dropping the future closes the connection, and the process keeps running in the sandbox.
    pub async fn run(
        &self,
        spec: &ProcessSpec,
        on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<ExitStatus, EnvdClientError> {
        let mut events = self.start(spec).await?;
        while let Some(event) = events.next().await? {
            if let Some(data) = event.data {
                // `pty` never comes (no terminal is requested); counted as stdout if it did.
                let chunks = [
                    (OutputStream::Stdout, data.stdout),
                    (OutputStream::Stderr, data.stderr),
                    (OutputStream::Stdout, data.pty),
                ];
                for (stream, bytes) in chunks {
                    if let Some(Base64(bytes)) = bytes.filter(|b| !b.0.is_empty()) {
                        on_output(stream, &bytes);
                    }
                }
            }
            if let Some(end) = event.end {
                return Ok(end.into());
            }
        }
        Err(EnvdClientError::Protocol(
            "the process's stream ended without its end event".into(),
        ))
    }

    /// Starts a process and returns its pid once envd reports it started. The process keeps
    /// running after this returns: the stream that started it is closed, and envd only
    /// detaches a closed stream from its process (its output is then dropped). Its stdin is
    /// `/dev/null`.
    pub async fn spawn(&self, spec: &ProcessSpec) -> Result<u32, EnvdClientError> {
        let mut events = self.start(spec).await?;
        while let Some(event) = events.next().await? {
            if let Some(start) = event.start {
                return Ok(start.pid);
            }
            if event.end.is_some() {
                break;
            }
        }
        Err(EnvdClientError::Protocol(
            "the process's stream has no start event".into(),
        ))
    }

    /// Writes `data` to the file `path` in the sandbox as `user` (empty for envd's default
    /// user), with envd's `POST /files?path=…&username=…`: missing parents are created and the
    /// file is truncated, both owned by the user. A relative `path` is resolved against the
    /// user's home.
    pub async fn upload(&self, path: &str, user: &str, data: Bytes) -> Result<(), EnvdClientError> {
        let len = data.len() as u64;
        self.upload_body(path, user, len, Full::new(data)).await
    }

    /// [`EnvdClient::upload`] of the first `len` bytes of `file` (from its current position),
    /// streamed in chunks as envd takes them: the file is never held in memory whole.
    pub async fn upload_file(
        &self,
        path: &str,
        user: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<(), EnvdClientError> {
        use tokio::io::AsyncReadExt as _;
        let chunks = futures::stream::try_unfold(file.take(len), |mut rest| async move {
            let mut buf = BytesMut::with_capacity(UPLOAD_CHUNK);
            match rest.read_buf(&mut buf).await? {
                0 => Ok::<_, std::io::Error>(None),
                _ => Ok(Some((hyper::body::Frame::data(buf.freeze()), rest))),
            }
        });
        self.upload_body(path, user, len, http_body_util::StreamBody::new(chunks))
            .await
    }

    async fn upload_body<B>(
        &self,
        path: &str,
        user: &str,
        len: u64,
        body: B,
    ) -> Result<(), EnvdClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut uri = format!("/files?path={}", query_escape(path));
        if !user.is_empty() {
            uri.push_str("&username=");
            uri.push_str(&query_escape(user));
        }
        let req = self
            .request(&uri)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .map_err(|e| EnvdClientError::Protocol(format!("building the request: {e}")))?;
        let (mut sender, _driver) = self.connect().await?;
        // The answer comes once the whole body is written, which takes as long as it takes.
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(http_error(resp).await);
        }
        resp.into_body().collect().await?;
        Ok(())
    }

    /// Re-initialises envd with `POST /init` (spec 3.6): `init` replaces its access token, global
    /// environment, default user and working directory. The request is authorised by the token
    /// this client was made with (the current one); afterwards only `init.access_token` works.
    /// Bounded by [`SETUP_TIMEOUT`].
    pub async fn init(&self, init: &InitBody) -> Result<(), EnvdClientError> {
        let payload = serde_json::to_vec(init)
            .map_err(|e| EnvdClientError::Protocol(format!("encoding the request: {e}")))?;
        let req = self
            .request("/init")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| EnvdClientError::Protocol(format!("building the request: {e}")))?;
        let (mut sender, _driver) = self.connect().await?;
        let resp = tokio::time::timeout(SETUP_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.unresponsive())??;
        if !resp.status().is_success() {
            return Err(http_error(resp).await);
        }
        Ok(())
    }

    /// Sends `Start` for `spec` and returns the stream of its events.
    async fn start(&self, spec: &ProcessSpec) -> Result<Events, EnvdClientError> {
        let payload = serde_json::to_vec(&StartRequest::new(spec))
            .map_err(|e| EnvdClientError::Protocol(format!("encoding the request: {e}")))?;
        let mut req = self
            .request(START_PATH)
            .header(http::header::CONTENT_TYPE, "application/connect+json")
            .header("connect-protocol-version", "1");
        if !spec.user.is_empty() {
            req = req.header(http::header::AUTHORIZATION, basic_user(&spec.user));
        }
        let req = req
            .body(Full::new(envelope(0, &payload)))
            .map_err(|e| EnvdClientError::Protocol(format!("building the request: {e}")))?;
        let (mut sender, driver) = self.connect().await?;
        let resp = tokio::time::timeout(SETUP_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.unresponsive())??;
        if !resp.status().is_success() {
            return Err(http_error(resp).await);
        }
        Ok(Events {
            body: resp.into_body(),
            buf: BytesMut::new(),
            _driver: driver,
        })
    }

    /// A request to envd with the host and access-token headers.
    fn request(&self, uri: &str) -> http::request::Builder {
        let mut req = http::Request::post(uri).header(http::header::HOST, "localhost");
        if let Some(token) = &self.inner.access_token {
            req = req.header("x-access-token", token);
        }
        req
    }

    /// Opens a connection and spawns its driver, which lives as long as the returned guard.
    async fn connect<B>(&self) -> Result<(SendRequest<B>, Driver), EnvdClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let socket = &self.inner.socket;
        let stream = tokio::time::timeout(SETUP_TIMEOUT, connect_no_follow(socket))
            .await
            .map_err(|_| self.unresponsive())?
            .map_err(|source| EnvdClientError::Connect {
                socket: socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "envd connection ended with an error");
            }
        });
        Ok((sender, Driver(driver)))
    }

    fn unresponsive(&self) -> EnvdClientError {
        EnvdClientError::Unresponsive {
            socket: self.inner.socket.clone(),
            after: SETUP_TIMEOUT,
        }
    }
}

/// The task driving one connection; aborted (closing the connection) when dropped.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to the Unix socket at `path` without following a symlink in its last component.
async fn connect_no_follow(path: &Path) -> std::io::Result<UnixStream> {
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    if !handle.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a unix socket",
        ));
    }
    connect_inode(&handle).await
}

/// Connects to the socket `handle` refers to, whatever its path names by now.
async fn connect_inode(handle: &File) -> std::io::Result<UnixStream> {
    UnixStream::connect(format!("/proc/self/fd/{}", handle.as_raw_fd())).await
}

/// An error answer as [`EnvdClientError::Http`], with (the start of) its body.
async fn http_error(resp: http::Response<Incoming>) -> EnvdClientError {
    let status = resp.status().as_u16();
    let body = match Limited::new(resp.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
    {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => format!("(the body could not be read: {e})"),
    };
    EnvdClientError::Http { status, body }
}

/// `Basic base64("<user>:")`: the credentials envd takes the acting user from.
fn basic_user(user: &str) -> String {
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
    format!("Basic {credentials}")
}

/// Percent-encodes a query value: everything but RFC 3986's unreserved characters and `/`.
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of envd's `POST /init`, as the orchestrator sends it when it hands a sandbox to its
/// user (spec 3.6; field names as E2B's).
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitBody {
    /// The new access token.
    pub access_token: String,
    /// The new global environment (replaces the old one).
    pub env_vars: HashMap<String, String>,
    /// The new default user.
    pub default_user: String,
    /// The new default working directory, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// When the request was made (envd ignores an older replay).
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for InitBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitBody")
            .field("access_token", &"<redacted>")
            .field("env_vars", &self.env_vars.keys().collect::<Vec<_>>())
            .field("default_user", &self.default_user)
            .field("default_workdir", &self.default_workdir)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// `StartRequest` as the SDKs send it (`stdin: false` for `/dev/null`).
#[derive(Serialize)]
struct StartRequest<'a> {
    process: ProcessConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    stdin: bool,
}

impl<'a> StartRequest<'a> {
    fn new(spec: &'a ProcessSpec) -> Self {
        StartRequest {
            process: ProcessConfig {
                cmd: spec.cmd.clone(),
                args: spec.args.clone(),
                envs: spec.envs.iter().cloned().collect::<HashMap<_, _>>(),
                cwd: spec.cwd.clone(),
            },
            tag: spec.tag.as_deref(),
            stdin: false,
        }
    }
}

/// `StartResponse`: `{"event":{…}}`.
#[derive(Deserialize)]
struct StartResponse {
    #[serde(default)]
    event: Option<Event>,
}

/// `ProcessEvent`: one of `start`, `data`, `end`, `keepalive` (ignored).
#[derive(Debug, Default, Deserialize)]
struct Event {
    #[serde(default)]
    start: Option<StartEvent>,
    #[serde(default)]
    data: Option<DataEvent>,
    #[serde(default)]
    end: Option<EndEvent>,
}

#[derive(Debug, Deserialize)]
struct StartEvent {
    #[serde(default, deserialize_with = "pbjson::uint32::deserialize")]
    pid: u32,
}

#[derive(Debug, Deserialize)]
struct DataEvent {
    #[serde(default)]
    stdout: Option<Base64>,
    #[serde(default)]
    stderr: Option<Base64>,
    #[serde(default)]
    pty: Option<Base64>,
}

/// `EndEvent` (proto3 JSON leaves out zero values: `exitCode` 0, `exited` false, empty texts).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndEvent {
    #[serde(default, deserialize_with = "int32")]
    exit_code: i32,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl From<EndEvent> for ExitStatus {
    fn from(end: EndEvent) -> Self {
        ExitStatus {
            exit_code: end.exit_code,
            status: end.status.unwrap_or_default(),
            error: end.error.filter(|e| !e.is_empty()),
        }
    }
}

/// A proto3 JSON `int32`: a number, a decimal string, or null.
fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i32),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(0),
        Some(N::I(i)) => Ok(i),
        Some(N::S(s)) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// The end-of-stream message: `{}` or `{"error":{"code":…,"message":…}}`.
#[derive(Deserialize)]
struct EndOfStream {
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The events of one `Start` stream, read envelope by envelope; holds the connection.
struct Events {
    body: Incoming,
    buf: BytesMut,
    _driver: Driver,
}

impl Events {
    /// The next event; `Ok(None)` at a clean end of the stream, an end-of-stream error as
    /// [`EnvdClientError::Rpc`].
    async fn next(&mut self) -> Result<Option<Event>, EnvdClientError> {
        loop {
            match decode(&mut self.buf)? {
                Some(Frame::Message(payload)) => {
                    let resp: StartResponse = serde_json::from_slice(&payload).map_err(|e| {
                        EnvdClientError::Protocol(format!("an event that does not parse: {e}"))
                    })?;
                    if let Some(event) = resp.event {
                        return Ok(Some(event));
                    }
                    continue;
                }
                Some(Frame::End(payload)) => return end_of_stream(&payload),
                None => {}
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(EnvdClientError::Protocol(
                        "the stream ends inside an envelope".into(),
                    ))
                }
            }
        }
    }
}

/// One decoded envelope.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A message.
    Message(Bytes),
    /// The end-of-stream message.
    End(Bytes),
}

/// Takes the next complete envelope off `buf`, if there is one.
fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, EnvdClientError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let flags = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if flags & COMPRESSED_FLAG != 0 {
        return Err(EnvdClientError::Protocol(
            "a compressed envelope (none was asked for)".into(),
        ));
    }
    if len > MAX_MESSAGE {
        return Err(EnvdClientError::Protocol(format!(
            "an envelope of {len} bytes (the limit is {MAX_MESSAGE})"
        )));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    let payload = buf.split_to(len).freeze();
    Ok(Some(if flags & END_STREAM_FLAG != 0 {
        Frame::End(payload)
    } else {
        Frame::Message(payload)
    }))
}

/// The result an end-of-stream message stands for.
fn end_of_stream(payload: &[u8]) -> Result<Option<Event>, EnvdClientError> {
    let payload = if payload.is_empty() { b"{}" } else { payload };
    let end: EndOfStream = serde_json::from_slice(payload).map_err(|e| {
        EnvdClientError::Protocol(format!("an end-of-stream message that does not parse: {e}"))
    })?;
    match end.error {
        None => Ok(None),
        Some(err) => Err(EnvdClientError::Rpc {
            code: err
                .code
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            message: err.message.unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_decoded_wherever_the_chunks_cut() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&envelope(0, br#"{"event":{"start":{"pid":7}}}"#));
        wire.extend_from_slice(&envelope(END_STREAM_FLAG, b"{}"));
        let wire = wire.freeze();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut frames = Vec::new();
            while let Some(f) = decode(&mut buf).expect("decodes") {
                frames.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode(&mut buf).expect("decodes") {
                frames.push(f);
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Message(Bytes::from_static(br#"{"event":{"start":{"pid":7}}}"#)),
                    Frame::End(Bytes::from_static(b"{}")),
                ],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn compressed_and_huge_envelopes_are_refused() {
        let mut buf = BytesMut::from(&envelope(COMPRESSED_FLAG, b"{}")[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(EnvdClientError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode(&mut buf),
            Err(EnvdClientError::Protocol(_))
        ));
    }

    #[test]
    fn events_parse_as_envd_sends_them() {
        let ev: StartResponse =
            serde_json::from_str(r#"{"event":{"data":{"stderr":"aGkK"}}}"#).expect("parses");
        let data = ev.event.and_then(|e| e.data).expect("data");
        assert_eq!(data.stderr, Some(Base64(b"hi\n".to_vec())));
        assert_eq!(data.stdout, None);

        let ev: StartResponse =
            serde_json::from_str(r#"{"event":{"start":{"pid":"42"}}}"#).expect("parses");
        assert_eq!(ev.event.and_then(|e| e.start).map(|s| s.pid), Some(42));

        let ev: StartResponse =
            serde_json::from_str(r#"{"event":{"keepalive":{}}}"#).expect("parses");
        let ev = ev.event.expect("event");
        assert!(ev.start.is_none() && ev.data.is_none() && ev.end.is_none());

        let end = |json: &str| -> ExitStatus {
            let ev: StartResponse = serde_json::from_str(json).expect("parses");
            ev.event.and_then(|e| e.end).expect("end").into()
        };
        let ok = end(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#);
        assert_eq!(ok.exit_code, 0);
        assert!(ok.success());
        let killed = end(
            r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}}}"#,
        );
        assert_eq!(killed.exit_code, -1);
        assert_eq!(killed.status, "signal: killed");
        assert!(!killed.success());
        assert_eq!(killed.to_string(), "signal: killed");
    }

    #[test]
    fn end_of_stream_errors_become_rpc_errors() {
        assert!(end_of_stream(b"{}").expect("clean").is_none());
        assert!(end_of_stream(b"").expect("clean").is_none());
        let err = end_of_stream(br#"{"error":{"code":"unauthenticated","message":"no user"}}"#)
            .expect_err("error");
        assert!(
            matches!(&err, EnvdClientError::Rpc { code, message } if code == "unauthenticated" && message == "no user"),
            "{err:?}"
        );
    }

    #[test]
    fn start_requests_look_like_the_sdks() {
        let mut spec = ProcessSpec::shell("echo hi", "root");
        spec.cwd = Some("/tmp".into());
        spec.envs = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        assert_eq!(
            serde_json::to_value(StartRequest::new(&spec)).expect("encodes"),
            serde_json::json!({
                "process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"2"},"cwd":"/tmp"},
                "stdin":false
            })
        );
        assert_eq!(basic_user("root"), "Basic cm9vdDo=");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape("/home/user/a b+c&d=é"),
            "/home/user/a%20b%2Bc%26d%3D%C3%A9"
        );
    }
}
