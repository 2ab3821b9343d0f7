//! A client of one sandbox's envd, reached through its Unix socket on the host: runs processes
//! (`process.Process/Start`, E2B's Connect protocol with the JSON codec), writes files
//! (`POST /files`) and hands a warm sandbox to its user (`POST /init`). The template builder,
//! create's start and ready commands and the warm pools use it.
//!
//! Owns: one HTTP/1.1 connection per call, opened without following a symlink (the socket's
//! directory is writable from inside the sandbox, see [`EnvdClient`]); the mapping of envd's
//! answers to [`EnvdClientError`]. The messages and their framing are
//! `paddock_envd_proto`'s. Does not own deadlines:
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

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use paddock_envd_proto::connect::{
    self, Decoder, EndStream, Frame, FrameError, CONTENT_TYPE_CONNECT_JSON, CONTENT_TYPE_JSON,
    PROTOCOL_VERSION, PROTOCOL_VERSION_HEADER,
};
use paddock_envd_proto::process::{
    DataEvent, EndEvent, EventResponse, ProcessConfig, ProcessEvent, StartRequest,
};
use paddock_envd_proto::{headers, rpc};
use serde::Serialize;
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
    /// envd's stream could not be split into Connect envelopes.
    #[error("unexpected answer from envd")]
    Frame(#[from] FrameError),
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
            match event {
                // `pty` never comes (no terminal is requested); counted as stdout if it did.
                ProcessEvent::Data(DataEvent::Stdout(bytes) | DataEvent::Pty(bytes)) => {
                    if !bytes.0.is_empty() {
                        on_output(OutputStream::Stdout, &bytes.0);
                    }
                }
                ProcessEvent::Data(DataEvent::Stderr(bytes)) => {
                    if !bytes.0.is_empty() {
                        on_output(OutputStream::Stderr, &bytes.0);
                    }
                }
                ProcessEvent::End(end) => return Ok(end.into()),
                ProcessEvent::Start(_) | ProcessEvent::Keepalive(_) => {}
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
            match event {
                ProcessEvent::Start(start) => return Ok(start.pid),
                ProcessEvent::End(_) => break,
                ProcessEvent::Data(_) | ProcessEvent::Keepalive(_) => {}
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
        let mut uri = format!("{}?path={}", rpc::FILES, query_escape(path));
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
            .request(rpc::INIT)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
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
        let payload = serde_json::to_vec(&start_request(spec))
            .map_err(|e| EnvdClientError::Protocol(format!("encoding the request: {e}")))?;
        let mut req = self
            .request(rpc::PROCESS_START)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE_CONNECT_JSON)
            .header(PROTOCOL_VERSION_HEADER, PROTOCOL_VERSION);
        if !spec.user.is_empty() {
            req = req.header(http::header::AUTHORIZATION, headers::basic_user(&spec.user));
        }
        let req = req
            .body(Full::new(connect::encode(0, &payload)))
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
            decoder: Decoder::new(MAX_MESSAGE),
            _driver: driver,
        })
    }

    /// A request to envd with the host and access-token headers.
    fn request(&self, uri: &str) -> http::request::Builder {
        let mut req = http::Request::post(uri).header(http::header::HOST, "localhost");
        if let Some(token) = &self.inner.access_token {
            req = req.header(headers::ACCESS_TOKEN, token);
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

/// `StartRequest` for `spec` as the SDKs send it (`stdin: false` for `/dev/null`).
fn start_request(spec: &ProcessSpec) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: spec.cmd.clone(),
            args: spec.args.clone(),
            envs: spec.envs.iter().cloned().collect::<HashMap<_, _>>(),
            cwd: spec.cwd.clone(),
        },
        pty: None,
        tag: spec.tag.clone(),
        stdin: Some(false),
    }
}

impl From<EndEvent> for ExitStatus {
    fn from(end: EndEvent) -> Self {
        ExitStatus {
            exit_code: end.exit_code,
            status: end.status,
            error: end.error.filter(|e| !e.is_empty()),
        }
    }
}

/// The events of one `Start` stream, read envelope by envelope; holds the connection.
struct Events {
    body: Incoming,
    decoder: Decoder,
    _driver: Driver,
}

impl Events {
    /// The next event; `Ok(None)` at a clean end of the stream, an end-of-stream error as
    /// [`EnvdClientError::Rpc`].
    async fn next(&mut self) -> Result<Option<ProcessEvent>, EnvdClientError> {
        loop {
            match self.decoder.next_frame()? {
                Some(Frame::Message(payload)) => {
                    let resp: EventResponse<'static> =
                        serde_json::from_slice(&payload).map_err(|e| {
                            EnvdClientError::Protocol(format!("an event that does not parse: {e}"))
                        })?;
                    return Ok(Some(resp.event.into_owned()));
                }
                Some(Frame::End(payload)) => return end_of_stream(&payload),
                None => {}
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.decoder.push(&data);
                    }
                }
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// The result an end-of-stream message stands for.
fn end_of_stream(payload: &[u8]) -> Result<Option<ProcessEvent>, EnvdClientError> {
    let end = EndStream::parse(payload).map_err(|e| {
        EnvdClientError::Protocol(format!("an end-of-stream message that does not parse: {e}"))
    })?;
    match end.into_result() {
        Ok(()) => Ok(None),
        Err(err) => Err(EnvdClientError::Rpc {
            code: err.code,
            message: err.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_become_exit_statuses() {
        let end = |json: &str| -> ExitStatus {
            let resp: EventResponse<'static> = serde_json::from_str(json).expect("parses");
            match resp.event.into_owned() {
                ProcessEvent::End(end) => end.into(),
                other => panic!("not an end event: {other:?}"),
            }
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
        let empty_error = end(r#"{"event":{"end":{"exitCode":2,"error":""}}}"#);
        assert_eq!(empty_error.error, None);
        assert!(!empty_error.success());
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
        assert!(matches!(
            end_of_stream(b"{"),
            Err(EnvdClientError::Protocol(_))
        ));
    }

    #[test]
    fn start_requests_look_like_the_sdks() {
        let mut spec = ProcessSpec::shell("echo hi", "root");
        spec.cwd = Some("/tmp".into());
        spec.envs = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        assert_eq!(
            serde_json::to_string(&start_request(&spec)).expect("encodes"),
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"2"},"cwd":"/tmp"},"stdin":false}"#
        );
        spec.tag = Some("t".into());
        assert_eq!(
            serde_json::to_value(start_request(&spec)).expect("encodes")["tag"],
            "t"
        );
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape("/home/user/a b+c&d=é"),
            "/home/user/a%20b%2Bc%26d%3D%C3%A9"
        );
    }
}
