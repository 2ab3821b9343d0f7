//! `SendSignal` (spec 3.4): SIGTERM or SIGKILL to the process group of a running process; other
//! signals are `unimplemented`, unknown processes `not_found`, OS failures `internal`.

use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use nix::sys::signal::Signal as NixSignal;

use super::messages::{Empty, SendSignalRequest, Signal};
use super::{unary, Ctx};
use crate::connect::{Code, ConnectError, UnaryBody};

/// `POST /process.Process/SendSignal`.
pub(super) async fn send_signal(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
) -> Response {
    unary(&headers, &body, |req: SendSignalRequest| async move {
        let signal = match req.signal {
            Signal::Term => NixSignal::SIGTERM,
            Signal::Kill => NixSignal::SIGKILL,
            Signal::Unspecified(n) => {
                return Err(ConnectError::new(
                    Code::Unimplemented,
                    format!("signal {n} is not supported: use SIGNAL_SIGTERM or SIGNAL_SIGKILL"),
                ))
            }
        };
        let process = ctx.registry.running(&req.process)?;
        tracing::info!(pid = process.pid, %signal, "signalling process group");
        process.signal_group(signal)?;
        Ok(Empty {})
    })
    .await
}
