//! The HTTP/1.1 listener with slow-client limits that every TCP listener of `paddock serve`
//! (the REST API and the sandbox traffic proxy) runs on, so that a client without a key cannot
//! hold the process's file descriptors:
//!
//! - **Header timeout**: a new connection must deliver its first complete request head within
//!   [`Limits::header_timeout`], or it is closed. A kept-alive connection must deliver the next
//!   head within [`Limits::keepalive_timeout`] of going idle (hyper's `header_read_timeout`).
//!   Once a head is in, nothing limits the request: long bodies, response streams (envd process
//!   streams, SSE) and upgrades (WebSocket, tunnels) run as long as they need.
//! - **Connection caps**: at most [`Limits::max_connections`] open connections per listener and
//!   [`Limits::max_per_ip`] per client address (an IPv6 client counts per /64, the block one
//!   host usually holds). A connection over a cap is answered at once with a fixed 503 (listener
//!   full) or 429 (client over its share), written without waiting, and closed: never queued.
//!   Upgraded connections keep their slot until they close (the slot lives in the stream).
//! - **Accept back-off**: when `accept` fails for lack of descriptors or memory (`EMFILE`,
//!   `ENFILE`, `ENOBUFS`, `ENOMEM`) the loop pauses briefly instead of spinning.
//! - **Descriptor budget** ([`raise_nofile`], [`DescriptorBudget`]): at start the soft
//!   `RLIMIT_NOFILE` is raised to the hard limit, and the listeners' caps are sized so that all
//!   of them together leave a reserve for sandboxes, the store and the sockets to envd.
//!
//! Shutdown is graceful: stop accepting, let in-flight requests finish for the grace period,
//! then cut what is left (long streams, tunnels).
//!
//! **HTTPS** ([`serve_tls`] with a [`crate::tls::ServerTls`]): the same limits, the TLS
//! handshake counted inside the header timeout and under the caps (see [`serve_tls`]).
//!
//! [`serve_connection`] serves one connection accepted elsewhere (e.g. a TLS stream a node
//! dispatched by ALPN) with the same per-connection limits (header and keep-alive timeouts);
//! the caps are the accepting side's, which can hold a [`Slot`] in a [`LimitedStream`].
//!
//! Main items: [`serve`], [`serve_tls`], [`serve_connection`], [`Limits`], [`ConnectionLimiter`],
//! [`DescriptorBudget`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The slow-client limits of one listener. [`Limits::default`] is what `paddock serve` uses
/// before it fits the caps to the descriptor budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a new connection may take to send its first complete request head.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may stay idle, and take to send its next request
    /// head. Longer than [`Limits::header_timeout`] so that a client reusing a pooled
    /// connection rarely races the server closing it.
    pub keepalive_timeout: Duration,
    /// Most connections open at once on the listener.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv4 address or IPv6 /64).
    pub max_per_ip: usize,
}

/// Default [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::keepalive_timeout`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default [`Limits::max_connections`] (lowered by [`DescriptorBudget`] when descriptors are
/// short).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_ip: DEFAULT_MAX_CONNECTIONS / 2,
        }
    }
}

/// Most descriptors [`raise_nofile`] asks for.
const NOFILE_TARGET: u64 = 1 << 20;

/// Raises `RLIMIT_NOFILE`: both limits to `min(fs.nr_open, 2^20)` where the process may raise
/// its hard limit (root), else the soft limit to the hard one; returns the (new) soft limit.
/// Sandboxes do not inherit the raise (the node hands them the limits it started with).
pub fn raise_nofile() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let target = nr_open.min(NOFILE_TARGET);
    if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
        return Ok(target);
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// How a process's descriptors are shared out: a reserve for everything that is not a client
/// connection (sandboxes, the store, sockets to envd, the egress proxy), the rest for the
/// listeners' connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The process's open-files limit.
    pub nofile: u64,
    /// Descriptors kept out of every listener's reach.
    pub reserve: u64,
}

/// The smallest cap [`DescriptorBudget::cap`] hands out, however short descriptors are: below
/// it a listener is unusable anyway.
pub const MIN_CONNECTIONS: usize = 64;

impl DescriptorBudget {
    /// Descriptors left for the listeners.
    pub fn for_listeners(&self) -> u64 {
        self.nofile.saturating_sub(self.reserve)
    }

    /// The cap for a listener that gets `share` (0..=1) of [`Self::for_listeners`]: at most
    /// `wanted`, at least [`MIN_CONNECTIONS`].
    pub fn cap(&self, wanted: usize, share: f64) -> usize {
        // Truncation is intended: a fraction of a descriptor is no descriptor.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let fits = (self.for_listeners() as f64 * share.clamp(0.0, 1.0)) as usize;
        wanted.min(fits).max(MIN_CONNECTIONS)
    }
}

/// Counts a listener's open connections, in total and per client address, and hands out a
/// [`Slot`] for each connection it admits. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct ConnectionLimiter {
    inner: Arc<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why [`ConnectionLimiter::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The listener holds its maximum of connections.
    #[error("the listener holds its maximum of connections")]
    ListenerFull,
    /// The client's address holds its maximum of connections.
    #[error("the client holds its maximum of connections")]
    ClientFull,
}

/// One admitted connection's place in its [`ConnectionLimiter`]; released on drop.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<LimiterState>,
    key: IpAddr,
}

impl ConnectionLimiter {
    /// A limiter with the caps of `limits`.
    pub fn new(limits: &Limits) -> Self {
        ConnectionLimiter {
            inner: Arc::new(LimiterState {
                max_total: limits.max_connections.max(1),
                max_per_ip: limits.max_per_ip.max(1),
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Takes a slot for a connection from `peer`, unless a cap is reached.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Refused> {
        let key = client_key(peer);
        let mut counts = self.inner.lock();
        if counts.total >= self.inner.max_total {
            return Err(Refused::ListenerFull);
        }
        let mine = counts.per_ip.entry(key).or_insert(0);
        if *mine >= self.inner.max_per_ip {
            return Err(Refused::ClientFull);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            limiter: Arc::clone(&self.inner),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }
}

impl LimiterState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under: IPv4 addresses as they are (IPv4-mapped IPv6 ones
/// too), IPv6 addresses by their /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The answer written (without waiting) to a connection over the listener's cap.
const LISTENER_FULL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 50\r\n\r\n\
{\"code\":503,\"message\":\"too many open connections\"}";
/// The answer written (without waiting) to a connection over its client's cap.
const CLIENT_FULL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 66\r\n\r\n\
{\"code\":429,\"message\":\"too many open connections from one client\"}";

/// The answer to a plain HTTP request on a TLS listener.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 80\r\n\r\n\
{\"code\":400,\"message\":\"this port serves HTTPS: use an https:// URL to reach it\"}";

/// A client connection holding its [`Slot`]: the slot is released when the stream is dropped,
/// wherever it went (hyper's connection or, after an upgrade, the tunnel).
#[derive(Debug)]
pub struct LimitedStream<S = TcpStream> {
    stream: S,
    _slot: Slot,
}

impl<S> LimitedStream<S> {
    /// `stream`, holding `slot` until it is dropped.
    pub fn new(stream: S, slot: Slot) -> Self {
        LimitedStream {
            stream,
            _slot: slot,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 (with upgrades) on `listener` with `limits`, passing each request to
/// `handler`, until `shutdown` completes; then stops accepting, lets in-flight requests finish
/// for `grace` and cuts what is left. Fails only if the listener itself breaks.
pub async fn serve<F, Fut, B, E>(
    listener: TcpListener,
    limits: &Limits,
    handler: F,
    shutdown: impl Future,
    grace: Duration,
) -> io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_tls(listener, limits, None, handler, shutdown, grace).await
}

/// [`serve`], over TLS when `tls` is given (HTTPS; ALPN `http/1.1`). The TLS handshake counts
/// against the header timeout: a connection must finish it and send its first request head
/// within [`Limits::header_timeout`], and it holds its place under the caps from the moment
/// it is accepted. A client that speaks plain HTTP to a TLS listener is answered with a plain
/// `400` saying so, then closed. Connections over a cap are closed without an answer (a plain
/// one would not reach a TLS client).
pub async fn serve_tls<F, Fut, B, E>(
    listener: TcpListener,
    limits: &Limits,
    tls: Option<&crate::tls::ServerTls>,
    handler: F,
    shutdown: impl Future,
    grace: Duration,
) -> io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limiter = ConnectionLimiter::new(limits);
    let http = http_builder(limits);
    let header_timeout = limits.header_timeout;
    let acceptor = tls.map(crate::tls::ServerTls::acceptor);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shortage_logged: Option<Instant> = None;
    let result = loop {
        tokio::select! {
            _ = shutdown.as_mut() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(stream) = admit(&limiter, stream, peer, acceptor.is_none()) else { continue };
                    let http = http.clone();
                    let handler = handler.clone();
                    let stop = stop_rx.clone();
                    let acceptor = acceptor.clone();
                    conns.spawn(async move {
                        tracing::trace!(%peer, "connection accepted");
                        let stop = async move {
                            let mut stop = stop;
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        let Some(acceptor) = acceptor else {
                            drive(http, stream, handler, header_timeout, stop).await;
                            return;
                        };
                        let deadline = tokio::time::Instant::now() + header_timeout;
                        if let Some(stream) = handshake(stream, &acceptor, deadline).await {
                            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                            drive(http, stream, handler, left, stop).await;
                        }
                    });
                }
                Err(e) if is_transient(&e) => {
                    if shortage_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, open = limiter.open(), "accepting a connection failed; backing off");
                        shortage_logged = Some(Instant::now());
                    }
                    // Out of descriptors and similar: give the system a moment, do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => break Err(e),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    drop(listener);
    stop_tx.send_replace(true);
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

/// Admits `stream` under the caps, or answers it with the fixed 503/429 (if `answer`) and
/// closes it.
fn admit(
    limiter: &ConnectionLimiter,
    stream: TcpStream,
    peer: SocketAddr,
    answer: bool,
) -> Option<LimitedStream> {
    match limiter.admit(peer.ip()) {
        Ok(slot) => {
            let _ = stream.set_nodelay(true);
            Some(LimitedStream {
                stream,
                _slot: slot,
            })
        }
        Err(why) => {
            tracing::debug!(%peer, %why, "connection refused");
            if answer {
                let reply = match why {
                    Refused::ListenerFull => LISTENER_FULL,
                    Refused::ClientFull => CLIENT_FULL,
                };
                // Best effort and never waiting: a fresh socket's send buffer takes it whole.
                let _ = stream.try_write(reply);
            }
            None
        }
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Most bytes of a plain HTTP request read (and dropped) after answering it
/// [`PLAIN_HTTP_ON_TLS`], so that closing does not reset the connection before the client
/// read the answer.
const PLAIN_DRAIN_BYTES: usize = 64 * 1024;

/// Completes the TLS handshake of an admitted connection by `deadline`. A connection whose
/// first byte is not a TLS handshake record gets [`PLAIN_HTTP_ON_TLS`] and is closed.
async fn handshake(
    stream: LimitedStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    deadline: tokio::time::Instant,
) -> Option<tokio_rustls::server::TlsStream<LimitedStream>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed before its TLS handshake");
            return None;
        }
        Err(_) => {
            tracing::debug!("no TLS handshake within the header timeout; closing");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        tracing::debug!("plain HTTP on a TLS listener; answering 400");
        let mut stream = stream;
        let answered = async {
            stream.write_all(PLAIN_HTTP_ON_TLS).await?;
            stream.shutdown().await?;
            let mut drained = 0;
            let mut buf = [0u8; 4096];
            while drained < PLAIN_DRAIN_BYTES {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout_at(deadline, answered).await;
        return None;
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done within the header timeout; closing");
            None
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection accepted elsewhere, with the limits of a
/// connection of [`serve`]: its first request head must arrive within
/// [`Limits::header_timeout`], a kept-alive connection's next one within
/// [`Limits::keepalive_timeout`]. Returns when the connection closes (or is handed to an
/// upgrade). Once `shutdown` completes the connection closes after its in-flight request;
/// drop the future to cut it at once. The caps of [`Limits`] are the accepting side's (see
/// [`ConnectionLimiter`] and [`LimitedStream`]).
pub async fn serve_connection<S, F, Fut, B, E>(
    io: S,
    limits: &Limits,
    handler: F,
    shutdown: impl Future,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = http_builder(limits);
    drive(http, io, handler, limits.header_timeout, shutdown).await;
}

/// The HTTP/1 server settings of every connection: hyper's header timeout is the keep-alive
/// one (the first head's shorter limit is [`drive`]'s).
fn http_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.keepalive_timeout);
    http
}

/// Runs one connection to its end: the first head within `header_timeout`, a graceful close
/// once `stop` completes.
async fn drive<S, F, Fut, B, E>(
    http: hyper::server::conn::http1::Builder,
    stream: S,
    handler: F,
    header_timeout: Duration,
    stop: impl Future,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Set by the first request: its head is complete.
    let got_head = Arc::new(AtomicBool::new(false));
    let service = service_fn({
        let got_head = Arc::clone(&got_head);
        move |req| {
            got_head.store(true, Ordering::Relaxed);
            handler(req)
        }
    });
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let first_head = tokio::time::sleep(header_timeout);
    let mut first_head = std::pin::pin!(first_head);
    let mut waiting_for_head = true;
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = first_head.as_mut(), if waiting_for_head => {
                if !got_head.load(Ordering::Relaxed) {
                    tracing::debug!("no request head within the header timeout; closing");
                    return;
                }
                waiting_for_head = false;
            }
            _ = stop.as_mut(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Accept errors that concern one connection or a momentary shortage, not the listener.
fn is_transient(e: &io::Error) -> bool {
    use std::io::ErrorKind::*;
    const RESOURCE_SHORTAGE: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e
        .raw_os_error()
        .is_some_and(|code| RESOURCE_SHORTAGE.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            max_connections: total,
            max_per_ip: per_ip,
            ..Limits::default()
        }
    }

    #[test]
    fn caps_per_client_and_per_listener_and_releases_on_drop() {
        let limiter = ConnectionLimiter::new(&limits(3, 2));
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = limiter.admit(a).expect("a1");
        let _a2 = limiter.admit(a).expect("a2");
        assert_eq!(limiter.admit(a).err(), Some(Refused::ClientFull));
        let _b1 = limiter.admit(b).expect("b1");
        assert_eq!(limiter.admit(b).err(), Some(Refused::ListenerFull));
        drop(a1);
        assert_eq!(limiter.open(), 2);
        let _a3 = limiter.admit(a).expect("a's slot came back");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let limiter = ConnectionLimiter::new(&limits(10, 1));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _s = limiter.admit(one).expect("first");
        assert_eq!(limiter.admit(same_64).err(), Some(Refused::ClientFull));
        let _o = limiter.admit(other_64).expect("another /64");
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        let _v = limiter.admit(v4).expect("v4");
        assert_eq!(limiter.admit(mapped).err(), Some(Refused::ClientFull));
    }

    #[test]
    fn budget_leaves_the_reserve_and_never_goes_below_the_minimum() {
        let roomy = DescriptorBudget {
            nofile: 1 << 20,
            reserve: 20_000,
        };
        assert_eq!(roomy.cap(8192, 0.5), 8192);
        let tight = DescriptorBudget {
            nofile: 20_000,
            reserve: 12_000,
        };
        assert_eq!(tight.cap(8192, 0.25), 2000);
        assert_eq!(tight.cap(8192, 0.75), 6000);
        let starved = DescriptorBudget {
            nofile: 1024,
            reserve: 17_000,
        };
        assert_eq!(starved.for_listeners(), 0);
        assert_eq!(starved.cap(8192, 0.5), MIN_CONNECTIONS);
    }

    #[test]
    fn fixed_answers_have_the_right_content_length() {
        for answer in [LISTENER_FULL, CLIENT_FULL, PLAIN_HTTP_ON_TLS] {
            let text = std::str::from_utf8(answer).expect("utf-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .parse()
                .expect("number");
            assert_eq!(body.len(), len, "{head}");
            serde_json::from_str::<serde_json::Value>(body).expect("json body");
        }
    }
}
