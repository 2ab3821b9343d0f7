//! Slow-client limits of the HTTP listeners every role opens (`serve`'s API and proxy, the
//! `api` role's REST API, the `proxy` role's edge): one set of flags, [`ListenArgs`].

use clap::Args;

/// Flags of the client listeners' limits.
#[derive(Args, Clone)]
pub struct ListenArgs {
    /// Seconds a new client connection (API or proxy) may take to send its first complete
    /// request head; slower ones are closed. Requests whose head is in are not limited.
    #[arg(long, env = "PADDOCK_HEADER_TIMEOUT", default_value_t = 10, value_parser = super::serve::at_least_one_u64())]
    pub(crate) header_timeout: u64,
    /// Seconds a kept-alive client connection may stay idle (and take to send its next
    /// request head) before it is closed.
    #[arg(long, env = "PADDOCK_KEEPALIVE_TIMEOUT", default_value_t = 90, value_parser = super::serve::at_least_one_u64())]
    pub(crate) keepalive_timeout: u64,
    /// Most open client connections per listener (API, proxy); more are answered 503 and
    /// closed at once. Lowered at start to fit the open-files limit (see docs/security.md).
    #[arg(long, env = "PADDOCK_MAX_CONNECTIONS", default_value_t = paddock_proxy::listener::DEFAULT_MAX_CONNECTIONS, value_parser = super::serve::at_least_one())]
    pub(crate) max_connections: usize,
    /// Most open connections per listener from one client address (IPv6: per /64); more are
    /// answered 429 and closed at once. Default: half of the listener's cap. Behind a reverse
    /// proxy every client has its address: raise it to `--max-connections`.
    #[arg(long, env = "PADDOCK_MAX_CONNECTIONS_PER_IP", value_parser = super::serve::at_least_one())]
    pub(crate) max_connections_per_ip: Option<usize>,
}

impl ListenArgs {
    /// The limits with `max_connections` connections at most (the cap after fitting it into
    /// the descriptors there are).
    pub(crate) fn limits(&self, max_connections: usize) -> paddock_proxy::listener::Limits {
        paddock_proxy::listener::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            keepalive_timeout: std::time::Duration::from_secs(self.keepalive_timeout),
            max_connections,
            max_per_ip: self
                .max_connections_per_ip
                .unwrap_or(max_connections / 2)
                .clamp(1, max_connections),
        }
    }
}

/// Serves the control plane's REST API (`control`'s router) on `listener` with `limits` until
/// `stop` turns true, then lets requests in flight finish for 5 s.
pub(crate) async fn serve_api(
    listener: tokio::net::TcpListener,
    limits: paddock_proxy::listener::Limits,
    control: &paddock_api::ControlPlane,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = control.router();
    let handler = move |req| {
        use tower::ServiceExt as _;
        router.clone().oneshot(req)
    };
    paddock_proxy::listener::serve(
        listener,
        &limits,
        handler,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        std::time::Duration::from_secs(5),
    )
    .await
}

/// Limits of a `--metrics-listen` listener: a scraper or two, never many clients.
fn metrics_limits() -> paddock_proxy::listener::Limits {
    paddock_proxy::listener::Limits {
        header_timeout: std::time::Duration::from_secs(10),
        keepalive_timeout: std::time::Duration::from_secs(90),
        max_connections: 64,
        max_per_ip: 16,
    }
}

/// Serves `GET /metrics` (this process's [`paddock_telemetry`] series, Prometheus text format)
/// on `listener` until `stop` turns true: the `--metrics-listen` of `paddock node` and
/// `paddock proxy`, which have no REST API to carry it. No key: bind it where only the
/// scraper reaches it.
pub(crate) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                paddock_telemetry::metrics::render(&paddock_telemetry::all()),
            )
        }),
    );
    let handler = move |req| {
        use tower::ServiceExt as _;
        router.clone().oneshot(req)
    };
    paddock_proxy::listener::serve(
        listener,
        &metrics_limits(),
        handler,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        std::time::Duration::from_secs(1),
    )
    .await
}

/// Binds `--metrics-listen` (if given) and serves it on a task until `stop` turns true.
pub(crate) async fn spawn_metrics(
    addr: Option<std::net::SocketAddr>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    use anyhow::Context as _;
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    eprintln!(
        "paddock: metrics on http://{}/metrics",
        listener.local_addr()?
    );
    Ok(Some(tokio::spawn(serve_metrics(listener, stop))))
}
