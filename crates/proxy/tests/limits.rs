//! The slow-client limits of [`paddock_proxy::listener`] over real sockets: half-sent request
//! heads beyond a client's cap are refused at once while other clients are still served, every
//! half-sent connection is closed after the header timeout, and requests whose head is in are
//! never cut by it (keep-alive reuse, long response streams).
//!
//! Clients from "other hosts" connect from 127.0.0.2 (Linux routes all of 127/8 to `lo`).

mod wire;

use wire::until_closed;

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use paddock_proxy::listener::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

const HALF_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: paddock\r\nUser-Agent: slow";
const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// `/health` answers `ok`; `/slow` streams three chunks 700 ms apart (longer in all than the
/// header timeouts used here).
async fn handler(
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    if req.uri().path() == "/slow" {
        let chunks = futures::stream::unfold(0, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i}\n")))),
                i + 1,
            ))
        });
        return Ok(Response::new(StreamBody::new(chunks).boxed()));
    }
    Ok(Response::new(
        http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
    ))
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(limits: Limits) -> Server {
    let tcp = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        listener::serve(tcp, &limits, handler, stopped, Duration::from_secs(1))
            .await
            .expect("listener")
    });
    Server { addr, _stop: stop }
}

async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind((src, 0).into()).expect("bind client");
    socket.connect(addr).await.expect("connect")
}

/// A connection that sent part of a request head and then nothing.
async fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = connect_from(LOCAL, addr).await;
    s.write_all(HALF_HEAD).await.expect("half head");
    s
}

/// `GET path` with `Connection: close` on a new connection from `src`; the raw answer.
async fn get(src: Ipv4Addr, addr: SocketAddr, path: &str) -> String {
    let mut s = connect_from(src, addr).await;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: paddock\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    String::from_utf8_lossy(&until_closed(&mut s).await).into_owned()
}

/// Hang guard only (generous, never a speed assertion).
/// Waits (bounded by [`within`]) until `src` gets `/health` answered with 200 again.
async fn served_again(what: &str, src: Ipv4Addr, addr: SocketAddr) {
    within(what, async {
        loop {
            if get(src, addr, "/health").await.starts_with("HTTP/1.1 200 ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn is_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn half_sent_heads_beyond_the_client_cap_are_refused_and_others_still_served() {
    let per_ip = 20;
    let server = start(Limits {
        header_timeout: Duration::from_secs(3600),
        keepalive_timeout: Duration::from_secs(3600),
        max_connections: 1000,
        max_per_ip: per_ip,
    })
    .await;
    // The listener accepts in connection order: the first `per_ip` get slots, the rest not.
    let mut conns = Vec::new();
    for _ in 0..per_ip * 3 {
        conns.push(half_sent(server.addr).await);
    }
    for (i, c) in conns.iter_mut().enumerate().skip(per_ip) {
        let answer = within("refused connection closes", until_closed(c)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 429 "),
            "connection {i}: {answer}"
        );
    }
    // Another client is served while this one holds its whole share.
    let health = within(
        "health from another client",
        get(OTHER, server.addr, "/health"),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    // This client is told why it is refused.
    let refused = within(
        "health from the full client",
        get(LOCAL, server.addr, "/health"),
    )
    .await;
    assert!(
        refused.is_empty() || refused.starts_with("HTTP/1.1 429 "),
        "{refused}"
    );
    // The admitted half-sent ones are still waiting (nothing times out within an hour).
    assert!(conns[..per_ip].iter().all(is_open));
}

#[tokio::test]
async fn the_listener_cap_refuses_every_client_once_full() {
    let server = start(Limits {
        header_timeout: Duration::from_secs(3600),
        keepalive_timeout: Duration::from_secs(3600),
        max_connections: 10,
        max_per_ip: 10,
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(half_sent(server.addr).await);
    }
    let refused = within("health while full", get(OTHER, server.addr, "/health")).await;
    assert!(
        refused.is_empty() || refused.starts_with("HTTP/1.1 503 "),
        "{refused}"
    );
    drop(conns);
    // The slots come back once the server sees the connections close.
    served_again("health after the slots came back", OTHER, server.addr).await;
}

#[tokio::test]
async fn half_sent_heads_are_closed_after_the_header_timeout() {
    let server = start(Limits {
        header_timeout: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(3600),
        max_connections: 1000,
        max_per_ip: 100,
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(half_sent(server.addr).await);
    }
    // Also one that sent nothing at all.
    let mut silent = connect_from(LOCAL, server.addr).await;
    for c in &mut conns {
        let answer = within("half-sent connection closes", until_closed(c)).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    within("silent connection closes", until_closed(&mut silent)).await;
    // Their slots are free again.
    served_again("the client is served again", LOCAL, server.addr).await;
}

#[tokio::test]
async fn requests_with_their_head_in_outlive_the_header_timeout() {
    let server = start(Limits {
        header_timeout: Duration::from_millis(500),
        keepalive_timeout: Duration::from_secs(3600),
        max_connections: 1000,
        max_per_ip: 10,
    })
    .await;
    let mut s = connect_from(LOCAL, server.addr).await;
    // A response streamed for longer than the header timeout...
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: paddock\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"chunk2\n\r\n0\r\n\r\n") {
        let n = within("stream", s.read(&mut buf)).await.expect("read");
        assert_ne!(n, 0, "cut: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // ...and a kept-alive connection idle past the header timeout, both run to the end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: paddock\r\nConnection: close\r\n\r\n")
        .await
        .expect("second request");
    let second =
        String::from_utf8_lossy(&within("second", until_closed(&mut s)).await).into_owned();
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
}
