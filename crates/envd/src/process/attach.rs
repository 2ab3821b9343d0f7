//! `Connect` (spec 3.4) and the event forwarding shared with `Start`: the `start` event first,
//! then live data, keepalives after each silent `Keepalive-Ping-Interval`, the `end` event and the
//! end-of-stream envelope. A client that goes away only detaches; a passed deadline ends the
//! stream with `deadline_exceeded` (and, for `Start`, kills the process group).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use nix::sys::signal::Signal as NixSignal;
use tokio::time::{sleep_until, Instant};

use super::handle::{Process, Subscription};
use super::messages::{EventResponse, KeepAlive, ProcessEvent, SelectorRequest, StartEvent};
use super::Ctx;
use crate::connect::{
    after, decode_stream_request, stream_error, stream_response, CallOptions, Code, ConnectError,
    StreamSender,
};

/// The deadline of a stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    /// When it passes.
    pub at: Instant,
    /// Whether the process is killed then (`Start`), or only the stream ends (`Connect`).
    pub kill: bool,
}

/// `POST /process.Process/Connect`.
pub(super) async fn connect(State(ctx): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let opts = CallOptions::from_headers(&headers);
    let deadline = opts.deadline().map(|at| Deadline { at, kill: false });
    let req: SelectorRequest = match decode_stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let Some(selector) = req.process.selector() else {
        return stream_error(ConnectError::invalid(
            "process selector must name a pid or a tag",
        ));
    };
    let Some(process) = ctx.registry.find(&selector) else {
        return stream_error(ConnectError::not_found(format!("{selector} not found")));
    };
    let subscription = process.subscribe();
    let (sender, resp) = stream_response();
    tokio::spawn(forward(
        sender,
        process,
        subscription,
        opts.keepalive,
        deadline,
    ));
    resp
}

async fn send(sender: &StreamSender, event: &ProcessEvent) -> bool {
    sender.send(&EventResponse::from(event)).await
}

fn deadline_error() -> ConnectError {
    ConnectError::new(Code::DeadlineExceeded, "context deadline exceeded")
}

/// Forwards a process's events to one stream until the end, the deadline or a disconnect.
pub(super) async fn forward(
    sender: StreamSender,
    process: Arc<Process>,
    subscription: Subscription,
    keepalive: Duration,
    deadline: Option<Deadline>,
) {
    if !send(
        &sender,
        &ProcessEvent::Start(StartEvent { pid: process.pid }),
    )
    .await
    {
        return;
    }
    let mut rx = match subscription {
        Subscription::Ended(end) => {
            if send(&sender, &ProcessEvent::End(end)).await {
                sender.finish(Ok(())).await;
            }
            return;
        }
        Subscription::Live(rx) => rx,
    };
    let mut last = Instant::now();
    let deadline_at = deadline.map(|d| d.at);
    let passed = |now: Instant| deadline_at.is_some_and(|at| now >= at);
    loop {
        tokio::select! {
            biased;
            // Without a deadline the branch is disabled; the far instant only fills the slot.
            _ = sleep_until(deadline_at.unwrap_or_else(far_future)), if deadline_at.is_some() => {
                if deadline.is_some_and(|d| d.kill) {
                    if let Err(e) = process.signal_group(NixSignal::SIGKILL) {
                        tracing::warn!(pid = process.pid, error = %e, "killing a process at its deadline");
                    }
                }
                sender.finish(Err(deadline_error())).await;
                return;
            }
            event = rx.recv() => match event {
                Some(ProcessEvent::End(end)) => {
                    // The kill at the deadline may race this stream's own deadline branch.
                    if deadline.is_some_and(|d| d.kill) && passed(Instant::now()) {
                        sender.finish(Err(deadline_error())).await;
                    } else if send(&sender, &ProcessEvent::End(end)).await {
                        sender.finish(Ok(())).await;
                    }
                    return;
                }
                Some(event) => {
                    if !send(&sender, &event).await {
                        return;
                    }
                    last = Instant::now();
                }
                None => {
                    // The pump ended without an end event (cannot happen); end the stream cleanly.
                    match process.end() {
                        Some(end) => {
                            if send(&sender, &ProcessEvent::End(end)).await {
                                sender.finish(Ok(())).await;
                            }
                        }
                        None => sender.finish(Err(ConnectError::internal("process output ended unexpectedly"))).await,
                    }
                    return;
                }
            },
            _ = sleep_until(after(last, keepalive)) => {
                if !send(&sender, &ProcessEvent::Keepalive(KeepAlive {})).await {
                    return;
                }
                last = Instant::now();
            }
            _ = sender.closed() => return,
        }
    }
}

fn far_future() -> Instant {
    after(Instant::now(), Duration::from_secs(86400 * 365))
}
