//! envd's side of the Connect protocol as the E2B SDKs speak it (spec 3.3) on axum: JSON codec
//! only, unary calls as plain `application/json`, server/client streams as 5-byte envelopes of
//! `application/connect+json` with a mandatory end-of-stream envelope that carries errors. The
//! framing, the error form and the codes are `paddock_envd_proto::connect`'s.
//!
//! Owns: the server's error type ([`ConnectError`], an HTTP response), request decoding (with size limits: [`MAX_UNARY_BODY`] for unary bodies,
//! [`MAX_STREAM_REQUEST`] for the request of a server stream, [`MAX_MESSAGE`] per client-stream
//! envelope), unary and streaming response encoding, per-call headers (`Connect-Timeout-Ms`,
//! `Keepalive-Ping-Interval`, both clamped). Does not own any RPC's semantics.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use paddock_envd_proto::connect::{
    decode_json, Decoder, EndStream, Frame, FrameError, WireError, CONTENT_TYPE_CONNECT_JSON,
    CONTENT_TYPE_JSON, KEEPALIVE_HEADER, TIMEOUT_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

pub use paddock_envd_proto::connect::Code;
pub use paddock_envd_proto::pbjson;

/// Largest request message of a client stream (`StreamInput`) accepted (64 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest request message of a server-streaming call (`Start`, `Connect`, `WatchDir`): 4 MiB.
pub const MAX_STREAM_REQUEST: usize = 4 << 20;
/// Largest unary request body accepted (64 MiB, like [`MAX_MESSAGE`]); see [`body_limit`].
pub const MAX_UNARY_BODY: usize = MAX_MESSAGE;
/// Largest honoured `Keepalive-Ping-Interval` (one day).
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(86_400);
/// Largest honoured `Connect-Timeout-Ms` (30 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);

/// An RPC error: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ConnectError {
    /// The Connect code.
    pub code: Code,
    /// The message shown to the SDK user.
    pub message: String,
}

impl ConnectError {
    /// Builds an error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }
    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    /// `resource_exhausted`.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// The error as it travels.
    pub fn wire(&self) -> WireError {
        WireError::new(self.code, self.message.clone())
    }
}

impl IntoResponse for ConnectError {
    /// The unary error form: HTTP status from the code table, JSON body with a string code.
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.wire().to_json()).into_response();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_JSON),
        );
        resp
    }
}

/// Per-call options read from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOptions {
    /// `Connect-Timeout-Ms`, when present and non-zero; at most [`MAX_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// `Keepalive-Ping-Interval` in seconds (default 90 s); at most [`MAX_KEEPALIVE`].
    pub keepalive: Duration,
}

impl CallOptions {
    /// Reads the Connect call options from request headers, clamping absurd values so that
    /// deadlines computed from them never overflow.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let timeout = num(TIMEOUT_HEADER)
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis(ms).min(MAX_TIMEOUT));
        let keepalive = Duration::from_secs(num(KEEPALIVE_HEADER).filter(|&s| s > 0).unwrap_or(90))
            .min(MAX_KEEPALIVE);
        CallOptions { timeout, keepalive }
    }

    /// The instant the call's deadline passes, if it has one.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.timeout.map(|t| after(tokio::time::Instant::now(), t))
    }
}

/// `at + d`, saturating at a far-away instant instead of overflowing.
pub fn after(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(MAX_TIMEOUT))
        .unwrap_or(at)
}

/// The body-size layer of the Connect routers: unary bodies up to [`MAX_UNARY_BODY`] (axum's
/// default of 2 MiB is too small for `SendInput`). Streaming bodies are not affected; their
/// envelopes are limited by [`EnvelopeReader`].
pub fn body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_UNARY_BODY)
}

/// The whole body of a unary call. A body over the router's limit is rejected with a Connect
/// `resource_exhausted` error (not axum's plain-text 413).
#[derive(Debug, Clone)]
pub struct UnaryBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for UnaryBody {
    type Rejection = ConnectError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(body) => Ok(UnaryBody(body)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ConnectError::exhausted(
                format!("request message too large: the limit is {MAX_UNARY_BODY} bytes"),
            )),
            Err(e) => Err(ConnectError::new(
                Code::Canceled,
                format!("reading request: {}", e.body_text()),
            )),
        }
    }
}

/// Decodes a unary request body (`application/json`; an empty body is `{}`).
pub fn decode_unary<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ConnectError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(CONTENT_TYPE_JSON);
    if !ct.starts_with(CONTENT_TYPE_JSON) {
        return Err(ConnectError::new(
            Code::Unimplemented,
            format!(
                "unsupported content type {ct:?}: Paddock's envd speaks the Connect JSON codec"
            ),
        ));
    }
    decode_json(body).map_err(|e| ConnectError::invalid(format!("invalid request message: {e}")))
}

/// The unary success response: HTTP 200 with the JSON message.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response {
    match serde_json::to_vec(msg) {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_JSON),
            );
            resp
        }
        Err(e) => ConnectError::internal(format!("encoding response: {e}")).into_response(),
    }
}

/// Incremental decoder of request envelopes (client streams, and the single envelope of
/// server-streaming calls, possibly split across chunked HTTP/1.1 frames).
pub struct EnvelopeReader {
    body: axum::body::BodyDataStream,
    decoder: Decoder,
    /// The body has ended (its stream returned `None`).
    body_ended: bool,
}

impl EnvelopeReader {
    /// Wraps a client-stream request body (envelopes up to [`MAX_MESSAGE`]).
    pub fn new(body: Body) -> Self {
        Self::with_limit(body, MAX_MESSAGE)
    }

    /// Wraps a request body whose envelopes may carry at most `limit` bytes each.
    pub fn with_limit(body: Body, limit: usize) -> Self {
        EnvelopeReader {
            body: body.into_data_stream(),
            decoder: Decoder::new(limit),
            body_ended: false,
        }
    }

    /// Returns the next message, `Ok(None)` at the end of the body or after an end-stream envelope.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        loop {
            match self.decoder.next_frame().map_err(request_frame_error)? {
                Some(Frame::End(_)) => return Ok(None),
                Some(Frame::Message(payload)) => {
                    return decode_json(&payload).map(Some).map_err(|e| {
                        ConnectError::invalid(format!("invalid request message: {e}"))
                    })
                }
                None => {}
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.decoder.push(&chunk),
                Some(Err(e)) => {
                    return Err(ConnectError::new(
                        Code::Canceled,
                        format!("reading request: {e}"),
                    ))
                }
                None => {
                    self.body_ended = true;
                    self.decoder.finish().map_err(request_frame_error)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads the request body to its end, which must carry no further message (an end-stream
    /// envelope, and anything after it, is allowed).
    ///
    /// A server-streaming call must not answer before its request body has ended: hyper closes
    /// a connection whose request body was dropped unread as soon as the response is done, so
    /// a client (or the proxy) still writing the body's last chunk, e.g. a chunked body's
    /// terminator that arrives a few ms late under load, gets a broken pipe instead of the
    /// response. connect-go reads the body to its end before calling the handler as well.
    pub async fn expect_end(mut self) -> Result<(), ConnectError> {
        if self.next::<serde::de::IgnoredAny>().await?.is_some() {
            return Err(ConnectError::invalid(
                "a server-streaming request carries exactly one message",
            ));
        }
        while !self.body_ended {
            match self.body.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(ConnectError::new(
                        Code::Canceled,
                        format!("reading request: {e}"),
                    ))
                }
                None => self.body_ended = true,
            }
        }
        Ok(())
    }
}

/// The Connect error for a request body that is not a sequence of envelopes.
fn request_frame_error(e: FrameError) -> ConnectError {
    match e {
        FrameError::TooLarge { len, limit } => ConnectError::exhausted(format!(
            "request message too large: {len} bytes, the limit is {limit}"
        )),
        FrameError::Compressed => {
            ConnectError::new(Code::Unimplemented, "compressed messages are not supported")
        }
        FrameError::Truncated(_) => ConnectError::invalid("request body ends inside an envelope"),
    }
}

/// Checks that a streaming request is `application/connect+json`.
pub fn require_stream_content_type(headers: &HeaderMap) -> Result<(), ConnectError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with(CONTENT_TYPE_CONNECT_JSON) {
        return Ok(());
    }
    Err(ConnectError::new(
        Code::Unimplemented,
        format!("unsupported content type {ct:?}: expected {CONTENT_TYPE_CONNECT_JSON}"),
    ))
}

/// Reads the one request message of a server-streaming call, and the request body to its end
/// (see [`EnvelopeReader::expect_end`]).
pub async fn decode_stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ConnectError> {
    require_stream_content_type(headers)?;
    let mut reader = EnvelopeReader::with_limit(body, MAX_STREAM_REQUEST);
    let message = reader
        .next()
        .await?
        .ok_or_else(|| ConnectError::invalid("missing request message"))?;
    reader.expect_end().await?;
    Ok(message)
}

/// Sending half of a streaming response. Dropping it without [`StreamSender::finish`] still ends
/// the stream properly (with an `unknown` error), so the client never misses the end envelope.
pub struct StreamSender {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl StreamSender {
    /// Sends one message. Returns false once the client has gone away.
    pub async fn send<T: Serialize>(&self, msg: &T) -> bool {
        let Some(tx) = &self.tx else { return false };
        match serde_json::to_vec(msg) {
            Ok(payload) => tx
                .send(paddock_envd_proto::connect::encode(0, &payload))
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Whether the client has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        if let Some(tx) = &self.tx {
            tx.closed().await;
        }
    }

    /// Ends the stream with `{}` or `{"error":…}`.
    pub async fn finish(mut self, result: Result<(), ConnectError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(end_envelope(result)).await;
        }
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(end_envelope(Err(ConnectError::new(
                Code::Unknown,
                "stream ended unexpectedly",
            ))));
        }
    }
}

fn end_envelope(result: Result<(), ConnectError>) -> Bytes {
    EndStream::new(result.map_err(|e| e.wire())).encode()
}

/// Creates a streaming response (HTTP 200, `application/connect+json`) and its sender.
pub fn stream_response() -> (StreamSender, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_CONNECT_JSON),
    );
    (StreamSender { tx: Some(tx) }, resp)
}

/// A streaming response that fails at once (errors of streams travel in the end envelope).
pub fn stream_error(err: ConnectError) -> Response {
    let mut resp = Response::new(Body::from(end_envelope(Err(err))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_CONNECT_JSON),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_envd_proto::connect::{encode, END_STREAM_FLAG};

    #[tokio::test]
    async fn envelopes_split_across_chunks_are_reassembled() {
        let env = encode(0, br#"{"a":1}"#);
        let (a, b) = env.split_at(3);
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut r = EnvelopeReader::new(body);
        let v: Option<serde_json::Value> = r.next().await.expect("decodes");
        assert_eq!(v, Some(serde_json::json!({"a":1})));
        assert_eq!(r.next::<serde_json::Value>().await.expect("eof"), None);
    }

    #[test]
    fn call_options_parse_headers() {
        let mut h = HeaderMap::new();
        h.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        h.insert("keepalive-ping-interval", HeaderValue::from_static("50"));
        let o = CallOptions::from_headers(&h);
        assert_eq!(o.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(o.keepalive, Duration::from_secs(50));
        assert_eq!(CallOptions::from_headers(&HeaderMap::new()).timeout, None);
    }

    #[test]
    fn huge_call_options_are_clamped_and_never_overflow() {
        let mut h = HeaderMap::new();
        h.insert(
            "connect-timeout-ms",
            HeaderValue::from_static("18446744073709551615"),
        );
        h.insert(
            "keepalive-ping-interval",
            HeaderValue::from_static("18446744073709551615"),
        );
        let o = CallOptions::from_headers(&h);
        assert_eq!(o.timeout, Some(MAX_TIMEOUT));
        assert_eq!(o.keepalive, MAX_KEEPALIVE);
        let now = tokio::time::Instant::now();
        assert!(o.deadline().expect("deadline") > now);
        // Even unclamped durations saturate instead of panicking.
        assert!(after(now, Duration::MAX) > now);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }

    fn stream_body(flags: u8, payload: &[u8]) -> (HeaderMap, Body) {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_CONNECT_JSON),
        );
        (h, Body::from(encode(flags, payload)))
    }

    #[tokio::test]
    async fn stream_requests_are_limited_to_4_mib_but_client_streams_are_not() {
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_STREAM_REQUEST));
        let (h, body) = stream_body(0, big.as_bytes());
        let err = decode_stream_request::<serde_json::Value>(&h, body)
            .await
            .expect_err("too large");
        assert_eq!(err.code, Code::ResourceExhausted);
        let (_, body) = stream_body(0, big.as_bytes());
        let v: Option<serde_json::Value> = EnvelopeReader::new(body).next().await.expect("decodes");
        assert_eq!(
            v.expect("message")["a"].as_str().map(str::len),
            Some(MAX_STREAM_REQUEST)
        );
        let (h, body) = stream_body(0, br#"{"a":1}"#);
        let v: serde_json::Value = decode_stream_request(&h, body).await.expect("small");
        assert_eq!(v, serde_json::json!({"a":1}));
    }

    /// A body of `chunks` whose end records that it was reached.
    fn body_noting_its_end(
        chunks: Vec<Bytes>,
    ) -> (Body, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let chunks = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let end = futures::stream::poll_fn(move |_| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            std::task::Poll::Ready(None)
        });
        (Body::from_stream(chunks.chain(end)), ended)
    }

    #[tokio::test]
    async fn stream_requests_are_read_to_the_end_of_the_body() {
        let (h, _) = stream_body(0, b"");
        // The message, then a separate (empty) last chunk, as a chunked body ends.
        let (body, ended) = body_noting_its_end(vec![encode(0, br#"{"a":1}"#), Bytes::new()]);
        let v: serde_json::Value = decode_stream_request(&h, body).await.expect("decodes");
        assert_eq!(v, serde_json::json!({"a":1}));
        assert!(
            ended.load(std::sync::atomic::Ordering::SeqCst),
            "the request body was left unread"
        );

        // An end-stream envelope may follow, and bytes after it are drained.
        let (body, ended) = body_noting_its_end(vec![
            encode(0, br#"{"a":2}"#),
            encode(END_STREAM_FLAG, b"{}"),
            Bytes::from_static(b"trailing"),
        ]);
        let v: serde_json::Value = decode_stream_request(&h, body).await.expect("decodes");
        assert_eq!(v, serde_json::json!({"a":2}));
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst));

        // A second message is refused.
        let (body, _) =
            body_noting_its_end(vec![encode(0, br#"{"a":1}"#), encode(0, br#"{"a":2}"#)]);
        let err = decode_stream_request::<serde_json::Value>(&h, body)
            .await
            .expect_err("two messages");
        assert_eq!(err.code, Code::InvalidArgument);
    }

    #[tokio::test]
    async fn oversize_unary_bodies_are_connect_errors() {
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/x",
                axum::routing::post(|UnaryBody(b): UnaryBody| async move { b.len().to_string() }),
            )
            .layer(DefaultBodyLimit::max(16));
        let send = |n: usize| {
            let req = http::Request::post("/x")
                .body(Body::from(vec![b' '; n]))
                .expect("req");
            app.clone().oneshot(req)
        };
        let ok = send(16).await.expect("response");
        assert_eq!(ok.status(), StatusCode::OK);
        let resp = send(17).await.expect("response");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["code"], "resource_exhausted");
    }

    #[test]
    fn unary_error_uses_code_table() {
        let resp = ConnectError::not_found("nope").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
