//! `Start` (spec 3.4): resolves user, cwd and environment, spawns the process, registers it,
//! starts its output pump and its lifetime timer (`Connect-Timeout-Ms`), and attaches the
//! request's stream to it. The process outlives the request: a disconnect only detaches.
//!
//! Everything blocking (reading `/etc/passwd`, `openpty`, fork/exec under the reaper's lock) runs
//! on the blocking pool, and the process is registered and pumped there too, so a client that
//! goes away while the spawn is in flight cannot leave an untracked child behind.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use nix::sys::signal::Signal as NixSignal;
use tokio::time::Instant;

use super::attach::{forward, Deadline};
use super::handle::{pump, Process, Subscription};
use super::messages::StartRequest;
use super::spawn::{spawn, SpawnSpec, Spawned};
use super::{Ctx, ProcessRegistry, RETAIN_EXITED};
use crate::connect::{
    decode_stream_request, stream_error, stream_response, CallOptions, ConnectError,
};
use crate::users::{basic_auth_user, resolve_path};

/// `POST /process.Process/Start`.
pub(super) async fn start(State(ctx): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let opts = CallOptions::from_headers(&headers);
    let deadline = opts.deadline();
    let req: StartRequest = match decode_stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let launched = tokio::task::spawn_blocking(move || launch(&ctx, &headers, req, deadline)).await;
    let (process, subscription) = match launched {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => return stream_error(e),
        Err(e) => return stream_error(ConnectError::internal(format!("start task failed: {e}"))),
    };
    let (sender, resp) = stream_response();
    let deadline = deadline.map(|at| Deadline { at, kill: true });
    tokio::spawn(forward(
        sender,
        process,
        subscription,
        opts.keepalive,
        deadline,
    ));
    resp
}

/// Spawns the process and registers it with its pump and deadline. Runs on the blocking pool
/// (inside the runtime, so tasks can be spawned and fds registered).
fn launch(
    ctx: &Ctx,
    headers: &HeaderMap,
    req: StartRequest,
    deadline: Option<Instant>,
) -> Result<(Arc<Process>, Subscription), ConnectError> {
    let spawned = prepare(ctx, headers, req)?;
    let process = spawned.process.clone();
    // Subscribe before the pump runs so no output is lost.
    let subscription = process.subscribe();
    ctx.registry.insert(process.clone());
    tokio::spawn(run(ctx.registry.clone(), spawned));
    if let Some(at) = deadline {
        tokio::spawn(kill_at(process.clone(), at));
    }
    Ok((process, subscription))
}

fn prepare(ctx: &Ctx, headers: &HeaderMap, req: StartRequest) -> Result<Spawned, ConnectError> {
    if req.process.cmd.is_empty() {
        return Err(ConnectError::invalid("process.cmd must not be empty"));
    }
    let user = ctx.state.rpc_user(basic_auth_user(headers).as_deref())?;
    let cfg = ctx.state.config();
    let cwd = resolve_path(
        req.process.cwd.as_deref().unwrap_or(""),
        &user,
        cfg.default_workdir.as_deref(),
    )
    .map_err(|e| ConnectError::invalid(e.to_string()))?;
    let pty = req.pty.map(|p| p.size.unwrap_or_default());
    let user_name = user.name.clone();
    let spawned = spawn(SpawnSpec {
        config: req.process,
        tag: req.tag,
        user,
        cwd: cwd.clone(),
        global_env: ctx.state.global_env(),
        pty,
        stdin: req.stdin.unwrap_or(true),
    })?;
    log_started(&spawned.process, &user_name, &cwd);
    Ok(spawned)
}

/// The `process started` record of the sandbox logs (see `crate::logging`).
fn log_started(process: &Process, user: &str, cwd: &std::path::Path) {
    let cmdline = std::iter::once(process.config.cmd.as_str())
        .chain(process.config.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let args = serde_json::to_string(&process.config.args).unwrap_or_default();
    tracing::info!(
        event = "process_start",
        pid = process.pid,
        cmd = %process.config.cmd,
        args = %args,
        user = %user,
        cwd = %cwd.display(),
        tag = %process.tag.as_deref().unwrap_or(""),
        "process started: {cmdline}"
    );
}

/// Pumps the output to the end, then forgets the process after the retention period.
async fn run(registry: ProcessRegistry, spawned: Spawned) {
    let process = spawned.process.clone();
    pump(spawned.process, spawned.output, spawned.exit).await;
    tokio::time::sleep(RETAIN_EXITED).await;
    registry.remove(&process);
}

/// Kills the process group when the `Start` deadline passes (even with no client attached).
async fn kill_at(process: Arc<Process>, at: Instant) {
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        () = process.wait_ended() => return,
    }
    if process.is_running() {
        tracing::info!(
            pid = process.pid,
            "process deadline exceeded: killing its process group"
        );
        if let Err(e) = process.signal_group(NixSignal::SIGKILL) {
            tracing::warn!(pid = process.pid, error = %e, "killing a process at its deadline");
        }
    }
}
