//! Input RPCs (spec 3.4): `SendInput` (unary), `StreamInput` (client stream: a `start` envelope
//! naming the process, then `data` envelopes; keepalives ignored) and `CloseStdin`.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};

use super::messages::{Empty, ProcessInput, SelectorRequest, SendInputRequest, StreamInputRequest};
use super::{unary, Ctx};
use crate::connect::{
    require_stream_content_type, stream_error, ConnectError, EnvelopeReader, UnaryBody,
};
use paddock_envd_proto::connect::{encode, EndStream, CONTENT_TYPE_CONNECT_JSON};

/// Writes one `ProcessInput` to a process.
async fn write(
    ctx: &Ctx,
    process: &super::messages::ProcessSelectorJson,
    input: ProcessInput,
) -> Result<(), ConnectError> {
    let process = ctx.registry.running(process)?;
    match (input.stdin, input.pty) {
        (Some(data), _) => process.write_input(&data.0, false).await,
        (None, Some(data)) => process.write_input(&data.0, true).await,
        (None, None) => Ok(()),
    }
}

/// `POST /process.Process/SendInput`.
pub(super) async fn send_input(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
) -> Response {
    unary(&headers, &body, |req: SendInputRequest| async move {
        write(&ctx, &req.process, req.input).await?;
        Ok(Empty {})
    })
    .await
}

/// `POST /process.Process/CloseStdin`.
pub(super) async fn close_stdin(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
) -> Response {
    unary(&headers, &body, |req: SelectorRequest| async move {
        ctx.registry.running(&req.process)?.close_stdin().await?;
        Ok(Empty {})
    })
    .await
}

/// `POST /process.Process/StreamInput`.
pub(super) async fn stream_input(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = require_stream_content_type(&headers) {
        return stream_error(e);
    }
    match consume(&ctx, EnvelopeReader::new(body)).await {
        Ok(()) => client_stream_ok(),
        Err(e) => stream_error(e),
    }
}

async fn consume(ctx: &Ctx, mut reader: EnvelopeReader) -> Result<(), ConnectError> {
    let first: StreamInputRequest = reader
        .next()
        .await?
        .ok_or_else(|| ConnectError::invalid("missing the start message"))?;
    let Some(start) = first.start else {
        return Err(ConnectError::invalid(
            "the first message of StreamInput must be start",
        ));
    };
    // Fail early on an unknown process.
    ctx.registry.running(&start.process)?;
    while let Some(msg) = reader.next::<StreamInputRequest>().await? {
        if let Some(data) = msg.data {
            write(ctx, &start.process, data.input).await?;
        }
    }
    Ok(())
}

/// The response of a successful client stream: one empty message, then end-of-stream.
fn client_stream_ok() -> Response {
    let mut body = encode(0, b"{}").to_vec();
    body.extend_from_slice(&EndStream::default().encode());
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_CONNECT_JSON),
    );
    resp
}
