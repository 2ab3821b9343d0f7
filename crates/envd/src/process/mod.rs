//! The Connect service `process.Process` (spec 3.4): starting commands with pipes or a PTY,
//! attaching to them, input, signals, resizing and listing. Processes live in the
//! [`ProcessRegistry`], independent of the HTTP requests that started them; exited ones are
//! retained for [`RETAIN_EXITED`] so `Connect` can still replay their end.
//!
//! Files: [`messages`] (JSON types), [`spawn`] (fork/exec), [`spawner`] (the helper process
//! that forks children straight into the user cgroup), [`handle`] (one process and its
//! output pump), [`reaper`] (the PID-1 zombie reaper), [`pty`] (terminals), [`rlimit`] (the
//! open-files limit), and one file per RPC group: `start.rs`, `attach.rs` (Connect), `input.rs`, `signal.rs`, `update.rs`.
use paddock_envd_proto::rpc;

mod attach;
pub mod cgroup;
pub mod handle;
mod input;
pub mod messages;
pub mod oom;
pub mod pty;
pub mod reaper;
pub mod rlimit;
mod signal;
pub mod spawn;
pub mod spawner;
mod start;
mod update;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::HeaderMap;

use crate::connect::{body_limit, decode_unary, unary_ok, ConnectError, UnaryBody};
use crate::state::EnvdState;
use handle::Process;
use messages::{ListResponse, ProcessInfo, ProcessSelectorJson, Selector};

/// How long an exited process stays connectable.
pub const RETAIN_EXITED: Duration = Duration::from_secs(30);

/// All processes envd started and has not forgotten yet. Cheap to clone.
#[derive(Clone, Default)]
pub struct ProcessRegistry {
    inner: Arc<Mutex<HashMap<u32, Arc<Process>>>>,
}

impl ProcessRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a process.
    pub fn insert(&self, process: Arc<Process>) {
        self.map().insert(process.pid, process);
    }

    /// Forgets `process` (unless its pid was reused by a newer one).
    pub fn remove(&self, process: &Arc<Process>) {
        let mut map = self.map();
        if map
            .get(&process.pid)
            .is_some_and(|p| Arc::ptr_eq(p, process))
        {
            map.remove(&process.pid);
        }
    }

    /// Finds a process, running or recently exited.
    pub fn find(&self, selector: &Selector) -> Option<Arc<Process>> {
        let map = self.map();
        match selector {
            Selector::Pid(pid) => map.get(pid).cloned(),
            Selector::Tag(tag) => {
                let mut found: Vec<_> = map
                    .values()
                    .filter(|p| p.tag.as_ref() == Some(tag))
                    .cloned()
                    .collect();
                // Prefer a running one when a tag was reused.
                found.sort_by_key(|p| !p.is_running());
                found.into_iter().next()
            }
        }
    }

    /// Finds a running process (`not_found` otherwise, naming the selector).
    pub fn running(&self, selector: &ProcessSelectorJson) -> Result<Arc<Process>, ConnectError> {
        let selector = selector
            .selector()
            .ok_or_else(|| ConnectError::invalid("process selector must name a pid or a tag"))?;
        self.find(&selector)
            .filter(|p| p.is_running())
            .ok_or_else(|| ConnectError::not_found(format!("{selector} not found")))
    }

    /// The running processes, ordered by pid.
    pub fn list(&self) -> Vec<Arc<Process>> {
        let mut procs: Vec<_> = self
            .map()
            .values()
            .filter(|p| p.is_running())
            .cloned()
            .collect();
        procs.sort_by_key(|p| p.pid);
        procs
    }
}

/// What the process handlers share.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: EnvdState,
    pub registry: ProcessRegistry,
}

/// Routes of the process service: `POST /process.Process/<Method>`.
pub fn router(state: EnvdState, registry: ProcessRegistry) -> Router {
    Router::new()
        .route(rpc::PROCESS_START, post(start::start))
        .route(rpc::PROCESS_CONNECT, post(attach::connect))
        .route(rpc::PROCESS_LIST, post(list))
        .route(rpc::PROCESS_SEND_INPUT, post(input::send_input))
        .route(rpc::PROCESS_STREAM_INPUT, post(input::stream_input))
        .route(rpc::PROCESS_CLOSE_STDIN, post(input::close_stdin))
        .route(rpc::PROCESS_SEND_SIGNAL, post(signal::send_signal))
        .route(rpc::PROCESS_UPDATE, post(update::update))
        .layer(body_limit())
        .with_state(Ctx { state, registry })
}

/// Decodes a unary request, runs `f` and encodes its result.
pub(crate) async fn unary<Req, Resp, Fut>(
    headers: &HeaderMap,
    body: &Bytes,
    f: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    Fut: std::future::Future<Output = Result<Resp, ConnectError>>,
{
    let req = match decode_unary::<Req>(headers, body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match f(req).await {
        Ok(resp) => unary_ok(&resp),
        Err(e) => e.into_response(),
    }
}

/// `List`: the running processes with their original configuration.
async fn list(State(ctx): State<Ctx>, headers: HeaderMap, UnaryBody(body): UnaryBody) -> Response {
    unary(&headers, &body, |_: messages::Empty| async move {
        let processes = ctx
            .registry
            .list()
            .into_iter()
            .map(|p| ProcessInfo {
                config: p.config.clone(),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect();
        Ok(ListResponse { processes })
    })
    .await
}
