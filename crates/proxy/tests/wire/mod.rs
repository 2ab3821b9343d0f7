//! Raw-socket helpers shared by the listener tests (limits.rs, tls.rs).

use std::io;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Reads until the server closes; a reset counts as closed. Returns what was read.
pub async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading: {e}"),
        }
    }
}
