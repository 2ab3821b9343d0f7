//! The port forwarder the node's proxy uses to reach any TCP port inside the sandbox's network
//! namespace, over a Unix socket in the shared run directory. Protocol per connection: the
//! client sends 2 bytes (big-endian port); envd connects to `127.0.0.1:<port>`, then
//! `[::1]:<port>`, answers one byte ([`CONNECTED`] or [`NOT_LISTENING`]) and then copies bytes
//! both ways until both sides are done (half-close aware).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Reply byte: connected; bytes flow from now on.
pub const CONNECTED: u8 = 0;
/// Reply byte: nothing listens on that port.
pub const NOT_LISTENING: u8 = 1;

/// How long the client may take to send the port.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts forwarding connections forever.
pub async fn serve(listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = handle(conn).await {
                        tracing::debug!(error = %e, "port forwarding connection ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a port forwarding connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connects to `port` on the sandbox's loopback, IPv4 first.
pub async fn connect_local(port: u16) -> Option<TcpStream> {
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        if let Ok(stream) = TcpStream::connect(SocketAddr::new(ip, port)).await {
            return Some(stream);
        }
    }
    None
}

/// Serves one forwarding connection.
pub async fn handle(mut conn: UnixStream) -> io::Result<()> {
    let mut header = [0u8; 2];
    tokio::time::timeout(HEADER_TIMEOUT, conn.read_exact(&mut header))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no port received"))??;
    let port = u16::from_be_bytes(header);
    let Some(mut target) = connect_local(port).await else {
        conn.write_all(&[NOT_LISTENING]).await?;
        return Ok(());
    };
    let _ = target.set_nodelay(true);
    conn.write_all(&[CONNECTED]).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut target).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn forwards_bytes_and_reports_closed_ports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("forward.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(serve(listener));

        // An echo server that upper-cases, then half-closes after the client does.
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("tcp bind");
        let port = tcp.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = tcp.accept().await.expect("accept");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.expect("read");
            s.write_all(&buf.to_ascii_uppercase()).await.expect("write");
        });

        let mut c = UnixStream::connect(&path).await.expect("connect");
        c.write_all(&port.to_be_bytes()).await.expect("port");
        let mut reply = [0u8; 1];
        c.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply[0], CONNECTED);
        c.write_all(b"hello").await.expect("data");
        c.shutdown().await.expect("half-close");
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.expect("response");
        assert_eq!(out, b"HELLO");

        // A port with nothing listening.
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed = unused.local_addr().expect("addr").port();
        drop(unused);
        let mut c = UnixStream::connect(&path).await.expect("connect");
        c.write_all(&closed.to_be_bytes()).await.expect("port");
        c.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply[0], NOT_LISTENING);
    }
}
