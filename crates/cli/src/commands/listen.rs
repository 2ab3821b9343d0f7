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

/// Flags of HTTPS on a client listener (the API's, the proxy's; for `serve` one pair covers
/// both).
#[derive(Args, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) to serve HTTPS with; needs `--tls-key`. With a
    /// `--domain`, a certificate for `*.<domain>` (without its port) covers sandbox hosts
    /// (`<port>-<id>.<domain>`) and `api.<domain>`. Loaded at start; SIGHUP reloads it.
    #[arg(
        long,
        env = "PADDOCK_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(
        long,
        env = "PADDOCK_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The certificate and key, loaded and checked, when HTTPS is asked for.
    pub(crate) fn load(&self) -> anyhow::Result<Option<paddock_proxy::ServerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => paddock_proxy::ServerTls::load(cert, key)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}")),
            _ => Ok(None),
        }
    }
}

/// Reloads `tls` (if any) from its files on every SIGHUP, until the process ends; a pair
/// that fails to load is reported and the one in use stays.
pub(crate) fn reload_on_sighup(tls: Option<&paddock_proxy::ServerTls>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{signal, SignalKind};
    let Some(tls) = tls.cloned() else {
        return Ok(());
    };
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => eprintln!(
                    "paddock: SIGHUP: reloaded the TLS certificate {}",
                    tls.cert_path().display()
                ),
                Err(e) => eprintln!("paddock: SIGHUP: keeping the TLS certificate in use: {e}"),
            }
        }
    });
    Ok(())
}

/// `scheme://host[:port]`, the port left out when it is the scheme's default.
pub(crate) fn url(https: bool, host: &str, port: u16) -> String {
    match (https, port) {
        (true, 443) => format!("https://{host}"),
        (false, 80) => format!("http://{host}"),
        (true, _) => format!("https://{host}:{port}"),
        (false, _) => format!("http://{host}:{port}"),
    }
}

/// The host of a `--domain` (`host` or `host:port`), without its port.
pub(crate) fn domain_host(domain: &str) -> &str {
    match domain.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => domain,
    }
}

/// The `export` lines (name, value) that point the SDKs at a server with its REST API on `api`
/// and, if it has one here, its proxy on `proxy`. Over HTTPS with a domain the SDKs route to
/// sandboxes by host (`https://<port>-<id>.<domain>`) and reach the API at
/// `https://api.<domain host>:<api port>`, names a wildcard certificate for `*.<domain>`
/// covers; otherwise they are given addresses (`E2B_SANDBOX_URL`, header routing).
pub(crate) fn sdk_exports(
    api: std::net::SocketAddr,
    proxy: Option<std::net::SocketAddr>,
    domain: Option<&str>,
    https: bool,
) -> Vec<(&'static str, String)> {
    if let (true, Some(domain)) = (https, domain) {
        let api_host = format!("api.{}", domain_host(domain));
        return vec![
            ("E2B_DOMAIN", domain.to_string()),
            ("E2B_API_URL", url(true, &api_host, api.port())),
        ];
    }
    let scheme = if https { "https" } else { "http" };
    let mut lines = vec![("E2B_API_URL", format!("{scheme}://{api}"))];
    if let Some(proxy) = proxy {
        lines.push(("E2B_SANDBOX_URL", format!("{scheme}://{proxy}")));
    }
    lines
}

/// Serves the control plane's REST API (`control`'s router) on `listener` with `limits`, over
/// TLS when `tls` is given, until `stop` turns true, then lets requests in flight finish for
/// 5 s.
pub(crate) async fn serve_api(
    listener: tokio::net::TcpListener,
    limits: paddock_proxy::listener::Limits,
    tls: Option<paddock_proxy::ServerTls>,
    control: &paddock_api::ControlPlane,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = control.router();
    let handler = move |req| {
        use tower::ServiceExt as _;
        router.clone().oneshot(req)
    };
    paddock_proxy::listener::serve_tls(
        listener,
        &limits,
        tls.as_ref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_over_https_with_a_domain_route_by_host() {
        let api: std::net::SocketAddr = "127.0.0.1:3000".parse().expect("addr");
        let proxy: std::net::SocketAddr = "127.0.0.1:3002".parse().expect("addr");
        assert_eq!(
            sdk_exports(api, Some(proxy), Some("paddock.test:3002"), true),
            vec![
                ("E2B_DOMAIN", "paddock.test:3002".to_string()),
                ("E2B_API_URL", "https://api.paddock.test:3000".to_string()),
            ]
        );
        let api443: std::net::SocketAddr = "0.0.0.0:443".parse().expect("addr");
        assert_eq!(
            sdk_exports(api443, None, Some("sb.example.com"), true)[1].1,
            "https://api.sb.example.com"
        );
        assert_eq!(
            sdk_exports(api, Some(proxy), Some("localhost:3002"), false),
            vec![
                ("E2B_API_URL", "http://127.0.0.1:3000".to_string()),
                ("E2B_SANDBOX_URL", "http://127.0.0.1:3002".to_string()),
            ]
        );
        assert_eq!(
            sdk_exports(api, Some(proxy), None, true)[1].1,
            "https://127.0.0.1:3002"
        );
        assert_eq!(sdk_exports(api, None, None, false).len(), 1);
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tls: TlsArgs,
        }
        let parse =
            |flags: &[&str]| Cli::try_parse_from(std::iter::once("x").chain(flags.iter().copied()));
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        let none = parse(&[]).expect("no TLS");
        assert!(none.tls.load().expect("nothing to load").is_none());
        let both =
            parse(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "k.pem"]).expect("pair");
        let err = both.tls.load().expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn domain_host_drops_only_a_numeric_port() {
        assert_eq!(domain_host("paddock.test:8443"), "paddock.test");
        assert_eq!(domain_host("paddock.test"), "paddock.test");
        assert_eq!(domain_host("paddock.test:"), "paddock.test:");
    }
}
