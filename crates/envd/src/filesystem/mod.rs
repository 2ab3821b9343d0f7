//! The Connect service `filesystem.Filesystem` (spec 3.5): `Stat`, `MakeDir`, `Move`,
//! `ListDir`, `Remove` and the sync watcher trio `CreateWatcher`/`GetWatcherEvents`/
//! `RemoveWatcher` as unary calls, and `WatchDir` as a server stream.
//!
//! Each operation lives in its own module as a plain blocking function over an acting
//! [`User`]; this module only decodes requests, picks the user from Basic auth, runs the
//! operation off the async workers and encodes the answer. HTTP `/files` lives in
//! [`crate::files`].
use paddock_envd_proto::rpc;

pub mod entry;
pub mod list_dir;
pub mod make_dir;
pub mod messages;
pub mod move_;
pub mod remove;
pub mod stat;
pub mod watch;
pub mod watchers;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use http::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connect::{body_limit, decode_unary, unary_ok, ConnectError, UnaryBody};
use crate::state::EnvdState;
use crate::users::{basic_auth_user, resolve_path, User};

use self::messages::{EntryInfo, EntryResponse, ListDirResponse};

/// The acting user and path rules of one request, handed to every operation.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who acts (Basic auth user, else the default user).
    pub user: User,
    /// Default workdir for empty paths.
    pub default_workdir: Option<String>,
}

impl Caller {
    /// Resolves a client path with the spec 3.2 rules (`~`, relative to home, cleaned).
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ConnectError> {
        resolve_path(path, &self.user, self.default_workdir.as_deref())
            .map_err(|e| ConnectError::invalid(e.to_string()))
    }
}

/// Picks the acting user of an RPC from its Basic auth header.
pub fn caller(state: &EnvdState, headers: &HeaderMap) -> Result<Caller, ConnectError> {
    let user = state.rpc_user(basic_auth_user(headers).as_deref())?;
    Ok(Caller {
        user,
        default_workdir: state.config().default_workdir,
    })
}

/// Routes of the filesystem service.
pub fn router() -> Router<EnvdState> {
    let watchers = Arc::new(watchers::Watchers::default());
    Router::new()
        .route(
            rpc::FILESYSTEM_STAT,
            post(|s: State<EnvdState>, h: HeaderMap, b: UnaryBody| unary(s, h, b, stat::stat)),
        )
        .route(
            rpc::FILESYSTEM_MAKE_DIR,
            post(|s: State<EnvdState>, h: HeaderMap, b: UnaryBody| {
                unary(s, h, b, make_dir::make_dir)
            }),
        )
        .route(
            rpc::FILESYSTEM_MOVE,
            post(|s: State<EnvdState>, h: HeaderMap, b: UnaryBody| {
                unary(s, h, b, move_::move_entry)
            }),
        )
        .route(
            rpc::FILESYSTEM_LIST_DIR,
            post(|s: State<EnvdState>, h: HeaderMap, b: UnaryBody| {
                unary(s, h, b, list_dir::list_dir)
            }),
        )
        .route(
            rpc::FILESYSTEM_REMOVE,
            post(|s: State<EnvdState>, h: HeaderMap, b: UnaryBody| unary(s, h, b, remove::remove)),
        )
        .route(rpc::FILESYSTEM_WATCH_DIR, post(watch::watch_dir_handler))
        .route(
            rpc::FILESYSTEM_CREATE_WATCHER,
            post(watchers::create_watcher_handler),
        )
        .route(
            rpc::FILESYSTEM_GET_WATCHER_EVENTS,
            post(watchers::get_watcher_events_handler),
        )
        .route(
            rpc::FILESYSTEM_REMOVE_WATCHER,
            post(watchers::remove_watcher_handler),
        )
        .layer(Extension(watchers))
        .layer(body_limit())
}

/// A response that old SDKs get in a reduced form (spec 3.5 legacy quirk).
pub trait LegacyForm {
    /// Strips entries down to name, type and path.
    fn legacy(self) -> Self;
}

impl LegacyForm for EntryResponse {
    fn legacy(self) -> Self {
        EntryResponse {
            entry: self.entry.legacy(),
        }
    }
}

impl LegacyForm for ListDirResponse {
    fn legacy(self) -> Self {
        ListDirResponse {
            entries: self.entries.iter().map(EntryInfo::legacy).collect(),
        }
    }
}

impl LegacyForm for messages::Empty {
    fn legacy(self) -> Self {
        self
    }
}

/// Whether the caller is a very old Python SDK (`User-Agent` exactly `connect-python`).
fn is_legacy_sdk(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::USER_AGENT)
        .is_some_and(|v| v.as_bytes() == b"connect-python")
}

/// Runs one unary operation: decode, pick the user, run blocking, encode.
async fn unary<Req, Res>(
    State(state): State<EnvdState>,
    headers: HeaderMap,
    UnaryBody(body): UnaryBody,
    op: fn(&EnvdState, &Caller, Req) -> Result<Res, ConnectError>,
) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Res: Serialize + LegacyForm + Send + 'static,
{
    let result = async {
        let req: Req = decode_unary(&headers, &body)?;
        let who = caller(&state, &headers)?;
        blocking(move || op(&state, &who, req)).await
    }
    .await;
    match result {
        Ok(res) if is_legacy_sdk(&headers) => {
            let mut resp = unary_ok(&res.legacy());
            resp.headers_mut()
                .insert("x-e2b-legacy-sdk", HeaderValue::from_static("true"));
            resp
        }
        Ok(res) => unary_ok(&res),
        Err(e) => e.into_response(),
    }
}

/// Runs filesystem work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectError::internal(format!("filesystem task failed: {e}")))?
}
