//! envd's listeners: loads the boot configuration, builds the state and router (with CORS per
//! spec 3.1), and serves HTTP/1.1 on its Unix socket and on TCP `127.0.0.1:<port>` (inside the
//! sandbox only: nothing outside its network namespace reaches envd but through the node's
//! socket), plus the port forwarder on a second Unix socket. In a sandbox the node hands envd the
//! configuration and both sockets as descriptors ([`ServeOptions::boot_config_fd`],
//! [`ServeOptions::listen_fds`]), so envd shares no directory with the host; run by hand, it
//! reads `<run_dir>/config.json` and binds `<run_dir>/envd.sock` and `<run_dir>/forward.sock`.
//! Signals readiness on an inherited fd once everything is bound. Connections have no idle or
//! read timeouts (long streams).

use std::future::Future;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderValue, Method, StatusCode};
use tokio::net::{TcpListener, UnixListener};

use crate::process::reaper::Reaper;
use crate::process::ProcessRegistry;
use paddock_envd_proto::boot::{self, BootConfig};

use crate::state::EnvdState;
use crate::users::UserDb;

/// How envd is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Directory of `config.json`, `envd.sock` and `forward.sock` when they are not handed
    /// over as descriptors, and of the memory cgroup (`memcg`).
    pub run_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 = no TCP listener.
    pub port: u16,
    /// Inherited listening Unix sockets to serve instead of binding in `run_dir`: HTTP, then
    /// port forwarding (`PADDOCK_LISTEN_FDS`).
    pub listen_fds: Option<(RawFd, RawFd)>,
    /// An inherited descriptor to read the boot configuration from instead of
    /// `<run_dir>/config.json` (`PADDOCK_BOOT_CONFIG_FD`).
    pub boot_config_fd: Option<RawFd>,
    /// Directory holding `passwd` and `group` (`/etc` in a sandbox).
    pub etc_dir: PathBuf,
    /// An inherited fd to write `ready\n` to once every listener is bound.
    pub ready_fd: Option<RawFd>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            run_dir: PathBuf::from(boot::RUN_DIR),
            port: paddock_envd_proto::ENVD_PORT,
            etc_dir: PathBuf::from("/etc"),
            ready_fd: None,
            listen_fds: None,
            boot_config_fd: None,
        }
    }
}

/// Why envd could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The boot configuration exists but cannot be read or parsed.
    #[error("cannot load boot configuration {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be set up.
    #[error("cannot listen on {what}")]
    Listen {
        /// Which listener.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving {what} failed")]
    Serve {
        /// Which listener.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Reads the boot configuration from an inherited descriptor (and closes it).
pub fn read_boot_config_fd(fd: RawFd) -> Result<BootConfig, ServeError> {
    use std::io::Read;
    let path = PathBuf::from(format!("fd {fd}"));
    // SAFETY: the descriptor was handed to envd for exactly this purpose
    // (PADDOCK_BOOT_CONFIG_FD) and nothing else uses it; it moves into the File, closed on drop.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    file.take(boot::BOOT_CONFIG_MAX_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|source| ServeError::Config {
            path: path.clone(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ServeError::Config {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Takes an inherited listening Unix socket.
fn inherited_listener(fd: RawFd, what: &str) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        what: format!("{what} (fd {fd})"),
        source,
    };
    // SAFETY: the descriptor was handed to envd as this listener (PADDOCK_LISTEN_FDS) and
    // nothing else uses it; it moves into the listener, closed on drop.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(std_listener).map_err(err)
}

/// Reads `<run_dir>/config.json`; a missing file is the default configuration.
pub fn load_boot_config(run_dir: &Path) -> Result<BootConfig, ServeError> {
    let path = run_dir.join(boot::BOOT_CONFIG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ServeError::Config {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootConfig::default()),
        Err(source) => Err(ServeError::Config { path, source }),
    }
}

/// Headers a browser client may read (Connect's plus the spec's).
const EXPOSE_HEADERS: &str = "Connect-Protocol-Version, Connect-Content-Encoding, Connect-Accept-Encoding, \
     Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Location, Cache-Control, X-Content-Type-Options";
const ALLOW_METHODS: &str = "HEAD, GET, POST, PUT, PATCH, DELETE";

/// CORS (spec 3.1): any origin, the listed methods, any request header, max-age 7200.
/// Preflights are answered here, before token enforcement.
pub async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(http::header::ORIGIN)
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let allow_headers = req
            .headers()
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("*"));
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        h.insert(
            http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("7200"),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    resp
}

/// The full application: envd's routes, token enforcement and CORS.
pub fn app(state: EnvdState, processes: ProcessRegistry) -> Router {
    crate::router(state, processes).layer(axum::middleware::from_fn(cors))
}

fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Writes `ready\n` to the readiness fd and closes it.
fn signal_ready(fd: RawFd) {
    // SAFETY: the fd was handed to this process for exactly this purpose (PADDOCK_READY_FD) and
    // nothing else in envd uses or closes it; ownership moves into the OwnedFd, closed on drop.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    if let Err(e) = file.write_all(b"ready\n") {
        tracing::warn!(fd, error = %e, "cannot signal readiness");
    }
}

/// Marks every inherited descriptor above stderr close-on-exec, so nothing the node handed to
/// envd (the readiness pipe, stray fds) leaks into user processes.
fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // F_SETFD on a closed or invalid descriptor (the directory's own fd, now closed) fails
        // harmlessly with EBADF.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

/// Runs envd until `shutdown` resolves (or a listener fails). Running processes are killed on
/// shutdown and the socket files removed.
pub async fn run(opts: ServeOptions, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    cloexec_inherited_fds();
    // Many connections, pipes and watchers: use the hard open-files limit (children get the
    // original soft limit back, see `process::rlimit`).
    match crate::process::rlimit::raise_nofile() {
        Ok(limit) => tracing::debug!(limit, "open-files limit raised"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    // Reap from the start: orphans may appear before the first spawn.
    let _reaper = Reaper::global();
    if std::process::id() != 1 {
        // Outside a pid namespace, become the reaper of our descendants, as PID 1 would be.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper");
        }
    }
    let boot = match opts.boot_config_fd {
        Some(fd) => read_boot_config_fd(fd)?,
        None => load_boot_config(&opts.run_dir)?,
    };
    crate::process::oom::init(&opts.run_dir);
    crate::process::cgroup::note_oom_kills();
    let state = EnvdState::new(boot, UserDb::at(&opts.etc_dir), opts.run_dir.clone());
    let processes = ProcessRegistry::new();
    let app = app(state, processes.clone());

    // Socket files envd made itself and removes at shutdown (none when handed over).
    let mut own_sockets = Vec::new();
    let (unix, forward) = match opts.listen_fds {
        Some((http, fwd)) => (
            inherited_listener(http, "envd socket")?,
            inherited_listener(fwd, "forward socket")?,
        ),
        None => {
            std::fs::create_dir_all(&opts.run_dir).map_err(|source| ServeError::Listen {
                what: opts.run_dir.display().to_string(),
                source,
            })?;
            let envd_sock = opts.run_dir.join(boot::ENVD_SOCKET);
            let forward_sock = opts.run_dir.join(boot::FORWARD_SOCKET);
            let unix = bind_unix(&envd_sock)?;
            let forward = bind_unix(&forward_sock)?;
            own_sockets.extend([envd_sock, forward_sock]);
            (unix, forward)
        }
    };
    let tcp = if opts.port != 0 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], opts.port));
        Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    what: addr.to_string(),
                    source,
                })?,
        )
    } else {
        None
    };
    tracing::info!(
        inherited = opts.listen_fds.is_some(),
        port = opts.port,
        version = paddock_envd_proto::ENVD_VERSION,
        "envd listening"
    );
    if let Some(fd) = opts.ready_fd {
        signal_ready(fd);
    }
    // Start a thread of the blocking pool now, so the first command does not wait for one
    // (it runs on that pool, see `process::start`).
    tokio::task::spawn_blocking(|| ());

    let unix_server = axum::serve(unix, app.clone());
    let tcp_server = async {
        match tcp {
            Some(l) => axum::serve(l, app).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = async { unix_server.await } => r.map_err(|source| ServeError::Serve { what: "unix socket".into(), source }),
        r = tcp_server => r.map_err(|source| ServeError::Serve { what: "tcp".into(), source }),
        () = crate::forward::serve(forward) => Ok(()),
        () = shutdown => Ok(()),
    };
    tracing::info!("envd shutting down");
    for process in processes.list() {
        let _ = process.signal_group(nix::sys::signal::Signal::SIGKILL);
    }
    for path in own_sockets {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn preflight_bypasses_auth_and_responses_carry_cors() {
        let boot = BootConfig {
            access_token: Some("tok".into()),
            ..Default::default()
        };
        let state = EnvdState::new(boot, UserDb::default(), std::env::temp_dir());
        let app = app(state, ProcessRegistry::new());
        let req = http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/process.Process/Start")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "connect-protocol-version,x-access-token",
            )
            .body(Body::empty())
            .expect("req");
        let resp = app.clone().oneshot(req).await.expect("preflight");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(resp.headers()["access-control-max-age"], "7200");
        assert_eq!(
            resp.headers()["access-control-allow-headers"],
            "connect-protocol-version,x-access-token"
        );
        let req = http::Request::get("/envs")
            .body(Body::empty())
            .expect("req");
        let resp = app.oneshot(req).await.expect("envs");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    }

    #[test]
    fn boot_config_is_optional_and_parsed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load_boot_config(dir.path()).expect("default"),
            BootConfig::default()
        );
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"accessToken":"t","defaultUser":"root"}"#,
        )
        .expect("write");
        let cfg = load_boot_config(dir.path()).expect("parsed");
        assert_eq!(cfg.access_token.as_deref(), Some("t"));
        assert_eq!(cfg.default_user.as_deref(), Some("root"));
        std::fs::write(dir.path().join("config.json"), "{").expect("write");
        assert!(load_boot_config(dir.path()).is_err());
    }
}
