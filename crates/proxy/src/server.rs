//! The proxy's HTTP/1.1 server: accepts TCP connections, serves each on its own task with
//! upgrades enabled, and shuts down gracefully — stop accepting, let in-flight requests finish
//! for [`crate::ProxyConfig::shutdown_grace`], then cut what is left (long streams, tunnels).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::directory::SandboxDirectory;
use crate::handler::Proxy;
use crate::{ProxyConfig, ProxyError};

/// Serves sandbox traffic on `listener` with the default [`ProxyConfig`] until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
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
        listener: TcpListener,
        shutdown: impl Future,
    ) -> Result<(), ProxyError> {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config().client_idle_timeout);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = shutdown.as_mut() => break Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let proxy = self.clone();
                        let http = http.clone();
                        let stop = stop_rx.clone();
                        conns.spawn(async move {
                            tracing::trace!(%peer, "connection accepted");
                            serve_connection(proxy, http, TokioIo::new(stream), stop).await;
                        });
                    }
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "accepting a proxy connection failed");
                        // Out of file descriptors and similar: give the system a moment.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => break Err(ProxyError::Accept(e)),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        };
        drop(listener);
        stop_tx.send_replace(true);
        self.close_tunnels();
        let grace = self.config().shutdown_grace;
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::debug!(
                open = conns.len(),
                "cutting connections still open after the grace period"
            );
            conns.shutdown().await;
        }
        result
    }
}

async fn serve_connection(
    proxy: Proxy,
    http: hyper::server::conn::http1::Builder,
    io: TokioIo<tokio::net::TcpStream>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req).await) }
    });
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "proxy connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Accept errors that concern one connection or a momentary shortage, not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux: resources run out; retry after a pause.
    const RESOURCE_SHORTAGE: [i32; 4] = [24, 23, 105, 12];
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e
        .raw_os_error()
        .is_some_and(|code| RESOURCE_SHORTAGE.contains(&code))
}
