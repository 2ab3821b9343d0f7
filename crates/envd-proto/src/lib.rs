//! envd's protocol, as the node, the CLI, the proxy and envd itself all speak it: what the node
//! hands envd at boot and what travels between envd and its clients. No I/O and no runtime live
//! here (serde, `bytes` and `base64` only), so any role can depend on it cheaply.
//!
//! - [`boot`]: the boot configuration the node writes and envd reads ([`BootConfig`]), its file
//!   and size bound, and the environment variables and socket names the sandbox runtime hands
//!   envd.
//! - [`connect`]: the one Connect codec (JSON only): envelope framing ([`connect::encode`],
//!   [`connect::Decoder`]), the end-of-stream message with its error ([`connect::EndStream`],
//!   [`connect::WireError`]), error codes ([`connect::Code`]), content types and Connect headers.
//! - [`process`]: the messages of `process.Process` that more than one crate reads or writes
//!   (`StartRequest`, `ProcessEvent`…); envd-only messages stay in envd.
//! - [`pbjson`]: proto3 JSON helpers (base64 bytes, 64-bit ints as strings).
//! - [`rpc`]: the paths of envd's RPCs and HTTP endpoints; [`headers`]: the HTTP headers that
//!   carry the access token and the sandbox routing.
//!
//! Wire formats are E2B's (spec `e2b-compat.md`, section 3): the SDKs talk to envd, so anything
//! here changes the wire for them too.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod boot;
pub mod connect;
pub mod pbjson;
pub mod process;

pub use boot::BootConfig;

/// The envd version Paddock reports to the SDKs (they gate features on it; see the spec 3.7).
pub const ENVD_VERSION: &str = "0.6.13";

/// The port envd listens on inside every sandbox (and the port the SDKs address it by).
pub const ENVD_PORT: u16 = 49983;

/// The `PATH` of processes envd starts when the request and the boot environment set none
/// (template builds run their steps with it too).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths of envd's Connect RPCs (`POST <path>`) and HTTP endpoints.
pub mod rpc {
    /// `process.Process/Start`: a server stream of `ProcessEvent`s.
    pub const PROCESS_START: &str = "/process.Process/Start";
    /// `process.Process/Connect`: a server stream of an already running process's events.
    pub const PROCESS_CONNECT: &str = "/process.Process/Connect";
    /// `process.Process/List` (unary).
    pub const PROCESS_LIST: &str = "/process.Process/List";
    /// `process.Process/SendInput` (unary).
    pub const PROCESS_SEND_INPUT: &str = "/process.Process/SendInput";
    /// `process.Process/StreamInput` (client stream).
    pub const PROCESS_STREAM_INPUT: &str = "/process.Process/StreamInput";
    /// `process.Process/CloseStdin` (unary).
    pub const PROCESS_CLOSE_STDIN: &str = "/process.Process/CloseStdin";
    /// `process.Process/SendSignal` (unary).
    pub const PROCESS_SEND_SIGNAL: &str = "/process.Process/SendSignal";
    /// `process.Process/Update` (unary): resizes a process's terminal.
    pub const PROCESS_UPDATE: &str = "/process.Process/Update";

    /// `filesystem.Filesystem/Stat` (unary).
    pub const FILESYSTEM_STAT: &str = "/filesystem.Filesystem/Stat";
    /// `filesystem.Filesystem/MakeDir` (unary).
    pub const FILESYSTEM_MAKE_DIR: &str = "/filesystem.Filesystem/MakeDir";
    /// `filesystem.Filesystem/Move` (unary).
    pub const FILESYSTEM_MOVE: &str = "/filesystem.Filesystem/Move";
    /// `filesystem.Filesystem/ListDir` (unary).
    pub const FILESYSTEM_LIST_DIR: &str = "/filesystem.Filesystem/ListDir";
    /// `filesystem.Filesystem/Remove` (unary).
    pub const FILESYSTEM_REMOVE: &str = "/filesystem.Filesystem/Remove";
    /// `filesystem.Filesystem/WatchDir`: a server stream of filesystem events.
    pub const FILESYSTEM_WATCH_DIR: &str = "/filesystem.Filesystem/WatchDir";
    /// `filesystem.Filesystem/CreateWatcher` (unary).
    pub const FILESYSTEM_CREATE_WATCHER: &str = "/filesystem.Filesystem/CreateWatcher";
    /// `filesystem.Filesystem/GetWatcherEvents` (unary).
    pub const FILESYSTEM_GET_WATCHER_EVENTS: &str = "/filesystem.Filesystem/GetWatcherEvents";
    /// `filesystem.Filesystem/RemoveWatcher` (unary).
    pub const FILESYSTEM_REMOVE_WATCHER: &str = "/filesystem.Filesystem/RemoveWatcher";

    /// `GET`/`POST /files`: file download and upload.
    pub const FILES: &str = "/files";
    /// `GET /health`.
    pub const HEALTH: &str = "/health";
    /// `POST /init`: replaces the access token, environment, default user and workdir.
    pub const INIT: &str = "/init";
    /// `GET /envs`.
    pub const ENVS: &str = "/envs";
    /// `GET /metrics`.
    pub const METRICS: &str = "/metrics";
}

/// HTTP headers of envd's protocol, lower-case (HTTP header names are case-insensitive).
pub mod headers {
    /// The sandbox's access token, required by envd once one is set.
    pub const ACCESS_TOKEN: &str = "x-access-token";
    /// The sandbox a request is for, when the `Host` does not say (read by the proxy).
    pub const SANDBOX_ID: &str = "e2b-sandbox-id";
    /// The port inside the sandbox a request is for (with [`SANDBOX_ID`]).
    pub const SANDBOX_PORT: &str = "e2b-sandbox-port";

    /// The `Authorization` value that names the user an RPC acts as, as the SDKs send it:
    /// `Basic base64("<user>:")` (no password).
    pub fn basic_user(user: &str) -> String {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        format!("Basic {credentials}")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_user_travels_as_basic_credentials() {
            assert_eq!(super::basic_user("root"), "Basic cm9vdDo=");
        }
    }
}
