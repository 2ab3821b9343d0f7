//! Opening HTTP/1.1 connections into a sandbox: straight to envd's Unix socket, or through the
//! port-forwarding socket (2-byte big-endian port out, 1 status byte back, then the stream is
//! the TCP connection to that port inside the sandbox), or, for a sandbox on another host, over
//! TCP and TLS (ALPN `http/1.1`) to its node's hop. Each connection's driver runs on its own
//! task with upgrades enabled and ends when the connection closes or its sender is dropped.
//!
//! The sockets live in a directory the sandbox can write, so a socket path is never connected
//! to by name: [`open`] opens the final component without following symlinks, checks that it
//! is a socket and connects through `/proc/self/fd/<n>`, which reaches exactly that inode.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::directory::{RemoteUpstream, HOP_ALPN};

/// Boxed error of request bodies passed upstream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent into a sandbox.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Forwarding-socket status byte: connected.
const FORWARD_CONNECTED: u8 = 0;
/// Forwarding-socket status byte: nothing listens on the port.
const FORWARD_CLOSED: u8 = 1;

/// One place inside a sandbox that takes HTTP connections; also the connection pool's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// envd, through its own socket.
    Envd(PathBuf),
    /// Any other port, through the forwarding socket.
    Forward(PathBuf, u16),
    /// Another host's hop; one target per node, whatever the sandbox or port.
    Remote(RemoteUpstream),
}

/// Why no connection into the sandbox could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The socket does not exist or refused the connection (the sandbox is gone).
    #[error("sandbox socket {path} is unreachable")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The forwarder reports that nothing listens on the port.
    #[error("nothing listens on the sandbox port")]
    PortClosed,
    /// The forwarder answered with a status byte this proxy does not know.
    #[error("port forwarder answered with unknown status {0}")]
    BadStatus(u8),
    /// Connecting took longer than the configured limit.
    #[error("connecting into the sandbox timed out")]
    Timeout,
    /// The node's hop refused the TCP connection or the TLS handshake failed (which includes
    /// a hop whose certificate is not the expected node's).
    #[error("the node at {addr} is unreachable")]
    NodeUnreachable {
        /// The hop's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hop did not agree to speak HTTP/1.1 (ALPN).
    #[error("the node at {0} did not negotiate http/1.1")]
    NoHopAlpn(SocketAddr),
    /// The HTTP/1 client could not be set up on the stream.
    #[error("http handshake with the sandbox failed")]
    Handshake(#[source] hyper::Error),
}

/// Opens a new HTTP/1.1 connection to `target` and starts its driver task.
pub(crate) async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<SendRequest<UpstreamBody>, ConnectError> {
    match target {
        Target::Envd(path) => handshake(within(timeout, open(path, None)).await?).await,
        Target::Forward(path, port) => {
            handshake(within(timeout, open(path, Some(*port))).await?).await
        }
        Target::Remote(hop) => handshake(within(timeout, open_hop(hop)).await?).await,
    }
}

/// `open`, or [`ConnectError::Timeout`] once `timeout` has passed.
async fn within<T>(
    timeout: Duration,
    open: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// Sets up the HTTP/1 client on `stream` and spawns its driver.
async fn handshake<S>(stream: S) -> Result<SendRequest<UpstreamBody>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Connects to a node's hop: TCP, then TLS with the hop's configuration; the hop must pick
/// [`HOP_ALPN`].
async fn open_hop(
    hop: &RemoteUpstream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let addr = hop.addr();
    let unreachable = |source| ConnectError::NodeUnreachable { addr, source };
    let tcp = TcpStream::connect(addr).await.map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    // Cluster configurations check the peer's identity, not a host name: the address will do.
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(hop.tls()))
        .connect(name, tcp)
        .await
        .map_err(unreachable)?;
    if tls.get_ref().1.alpn_protocol() != Some(HOP_ALPN) {
        return Err(ConnectError::NoHopAlpn(addr));
    }
    Ok(tls)
}

/// Connects to envd's socket (`port` `None`) or through the forwarding socket to `port`.
async fn open(path: &Path, port: Option<u16>) -> Result<UnixStream, ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = connect_no_follow(path).await.map_err(unreachable)?;
    let Some(port) = port else {
        return Ok(stream);
    };
    stream
        .write_all(&port.to_be_bytes())
        .await
        .map_err(unreachable)?;
    match stream.read_u8().await {
        Ok(FORWARD_CONNECTED) => Ok(stream),
        Ok(FORWARD_CLOSED) => Err(ConnectError::PortClosed),
        Ok(other) => Err(ConnectError::BadStatus(other)),
        // The forwarder hung up without a status: it could not reach the port.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnectError::PortClosed),
        Err(e) => Err(unreachable(e)),
    }
}

/// Connects to the Unix socket at `path` without following a symlink in its last component:
/// a sandbox could otherwise point `envd.sock` at any socket of the host.
async fn connect_no_follow(path: &Path) -> std::io::Result<UnixStream> {
    let handle = open_socket_inode(path)?;
    // The magic link resolves to the inode `handle` refers to, whatever `path` names by now.
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    let stream = UnixStream::connect(&by_fd).await;
    drop(handle);
    stream
}

/// Opens `path` with `O_PATH | O_NOFOLLOW` (and `O_CLOEXEC`, which std always adds) and checks
/// that it is a socket. A symlink fails with `ELOOP`; anything else that is not a socket fails
/// with `InvalidInput`.
fn open_socket_inode(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a unix socket",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn forwarder_answering(status: Option<u8>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fwd.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut port = [0u8; 2];
            s.read_exact(&mut port).await.expect("port");
            assert_eq!(u16::from_be_bytes(port), 8080);
            if let Some(status) = status {
                s.write_all(&[status]).await.expect("status");
                // keep the stream open until the client is done
                let _ = s.read_u8().await;
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn forward_status_bytes() {
        let t = Duration::from_secs(5);
        let (_d, path) = forwarder_answering(Some(0)).await;
        assert!(connect(&Target::Forward(path, 8080), t).await.is_ok());
        let (_d, path) = forwarder_answering(Some(1)).await;
        let r = connect(&Target::Forward(path, 8080), t).await;
        assert!(matches!(r, Err(ConnectError::PortClosed)), "{r:?}");
        let (_d, path) = forwarder_answering(Some(7)).await;
        let r = connect(&Target::Forward(path, 8080), t).await;
        assert!(matches!(r, Err(ConnectError::BadStatus(7))), "{r:?}");
        let (_d, path) = forwarder_answering(None).await;
        let r = connect(&Target::Forward(path, 8080), t).await;
        assert!(matches!(r, Err(ConnectError::PortClosed)), "{r:?}");
    }

    #[tokio::test]
    async fn symlinked_or_non_socket_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("host.sock");
        let listener = UnixListener::bind(&real).expect("bind");
        let t = Duration::from_secs(1);

        // The real socket works through the fd path.
        assert!(connect(&Target::Envd(real.clone()), t).await.is_ok());
        let (_accepted, _) = listener.accept().await.expect("accepted");

        // A symlink to it is not followed, for envd and for the forwarder.
        let link = dir.path().join("envd.sock");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let r = connect(&Target::Envd(link.clone()), t).await;
        assert!(matches!(r, Err(ConnectError::Unreachable { .. })), "{r:?}");
        let r = connect(&Target::Forward(link, 8080), t).await;
        assert!(matches!(r, Err(ConnectError::Unreachable { .. })), "{r:?}");
        let none = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(none.is_err(), "the symlinked socket was connected");

        // A regular file is not a socket.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        let r = connect(&Target::Envd(file), t).await;
        assert!(matches!(r, Err(ConnectError::Unreachable { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = connect(
            &Target::Envd(dir.path().join("nope.sock")),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(ConnectError::Unreachable { .. })), "{r:?}");
    }
}
