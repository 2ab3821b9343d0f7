//! The CLI's client for envd, the daemon inside every sandbox, reached through the sandbox proxy
//! over Connect with the JSON codec (spec 3.3), exactly as the SDKs call it. This module owns the
//! headers the SDKs send (sandbox id and port, access token, the user as Basic credentials),
//! unary calls and server streams
//! ([`Envd`], [`MessageStream`]), the mapping of proxy/envd failures to clear errors
//! ([`RpcError`]), and the reading of process events (`data_bytes`, `end_code`). `sandbox exec`
//! (see [`super::sandbox`]) and `sandbox shell` (see [`super::shell`]) both use it; finding a
//! sandbox's envd through the REST API is `sandbox`'s job. The framing, the error form and the
//! RPC paths are `paddock_envd_proto`'s.

use anyhow::Context;
use paddock_envd_proto::connect::{
    self, Decoder, EndStream, Frame, FrameError, WireError, CONTENT_TYPE_CONNECT_JSON,
    CONTENT_TYPE_JSON, KEEPALIVE_HEADER, PROTOCOL_VERSION, PROTOCOL_VERSION_HEADER, TIMEOUT_HEADER,
};
use paddock_envd_proto::{headers, rpc, ENVD_PORT};
use serde_json::{json, Value};

use super::sandbox::error_message;

/// `process.Process/Start`: a server stream of `ProcessEvent`s.
pub(crate) const START: &str = rpc::PROCESS_START;
/// Largest envelope accepted (envd's data events carry at most 32 KiB of bytes).
const MAX_ENVELOPE: usize = 16 << 20;
/// Deadline of a unary call, as the SDKs' default request timeout.
const UNARY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a call to envd failed, in terms a user can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    /// The proxy does not know the sandbox: killed, timed out, or never started.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The sandbox is known but nothing answers on envd's port.
    #[error("sandbox {0} is running but its envd does not answer")]
    EnvdUnreachable(String),
    /// envd refused the access token (a plain HTTP 401, not a Connect error).
    #[error("envd refused the access token: {0}")]
    AccessDenied(String),
    /// A Connect error; `code` is the snake_case Connect code (`not_found`, `unauthenticated`…).
    #[error("{code}: {message}")]
    Connect {
        /// Connect error code.
        code: String,
        /// envd's message.
        message: String,
    },
    /// Another HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The body's `message`, else the body.
        message: String,
    },
    /// A message that is not what the protocol promises.
    #[error("a malformed answer from envd: {0}")]
    Protocol(String),
    /// The stream could not be split into envelopes.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection failed.
    #[error("talking to envd: {0}")]
    Transport(#[from] reqwest::Error),
}

impl RpcError {
    /// The Connect code, for errors envd answered with.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            RpcError::Connect { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Classifies an error status of an envd call made through the proxy of sandbox `id`: a
    /// Connect error carries a code name, the proxy's own errors a number.
    fn from_status(id: &str, status: u16, body: &str) -> Self {
        let code = serde_json::from_str::<WireError>(body)
            .ok()
            .map(|e| e.code)
            .filter(|c| !c.is_empty());
        let message = error_message(body);
        match (status, code) {
            (_, Some(code)) => RpcError::Connect { code, message },
            (502, None) if message.contains("was not found") => RpcError::NotRunning(id.into()),
            (502, None) if message.contains("port is not open") => {
                RpcError::EnvdUnreachable(id.into())
            }
            (401, None) => RpcError::AccessDenied(message),
            (status, None) => RpcError::Http { status, message },
        }
    }
}

impl From<WireError> for RpcError {
    fn from(e: WireError) -> Self {
        RpcError::Connect {
            code: e.code,
            message: e.message,
        }
    }
}

/// envd of one sandbox, reached through the sandbox proxy with the headers the SDKs send.
#[derive(Debug, Clone)]
pub(crate) struct Envd {
    http: reqwest::Client,
    base: String,
    sandbox_id: String,
    token: Option<String>,
}

impl Envd {
    /// envd of sandbox `id` behind the sandbox proxy at `sandbox_url`.
    pub(crate) fn new(
        http: reqwest::Client,
        sandbox_url: &str,
        id: &str,
        token: Option<String>,
    ) -> Self {
        Envd {
            http,
            base: sandbox_url.trim_end_matches('/').to_string(),
            sandbox_id: id.to_string(),
            token,
        }
    }

    /// A request for the RPC at `path` (`/process.Process/Start`…) with the Connect and sandbox
    /// headers, the access token, and the user in Basic credentials when one is given.
    fn request(
        &self,
        path: &str,
        content_type: &str,
        user: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(PROTOCOL_VERSION_HEADER, PROTOCOL_VERSION)
            .header(headers::SANDBOX_ID, &self.sandbox_id)
            .header(headers::SANDBOX_PORT, ENVD_PORT.to_string());
        if let Some(token) = &self.token {
            req = req.header(headers::ACCESS_TOKEN, token);
        }
        if let Some(user) = user {
            req = req.header(reqwest::header::AUTHORIZATION, headers::basic_user(user));
        }
        req
    }

    /// A unary call (`SendInput`, `Update`, `SendSignal`…, without a user, as the SDKs send
    /// them): envd's JSON answer.
    pub(crate) async fn unary(&self, method: &str, message: &Value) -> Result<Value, RpcError> {
        let body = serde_json::to_vec(message).map_err(|e| RpcError::Protocol(e.to_string()))?;
        let resp = self
            .request(method, CONTENT_TYPE_JSON, None)
            .header(TIMEOUT_HEADER, UNARY_TIMEOUT.as_millis().to_string())
            .timeout(UNARY_TIMEOUT)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(RpcError::from_status(
                &self.sandbox_id,
                status.as_u16(),
                &text,
            ));
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).map_err(|e| RpcError::Protocol(format!("{e}: {text:.200}")))
    }

    /// Opens a server stream (`Start`) with one request message, keepalives every 50 s and no
    /// deadline (the process lives as long as it wants).
    pub(crate) async fn server_stream(
        &self,
        method: &str,
        user: Option<&str>,
        message: &Value,
    ) -> Result<MessageStream, RpcError> {
        let payload = serde_json::to_vec(message).map_err(|e| RpcError::Protocol(e.to_string()))?;
        let resp = self
            .request(method, CONTENT_TYPE_CONNECT_JSON, user)
            .header(KEEPALIVE_HEADER, "50")
            .body(connect::encode(0, &payload))
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RpcError::from_status(
                &self.sandbox_id,
                status.as_u16(),
                &text,
            ));
        }
        Ok(MessageStream {
            resp,
            decoder: Decoder::new(MAX_ENVELOPE),
            finished: false,
        })
    }
}

/// The messages of a Connect server stream, in order.
pub(crate) struct MessageStream {
    resp: reqwest::Response,
    decoder: Decoder,
    finished: bool,
}

impl MessageStream {
    /// The next message; `Ok(None)` once the stream ended cleanly (end-of-stream `{}`, or the
    /// body ending between envelopes, which the Python SDK tolerates too). An end-of-stream
    /// error comes back as [`RpcError::Connect`]. Cancel-safe: state changes only after an
    /// await completed, so dropping the future loses nothing.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Value>, RpcError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match self.decoder.next_frame()? {
                Some(Frame::Message(payload)) => {
                    return serde_json::from_slice(&payload).map(Some).map_err(|e| {
                        RpcError::Protocol(format!("a message that is not JSON: {e}"))
                    })
                }
                Some(Frame::End(payload)) => {
                    self.finished = true;
                    let end = EndStream::parse(&payload).map_err(|e| {
                        RpcError::Protocol(format!(
                            "an end-of-stream message that is not JSON: {e}"
                        ))
                    })?;
                    return end.into_result().map(|()| None).map_err(RpcError::from);
                }
                None => {}
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.decoder.push(&chunk),
                None => {
                    self.finished = true;
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// The bytes of `data.<key>` (`stdout`, `stderr`, `pty`) of a `DataEvent`, if present.
pub(crate) fn data_bytes(data: &Value, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(b64) = data.get(key).and_then(Value::as_str) else {
        return Ok(None);
    };
    paddock_envd_proto::pbjson::decode(b64)
        .map(Some)
        .with_context(|| format!("{key} is not base64"))
}

/// The exit code an `EndEvent` stands for: the process's own, or 128 + signal for a process
/// killed by one (reported as -1 with "signal: …" in `status`).
pub(crate) fn end_code(end: &Value) -> u8 {
    match end.get("exitCode").and_then(Value::as_i64).unwrap_or(0) {
        exit @ 0..=255 => exit as u8,
        _ => 128 + signal_of(end.get("status").and_then(Value::as_str).unwrap_or("")),
    }
}

/// The signal number in "signal: killed"-style statuses (9 when unknown).
fn signal_of(status: &str) -> u8 {
    match status.trim_start_matches("signal: ") {
        "hangup" => 1,
        "interrupt" => 2,
        "terminated" => 15,
        _ => 9,
    }
}

/// A scripted HTTP/1.1 server standing in for the sandbox proxy and envd in unit tests.
#[cfg(test)]
pub(crate) mod mock {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// One request as received: the request line, lower-cased headers and the body.
    #[derive(Debug, Clone)]
    pub(crate) struct Request {
        pub line: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Request {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// The canned answer to every request: status, content type, and the body in the chunks
    /// it is written in (chunked transfer encoding, one HTTP chunk each).
    #[derive(Debug, Clone)]
    pub(crate) struct Answer {
        pub status: u16,
        pub content_type: &'static str,
        pub chunks: Vec<Vec<u8>>,
    }

    /// Serves `answer` to every request on a fresh port; returns its base URL and the log of
    /// requests.
    pub(crate) async fn serve(answer: Answer) -> (String, Arc<Mutex<Vec<Request>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let requests = log.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut read = BufReader::new(read);
                    while let Some(request) = read_request(&mut read).await {
                        log.lock().expect("log").push(request);
                        let mut out = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                            answer.status, answer.content_type
                        )
                        .into_bytes();
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                        for chunk in answer.chunks.iter().filter(|c| !c.is_empty()) {
                            out = format!("{:x}\r\n", chunk.len()).into_bytes();
                            out.extend_from_slice(chunk);
                            out.extend_from_slice(b"\r\n");
                            if write.write_all(&out).await.is_err() || write.flush().await.is_err()
                            {
                                return;
                            }
                        }
                        if write.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, requests)
    }

    async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Request> {
        let mut line = String::new();
        read.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            read.read_line(&mut h).await.ok().filter(|n| *n > 0)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        read.read_exact(&mut body).await.ok()?;
        Some(Request {
            line: line.trim_end().to_string(),
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(payload: &[u8]) -> Vec<u8> {
        connect::encode(0, payload).to_vec()
    }

    fn end_of_stream(payload: &[u8]) -> Vec<u8> {
        connect::encode(connect::END_STREAM_FLAG, payload).to_vec()
    }

    #[tokio::test]
    async fn a_server_stream_yields_its_messages_then_the_trailer_error() {
        let mut body = envelope(br#"{"event":{"start":{"pid":7}}}"#);
        body.extend(envelope(br#"{"event":{"keepalive":{}}}"#));
        body.extend(end_of_stream(
            br#"{"error":{"code":"deadline_exceeded","message":"too slow"}}"#,
        ));
        let (url, log) = mock::serve(mock::Answer {
            status: 200,
            content_type: "application/connect+json",
            chunks: body.chunks(3).map(<[u8]>::to_vec).collect(),
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", Some("tok".into()));
        let request = json!({"process": {"cmd": "true"}});
        let mut stream = envd
            .server_stream(START, Some("root"), &request)
            .await
            .expect("open");
        let next = stream.next_message().await.expect("start");
        assert_eq!(next, Some(json!({"event": {"start": {"pid": 7}}})));
        let next = stream.next_message().await.expect("keepalive");
        assert_eq!(next, Some(json!({"event": {"keepalive": {}}})));
        let err = stream
            .next_message()
            .await
            .expect_err("the trailer's error");
        assert_eq!(err.to_string(), "deadline_exceeded: too slow");
        assert_eq!(stream.next_message().await.expect("finished"), None);

        let sent = log.lock().expect("log")[0].clone();
        assert_eq!(sent.line, "POST /process.Process/Start HTTP/1.1");
        for (name, value) in [
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
            ("e2b-sandbox-id", "iabc"),
            ("e2b-sandbox-port", "49983"),
            ("x-access-token", "tok"),
            ("authorization", "Basic cm9vdDo="),
            ("keepalive-ping-interval", "50"),
        ] {
            assert_eq!(sent.header(name), Some(value), "{name}");
        }
        assert!(sent.header("connect-timeout-ms").is_none(), "no deadline");
        assert_eq!(
            sent.body,
            envelope(&serde_json::to_vec(&request).expect("json"))
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_an_envelope_is_an_error() {
        let mut body = envelope(br#"{"event":{"start":{"pid":7}}}"#);
        body.truncate(body.len() - 2);
        let (url, _log) = mock::serve(mock::Answer {
            status: 200,
            content_type: "application/connect+json",
            chunks: vec![body],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let mut stream = envd
            .server_stream(START, None, &json!({}))
            .await
            .expect("open");
        let err = stream.next_message().await.expect_err("truncated");
        assert!(
            matches!(err, RpcError::Frame(FrameError::Truncated(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unary_calls_send_json_without_a_user_and_map_errors() {
        let (url, log) = mock::serve(mock::Answer {
            status: 404,
            content_type: "application/json",
            chunks: vec![br#"{"code":"not_found","message":"pid 42 not found"}"#.to_vec()],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let msg = json!({"process": {"pid": 42}});
        let err = envd
            .unary(rpc::PROCESS_UPDATE, &msg)
            .await
            .expect_err("not found");
        assert_eq!(err.code(), Some("not_found"));
        let sent = log.lock().expect("log")[0].clone();
        assert_eq!(sent.line, "POST /process.Process/Update HTTP/1.1");
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("connect-timeout-ms"), Some("60000"));
        assert!(sent.header("authorization").is_none());
        assert!(sent.header("x-access-token").is_none());
        assert_eq!(
            serde_json::from_slice::<Value>(&sent.body).expect("json"),
            msg
        );

        let (url, _log) = mock::serve(mock::Answer {
            status: 502,
            content_type: "application/json",
            chunks: vec![
                br#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#
                    .to_vec(),
            ],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let err = envd
            .unary(rpc::PROCESS_UPDATE, &msg)
            .await
            .expect_err("502");
        assert_eq!(err.to_string(), "sandbox iabc is not running");
    }

    #[test]
    fn rpc_failures_are_classified() {
        let e = RpcError::from_status(
            "iabc",
            502,
            r#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#,
        );
        assert_eq!(e.to_string(), "sandbox iabc is not running");
        let e = RpcError::from_status(
            "iabc",
            502,
            r#"{"sandboxId":"iabc","message":"The sandbox is running but port is not open","port":49983,"code":502}"#,
        );
        assert!(matches!(e, RpcError::EnvdUnreachable(_)), "{e}");
        let e = RpcError::from_status("iabc", 401, r#"{"code":401,"message":"bad token"}"#);
        assert_eq!(e.to_string(), "envd refused the access token: bad token");
        let e = RpcError::from_status(
            "iabc",
            401,
            r#"{"code":"unauthenticated","message":"user nobody2 not found"}"#,
        );
        assert_eq!(e.code(), Some("unauthenticated"));
        assert_eq!(e.to_string(), "unauthenticated: user nobody2 not found");
        let e = RpcError::from_status("iabc", 500, "boom");
        assert_eq!(e.to_string(), "HTTP 500: boom");

        let end = json!({"error": {"code": "not_found", "message": "pid 9 not found"}});
        let e = RpcError::from(
            serde_json::from_value::<EndStream>(end)
                .expect("parses")
                .into_result()
                .expect_err("an error"),
        );
        assert_eq!(e.code(), Some("not_found"));
        let e = RpcError::from_status("iabc", 502, r#"{"code":"","message":"m"}"#);
        assert!(matches!(e, RpcError::Http { status: 502, .. }), "{e}");
    }
}
