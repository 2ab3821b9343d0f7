//! Mutual-TLS connections for the cluster's gRPC services: [`incoming`] accepts, handshakes
//! and admits peers by their certificate, and hands tonic [`Authed`] streams whose
//! [`PeerInfo`] every request carries in its extensions ([`caller`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use paddock_cluster_tls::{CaCert, PeerIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client's TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive of clients and servers: a ping this often, and a peer that does not
/// answer within [`KEEPALIVE_TIMEOUT`] is gone.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC channel to `addr` over TLS with `config` (a cluster client configuration: it
/// checks the server's certificate against the CA and the expected member, not host names).
/// Connects on the first call and again after the connection breaks.
pub fn channel(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            // Host names are not checked (the verifier checks the CA and the member's role
            // and id); the address only fills SNI's place.
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_with_connector_lazy(connect),
    )
}

/// Who is calling, as the connection's certificate says (in each request's extensions, see
/// [`caller`]).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The verified identity; `None` for a client without a certificate (only where the
    /// server's admission allows one, e.g. for the cluster's join).
    pub identity: Option<PeerIdentity>,
    /// Its address.
    pub remote: SocketAddr,
}

/// The verified caller of a request served by [`serve`].
pub fn caller<T>(req: &Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// A TLS connection whose peer was verified, holding its slot of the connection limit.
pub struct Authed {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl Authed {
    /// Who is calling.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }

    /// The protocol the handshake agreed on (ALPN), e.g. `h2` or `http/1.1`.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.get_ref().1.alpn_protocol()
    }
}

impl tonic::transport::server::Connected for Authed {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Authed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Authed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Decides from a verified peer (or none) whether its connection is served.
type Admit = dyn Fn(Option<&PeerIdentity>) -> bool + Send + Sync;

/// Accepts connections, handshakes each in its own task (a slow one holds up no other) and
/// passes on those whose peer `admit` allows.
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ca: CaCert,
    max_connections: usize,
    admit: Arc<Admit>,
    out: mpsc::Sender<Result<Authed, io::Error>>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a cluster connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = out.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, ca, admit, out) = (
            acceptor.clone(),
            ca.clone(),
            Arc::clone(&admit),
            out.clone(),
        );
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "cluster TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%remote, "cluster TLS handshake timed out");
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates();
            let identity = match paddock_cluster_tls::client_identity(&ca, certs) {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "refused a cluster certificate");
                    return;
                }
            };
            if !admit(identity.as_ref()) {
                match &identity {
                    Some(id) => {
                        tracing::warn!(%remote, peer = %id.uri(), "refused a cluster member whose role may not connect here")
                    }
                    None => {
                        tracing::warn!(%remote, "refused a cluster connection without a certificate")
                    }
                }
                return;
            }
            let info = PeerInfo { identity, remote };
            let _ = out
                .send(Ok(Authed {
                    tls,
                    info,
                    _slot: slot,
                }))
                .await;
        });
    }
}

/// The verified connections of `listener` for a tonic server's `serve_with_incoming`: TLS with
/// `config`, the peer's certificate (if any) checked against `ca`, at most `max_connections`
/// at once, each handshake bounded by [`HANDSHAKE_TIMEOUT`], and only peers `admit` allows.
/// Drop the handle to stop accepting.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
    ca: CaCert,
    max_connections: usize,
    admit: impl Fn(Option<&PeerIdentity>) -> bool + Send + Sync + 'static,
) -> (ReceiverStream<Result<Authed, io::Error>>, AcceptHandle) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(
        listener,
        acceptor,
        ca,
        max_connections,
        Arc::new(admit),
        tx,
    ));
    (ReceiverStream::new(rx), AcceptHandle(task))
}

/// Stops the accept loop of [`incoming`] when dropped.
#[derive(Debug)]
pub struct AcceptHandle(tokio::task::JoinHandle<()>);

impl Drop for AcceptHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
