//! envd: the daemon that runs as PID 1 inside every Paddock sandbox and speaks E2B's envd
//! protocol (spec section 3): the Connect services `process.Process` and
//! `filesystem.Filesystem`, the HTTP endpoints `/files`, `/health`, `/init`, `/envs`, `/metrics`,
//! and a port forwarder the node's proxy uses to reach any port inside the sandbox.
//!
//! Module map: [`connect`] (wire framing), [`auth`] (token and signatures), [`users`] (users and
//! paths), [`state`] (shared config), [`process`] (process service, PTYs, reaping),
//! [`filesystem`] (filesystem service, watchers), [`files`] (HTTP file transfer), [`http_api`]
//! (health, init, envs, metrics), [`forward`] (port forwarding socket), [`server`] (listeners),
//! [`logging`] (the JSON-lines log format the node parses).
#![warn(missing_docs)]

pub mod auth;
pub mod connect;
pub mod files;
pub mod filesystem;
pub mod forward;
pub mod http_api;
pub mod logging;
pub mod process;
pub mod server;
pub mod state;
pub mod users;

use axum::Router;

pub use paddock_envd_proto::BootConfig;
pub use state::EnvdState;

/// The whole envd HTTP surface with token enforcement.
pub fn router(state: EnvdState, processes: process::ProcessRegistry) -> Router {
    Router::new()
        .merge(http_api::router())
        .merge(files::router())
        .merge(filesystem::router())
        .with_state(state.clone())
        .merge(process::router(state.clone(), processes))
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_token,
        ))
}
