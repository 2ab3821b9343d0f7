//! The Connect protocol's JSON codec as envd and its clients speak it (spec 3.3). Unary calls
//! are plain `application/json` bodies; server and client streams are 5-byte envelopes of
//! `application/connect+json` (a flags byte, the payload's length as a big-endian `u32`, the
//! payload), ended by an envelope with [`END_STREAM_FLAG`] whose JSON carries the stream's
//! error, if any.
//!
//! Owns: envelope framing ([`encode`], [`Decoder`] with a size limit), the end-of-stream
//! message ([`EndStream`]), the error form ([`WireError`], [`Code`]), content types and the
//! Connect headers. Does not own transport: envd wraps this in axum, its clients in hyper or
//! reqwest.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Flag bit of a compressed envelope (never negotiated by Paddock or the SDKs; refused).
pub const COMPRESSED_FLAG: u8 = 0x01;
/// Flag bit of the envelope that ends a stream.
pub const END_STREAM_FLAG: u8 = 0x02;
/// Length of an envelope's header: the flags byte and the payload's length.
pub const HEADER_LEN: usize = 5;

/// Content type of unary requests and responses.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of streaming requests and responses.
pub const CONTENT_TYPE_CONNECT_JSON: &str = "application/connect+json";
/// The header naming the Connect protocol version ([`PROTOCOL_VERSION`]).
pub const PROTOCOL_VERSION_HEADER: &str = "connect-protocol-version";
/// The Connect protocol version clients send.
pub const PROTOCOL_VERSION: &str = "1";
/// The header carrying a call's deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "connect-timeout-ms";
/// The header asking a server stream for keepalives every so many seconds.
pub const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// Every code, in the order of Connect's numbering.
    pub const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The code of a wire name, if it is one.
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The HTTP status of a unary error response with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RPC error as it travels: the JSON `{"code":…,"message":…}` of a unary error body and of
/// an end-of-stream message's `error`. The code stays text, so a client shows whatever the
/// server sent; [`WireError::code`] reads it as a [`Code`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// The snake_case Connect code (`not_found`, `unauthenticated`…).
    #[serde(default)]
    pub code: String,
    /// The human-readable message.
    #[serde(default)]
    pub message: String,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        WireError {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }

    /// The code, if it is one of Connect's.
    pub fn code(&self) -> Option<Code> {
        Code::from_name(&self.code)
    }

    /// The JSON body of a unary error response.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"code":"internal"}"#.into())
    }
}

/// The end-of-stream message: `{}` for success, `{"error":{"code":…,"message":…}}` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStream {
    /// The stream's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl EndStream {
    /// The end of a stream with `result`.
    pub fn new(result: Result<(), WireError>) -> Self {
        EndStream {
            error: result.err(),
        }
    }

    /// Parses an end-of-stream payload (an empty one is `{}`).
    pub fn parse(payload: &[u8]) -> Result<Self, serde_json::Error> {
        decode_json(payload)
    }

    /// The stream's outcome; an error without a code counts as `unknown`.
    pub fn into_result(self) -> Result<(), WireError> {
        match self.error {
            None => Ok(()),
            Some(mut err) => {
                if err.code.is_empty() {
                    err.code = Code::Unknown.as_str().into();
                }
                Err(err)
            }
        }
    }

    /// The whole end-of-stream envelope.
    pub fn encode(&self) -> Bytes {
        let json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        encode(END_STREAM_FLAG, &json)
    }
}

/// Frames one envelope: `flags`, the payload's length (big-endian `u32`), the payload.
///
/// Payloads are bounded far below 4 GiB by every [`Decoder`] limit in use; a larger one would
/// not be representable and is a caller's bug.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.put_u8(flags);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Decodes a JSON message; an empty (or all-whitespace) payload is the empty message `{}`, as
/// proto3 JSON writes a message whose fields all have their default values.
pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, serde_json::Error> {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload)
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message.
    Message(Bytes),
    /// The end-of-stream message (see [`EndStream::parse`]).
    End(Bytes),
}

/// A byte stream that cannot be split into envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A compressed envelope although no compression was negotiated.
    #[error("a compressed Connect envelope (no compression was negotiated)")]
    Compressed,
    /// An envelope longer than the decoder's limit.
    #[error("a Connect envelope of {len} bytes (the limit is {limit})")]
    TooLarge {
        /// The envelope's payload length.
        len: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// The stream ended in the middle of an envelope.
    #[error("the stream ended inside a Connect envelope ({0} bytes left over)")]
    Truncated(usize),
}

/// Splits a byte stream into envelopes, wherever its chunks happen to cut it. Push chunks as
/// they arrive, take envelopes with [`Decoder::next_frame`], and call [`Decoder::finish`] at the end
/// of the stream.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limit: usize,
}

impl Decoder {
    /// A decoder of envelopes whose payloads carry at most `limit` bytes each.
    pub fn new(limit: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// The largest payload accepted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Whether no byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete envelope; `Ok(None)` until one is fully buffered. A compressed or
    /// oversized envelope is refused as soon as its header is in.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        if flags & COMPRESSED_FLAG != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(if flags & END_STREAM_FLAG != 0 {
            Frame::End(payload)
        } else {
            Frame::Message(payload)
        }))
    }

    /// Checks, at the end of the stream, that it ended between envelopes.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame of `wire`, pushed in two parts cut at `cut`.
    fn frames_cut_at(wire: &[u8], cut: usize, limit: usize) -> Vec<Frame> {
        let mut d = Decoder::new(limit);
        let mut frames = Vec::new();
        for part in [&wire[..cut], &wire[cut..]] {
            d.push(part);
            while let Some(frame) = d.next_frame().expect("well-formed") {
                frames.push(frame);
            }
        }
        d.finish().expect("ends between envelopes");
        frames
    }

    #[test]
    fn envelopes_round_trip_wherever_the_chunks_cut() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&encode(0, br#"{"event":{"start":{"pid":7}}}"#));
        wire.extend_from_slice(&encode(0, b""));
        wire.extend_from_slice(&EndStream::default().encode());
        for cut in 0..=wire.len() {
            assert_eq!(
                frames_cut_at(&wire, cut, 64),
                vec![
                    Frame::Message(Bytes::from_static(br#"{"event":{"start":{"pid":7}}}"#)),
                    Frame::Message(Bytes::new()),
                    Frame::End(Bytes::from_static(b"{}")),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_header_is_flags_then_a_big_endian_length() {
        assert_eq!(&encode(0, b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
        let big = vec![b'x'; 0x01_0203];
        assert_eq!(&encode(END_STREAM_FLAG, &big)[..5], &[2, 0, 1, 2, 3]);
    }

    #[test]
    fn oversized_envelopes_are_refused_from_their_header() {
        let mut d = Decoder::new(8);
        d.push(&encode(0, b"12345678"));
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Message(_)))));
        // Only the header of the oversized one is in: refused without waiting for the rest.
        d.push(&[0, 0, 0, 0, 9]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 9, limit: 8 })
        );
        let mut d = Decoder::new(usize::MAX >> 1);
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Ok(None),
            "within the limit, but not all in yet"
        );
        assert_eq!(d.finish(), Err(FrameError::Truncated(5)));
    }

    #[test]
    fn compressed_and_truncated_streams_are_refused() {
        let mut d = Decoder::new(64);
        d.push(&encode(COMPRESSED_FLAG, b"x"));
        assert_eq!(d.next_frame(), Err(FrameError::Compressed));
        let mut d = Decoder::new(64);
        d.push(&[0, 0, 0, 0, 9, b'{']);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(!d.is_empty());
        assert_eq!(d.finish(), Err(FrameError::Truncated(6)));
    }

    #[test]
    fn end_stream_errors_parse_and_encode() {
        assert_eq!(
            EndStream::parse(b"{}").expect("clean").into_result(),
            Ok(())
        );
        assert_eq!(EndStream::parse(b"").expect("empty").into_result(), Ok(()));
        let err = EndStream::parse(br#"{"error":{"code":"unauthenticated","message":"no user"}}"#)
            .expect("parses")
            .into_result()
            .expect_err("an error");
        assert_eq!(err.code(), Some(Code::Unauthenticated));
        assert_eq!(err.to_string(), "unauthenticated: no user");
        // Codes are kept as sent; a missing one is `unknown`.
        let err = EndStream::parse(br#"{"error":{"message":"m"}}"#)
            .expect("parses")
            .into_result()
            .expect_err("an error");
        assert_eq!((err.code.as_str(), err.message.as_str()), ("unknown", "m"));
        assert!(EndStream::parse(b"{").is_err());

        assert_eq!(&EndStream::new(Ok(())).encode()[..], b"\x02\0\0\0\x02{}");
        let end = EndStream::new(Err(WireError::new(Code::NotFound, "gone"))).encode();
        assert_eq!(end[0], END_STREAM_FLAG);
        assert_eq!(
            &end[5..],
            br#"{"error":{"code":"not_found","message":"gone"}}"#
        );
    }

    #[test]
    fn codes_round_trip_their_names() {
        for code in Code::ALL {
            assert_eq!(Code::from_name(code.as_str()), Some(code));
        }
        assert_eq!(Code::from_name("nope"), None);
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::ResourceExhausted.http_status(), 429);
        assert_eq!(
            WireError::new(Code::Internal, "x").to_json(),
            r#"{"code":"internal","message":"x"}"#
        );
    }

    #[test]
    fn empty_payloads_are_empty_messages() {
        let v: serde_json::Value = decode_json(b"").expect("empty");
        assert_eq!(v, serde_json::json!({}));
        let v: serde_json::Value = decode_json(b" \n").expect("blank");
        assert_eq!(v, serde_json::json!({}));
        let v: serde_json::Value = decode_json(br#"{"a":1}"#).expect("json");
        assert_eq!(v, serde_json::json!({"a":1}));
    }
}
