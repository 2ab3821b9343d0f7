//! The part of ZeroMQ's wire protocol (ZMTP 3.0, RFC 23, NULL security) a Jupyter client
//! needs: connect over TCP, exchange greetings and `READY` commands, send and receive
//! multipart messages. Written for this crate rather than taken from a ZeroMQ library, so that
//! a kernel that misbehaves or goes away is an error here, never a panic, and no C library is
//! linked into the static binary that runs inside sandboxes.
//!
//! A connection is split in a [`Reader`] and a [`Writer`]. A SUB socket subscribes by sending a
//! message whose first byte is 1 ([`Writer::subscribe`], the 3.0 form, which libzmq accepts from
//! a peer that greets with version 3.0).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The largest frame accepted (a kernel's outputs can be big, not unbounded).
pub const MAX_FRAME: u64 = 512 << 20;
/// The most frames in one message.
pub const MAX_FRAMES: usize = 1024;

const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// Our greeting: signature, version 3.0, mechanism NULL, not a server, filler.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The receiving half of a connection.
#[derive(Debug)]
pub struct Reader {
    inner: BufReader<OwnedReadHalf>,
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct Writer {
    inner: OwnedWriteHalf,
}

/// One frame as read: its flags and body.
struct Frame {
    flags: u8,
    body: Bytes,
}

impl Reader {
    async fn frame(&mut self) -> io::Result<Frame> {
        let flags = self.inner.read_u8().await?;
        if flags & !(MORE | LONG | COMMAND) != 0 {
            return Err(bad(format!("unknown frame flags {flags:#x}")));
        }
        let size = if flags & LONG != 0 {
            self.inner.read_u64().await?
        } else {
            u64::from(self.inner.read_u8().await?)
        };
        if size > MAX_FRAME {
            return Err(bad(format!("a frame of {size} bytes is over the limit")));
        }
        let mut body = vec![0u8; size as usize];
        self.inner.read_exact(&mut body).await?;
        Ok(Frame {
            flags,
            body: body.into(),
        })
    }

    /// The next message's frames (commands between messages are skipped).
    pub async fn recv(&mut self) -> io::Result<Vec<Bytes>> {
        let mut frames = Vec::new();
        loop {
            let f = self.frame().await?;
            if f.flags & COMMAND != 0 {
                if !frames.is_empty() {
                    return Err(bad("a command inside a message"));
                }
                continue;
            }
            frames.push(f.body);
            if f.flags & MORE == 0 {
                return Ok(frames);
            }
            if frames.len() >= MAX_FRAMES {
                return Err(bad("a message of too many frames"));
            }
        }
    }
}

fn encode_frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    if body.len() > 255 {
        out.push(flags | LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

/// A `READY` command announcing `socket_type`.
fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(5);
    body.extend_from_slice(b"READY");
    for (name, value) in [("Socket-Type", socket_type.as_bytes()), ("Identity", b"")] {
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = Vec::new();
    encode_frame(&mut out, COMMAND, &body);
    out
}

impl Writer {
    /// Sends one message of `frames` (at least one).
    pub async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let mut out = Vec::with_capacity(frames.iter().map(|f| f.len() + 9).sum());
        for (i, f) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { MORE } else { 0 };
            encode_frame(&mut out, more, f);
        }
        if frames.is_empty() {
            encode_frame(&mut out, 0, b"");
        }
        self.inner.write_all(&out).await
    }

    /// Subscribes a SUB connection to messages starting with `prefix`.
    pub async fn subscribe(&mut self, prefix: &[u8]) -> io::Result<()> {
        let mut body = vec![1u8];
        body.extend_from_slice(prefix);
        self.send(&[body.into()]).await
    }
}

/// Greets the peer on `stream` as `socket_type` and reads its greeting and `READY`.
pub async fn handshake(stream: TcpStream, socket_type: &str) -> io::Result<(Reader, Writer)> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(&greeting()).await?;
    let mut theirs = [0u8; 64];
    r.read_exact(&mut theirs).await?;
    if theirs[0] != 0xFF || theirs[9] != 0x7F {
        return Err(bad("not a ZeroMQ peer"));
    }
    if theirs[10] < 3 {
        return Err(bad(format!("ZMTP {} is too old", theirs[10])));
    }
    if &theirs[12..16] != b"NULL" || theirs[16..32].iter().any(|b| *b != 0) {
        return Err(bad("the peer wants a security mechanism other than NULL"));
    }
    w.write_all(&ready(socket_type)).await?;
    let mut reader = Reader { inner: r };
    let f = reader.frame().await?;
    if f.flags & COMMAND == 0 || !f.body.starts_with(b"\x05READY") {
        return Err(bad("the peer's first frame is not READY"));
    }
    Ok((reader, Writer { inner: w }))
}

/// Connects to `addr` as `socket_type` (`DEALER`, `SUB`).
pub async fn connect(
    addr: std::net::SocketAddr,
    socket_type: &str,
) -> io::Result<(Reader, Writer)> {
    handshake(TcpStream::connect(addr).await?, socket_type).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_ends_greet_and_pass_short_and_long_frames() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (mut r, mut w) = handshake(s, "ROUTER").await.expect("server handshake");
            let got = r.recv().await.expect("recv");
            w.send(&got).await.expect("echo");
            got
        });
        let (mut r, mut w) = connect(addr, "DEALER").await.expect("connect");
        let long = Bytes::from(vec![7u8; 70_000]);
        let sent = vec![Bytes::from_static(b"<IDS|MSG>"), Bytes::new(), long.clone()];
        w.send(&sent).await.expect("send");
        assert_eq!(r.recv().await.expect("echoed"), sent);
        assert_eq!(server.await.expect("server"), sent);
    }

    #[tokio::test]
    async fn a_peer_that_is_not_zeromq_or_lies_about_sizes_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            let _ = s.write_all(&[0u8; 64]).await;
        });
        let e = connect(addr, "DEALER").await.expect_err("not zeromq");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (_r, mut w) = handshake(s, "ROUTER").await.expect("handshake");
            // A frame announcing 1 TiB.
            let mut out = vec![LONG];
            out.extend_from_slice(&(1u64 << 40).to_be_bytes());
            w.inner.write_all(&out).await.expect("write");
        });
        let (mut r, _w) = connect(addr, "DEALER").await.expect("connect");
        let e = r.recv().await.expect_err("too big");
        assert!(e.to_string().contains("over the limit"), "{e}");
    }
}
