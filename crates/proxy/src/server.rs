//! The proxy's server: [`crate::listener::serve`] (HTTP/1.1 with upgrades, slow-client limits
//! from [`crate::ProxyConfig::limits`], graceful shutdown) with the proxy as the handler. On
//! shutdown, tunnels are closed at once and in-flight requests get
//! [`crate::ProxyConfig::shutdown_grace`] to finish. [`Proxy::serve_connection`] serves one
//! connection accepted elsewhere (a node's hop: TLS streams dispatched by ALPN) the same way.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::directory::SandboxDirectory;
use crate::handler::Proxy;
use crate::{listener, ProxyConfig, ProxyError};

/// Serves sandbox traffic on `listener` with the default [`ProxyConfig`] until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dir: Arc<dyn SandboxDirectory>,
    shutdown: impl Future,
) -> Result<(), ProxyError> {
    Proxy::new(dir, ProxyConfig::default())
        .serve(listener, shutdown)
        .await
}

impl Proxy {
    /// Serves sandbox traffic on `listener` until `shutdown` completes, then drains as described
    /// in the module docs. Fails only if the listener itself breaks.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future,
    ) -> Result<(), ProxyError> {
        self.serve_tls(listener, None, shutdown).await
    }

    /// [`Proxy::serve`], over TLS (HTTPS) when `tls` is given: see
    /// [`crate::listener::serve_tls`].
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<&crate::tls::ServerTls>,
        shutdown: impl Future,
    ) -> Result<(), ProxyError> {
        let proxy = self.clone();
        let handler = move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        };
        let shutdown = async {
            shutdown.await;
            self.close_tunnels();
        };
        let config = self.config();
        listener::serve_tls(
            listener,
            &config.limits,
            tls,
            handler,
            shutdown,
            config.shutdown_grace,
        )
        .await
        .map_err(ProxyError::Accept)
    }

    /// Serves sandbox traffic, HTTP/1.1 with upgrades, on one connection accepted elsewhere,
    /// e.g. a TLS stream a node accepted on its cluster port and dispatched by ALPN
    /// `http/1.1` ([`crate::HOP_ALPN`]). The connection gets the limits a connection of
    /// [`Proxy::serve`] gets ([`crate::listener::serve_connection`]: header and keep-alive
    /// timeouts of [`ProxyConfig::limits`]); capping connections is the accepting side's job.
    /// Returns when the connection closes or is handed to a tunnel. Once `shutdown` completes
    /// the connection closes after its in-flight request; tunnels stay open until
    /// [`Proxy::close_tunnels`], and dropping the future cuts the connection at once.
    pub async fn serve_connection<S>(&self, io: S, shutdown: impl Future)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let handler = move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        };
        listener::serve_connection(io, &self.config().limits, handler, shutdown).await;
    }
}
