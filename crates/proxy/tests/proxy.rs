//! The proxy end to end over real sockets: a real HTTP server as "envd" on a Unix socket, a real
//! port forwarder on a Unix socket in front of a real TCP server, the proxy on 127.0.0.1:0, and
//! real HTTP and WebSocket clients.

mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use paddock_proxy::{ProxyConfig, SandboxDirectory as _, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use support::*;

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn header_routing_reaches_envd_and_passes_the_request_through() {
    let env = start(ProxyConfig::default()).await;
    let req = env
        .to(ENVD_PORT, "/echo?path=%2Fhome%2Fuser&x=1")
        .method("PUT")
        .header("X-Access-Token", "secret")
        .header("Connection", "keep-alive, x-hop")
        .header("X-Hop", "dropped")
        .body(full("payload"))
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("PUT /echo?path=%2Fhome%2Fuser&x=1\n"),
        "{body}"
    );
    assert!(body.contains("x-access-token=secret"), "{body}");
    assert!(
        body.contains("e2b-sandbox-id=itestsandbox0000000001"),
        "{body}"
    );
    assert!(body.contains(&format!("host={}", env.addr)), "{body}");
    assert!(!body.contains("x-hop"), "hop-by-hop header leaked: {body}");
    assert!(body.ends_with("body=payload"), "{body}");
}

#[tokio::test]
async fn host_routing_reaches_envd_and_user_ports() {
    let env = start(ProxyConfig::default()).await;
    let host = format!("{ENVD_PORT}-{SANDBOX}.sandbox.test");
    let req = Request::builder()
        .uri(format!("http://{}/echo", env.addr))
        .header("host", &host)
        .body(empty())
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&format!("host={host}")), "{body}");

    let host = format!("{}-{SANDBOX}.sandbox.test:3002", env.user_port);
    let req = Request::builder()
        .uri(format!("http://{}/hello", env.addr))
        .header("host", &host)
        // Host wins over headers that point elsewhere.
        .header("E2b-Sandbox-Id", "iother")
        .header("E2b-Sandbox-Port", "1")
        .body(empty())
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("hello from {} via {host}", env.user_port));
}

#[tokio::test]
async fn header_routing_reaches_a_user_port_through_the_forwarder() {
    let env = start(ProxyConfig::default()).await;
    let req = env
        .to(env.user_port, "/hello")
        .body(empty())
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with(&format!("hello from {}", env.user_port)),
        "{body}"
    );
}

#[tokio::test]
async fn streaming_response_arrives_incrementally() {
    let env = start(ProxyConfig::default()).await;
    let req = env.to(ENVD_PORT, "/stream").body(empty()).expect("request");
    let resp = within("headers", client().request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within("first chunk", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(first.into_data().expect("data"), "first\n");
    // The server only produces the second chunk once the first reached the client.
    env.stream_go.notify_one();
    let mut rest = Vec::new();
    while let Some(frame) = within("rest", body.frame()).await {
        if let Ok(data) = frame.expect("frame").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert_eq!(rest, b"second\n");
}

#[tokio::test]
async fn request_body_streams_full_duplex() {
    let env = start(ProxyConfig::default()).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
    let req = env
        .to(ENVD_PORT, "/duplex")
        .method("POST")
        .body(body)
        .expect("request");
    tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .await
        .expect("send one");
    let resp = within("headers", client().request(req))
        .await
        .expect("response");
    let mut body = resp.into_body();
    let first = within("echo of one", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(first.into_data().expect("data"), "one");
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .expect("send two");
    let second = within("echo of two", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(second.into_data().expect("data"), "two");
    drop(tx);
    assert!(within("end", body.frame()).await.is_none());
}

#[tokio::test]
async fn large_chunked_upload_passes() {
    let env = start(ProxyConfig::default()).await;
    let data = Bytes::from(pattern(20 * MIB));
    let mut hash = FNV_START;
    fnv(&mut hash, &data);
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..data.len())
        .step_by(256 * 1024)
        .map(|i| Ok(Frame::data(data.slice(i..(i + 256 * 1024).min(data.len())))))
        .collect();
    let body = StreamBody::new(futures::stream::iter(chunks)).boxed_unsync();
    let req = env
        .to(ENVD_PORT, "/upload")
        .method("POST")
        .body(body)
        .expect("request");
    let (status, _, body) = within("upload", env.get(req)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("{} {hash:x}", 20 * MIB));
}

#[tokio::test]
async fn large_download_passes() {
    let env = start(ProxyConfig::default()).await;
    let req = env
        .to(ENVD_PORT, "/download?mib=50")
        .body(empty())
        .expect("request");
    let resp = within("headers", client().request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut len, mut hash, mut frames) = (0usize, FNV_START, 0usize);
    while let Some(frame) = within("download", body.frame()).await {
        if let Ok(data) = frame.expect("frame").into_data() {
            len += data.len();
            fnv(&mut hash, &data);
            frames += 1;
        }
    }
    let mut expected = FNV_START;
    fnv(&mut expected, &pattern(50 * MIB));
    assert_eq!(len, 50 * MIB);
    assert_eq!(hash, expected);
    assert!(frames > 1, "the body must stream, not arrive as one piece");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let env = start(ProxyConfig::default()).await;
    let mut req = format!("ws://{}/ws", env.addr)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("E2b-Sandbox-Id", SANDBOX.parse().expect("value"));
    req.headers_mut().insert(
        "E2b-Sandbox-Port",
        env.user_port.to_string().parse().expect("value"),
    );
    let tcp = TcpStream::connect(env.addr).await.expect("connect proxy");
    let (mut ws, resp) = within("handshake", tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "world"] {
        ws.send(WsMessage::text(text)).await.expect("send");
        let reply = within("reply", ws.next())
            .await
            .expect("message")
            .expect("ok");
        assert_eq!(reply, WsMessage::text(format!("echo: {text}")));
    }
    ws.send(WsMessage::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let reply = within("binary reply", ws.next())
        .await
        .expect("message")
        .expect("ok");
    assert_eq!(reply, WsMessage::binary(vec![1u8, 2, 3]));
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn unknown_or_dead_sandbox_is_502_not_found() {
    let env = start(ProxyConfig::default()).await;
    let req = Request::builder()
        .uri(format!("http://{}/health", env.addr))
        .header("E2b-Sandbox-Id", "iunknown")
        .header("E2b-Sandbox-Port", "49983")
        .body(empty())
        .expect("request");
    let (status, headers, body) = env.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(
        body,
        r#"{"sandboxId":"iunknown","message":"The sandbox was not found","code":502}"#
    );

    // Listed, but its sockets are gone: the sandbox died.
    let gone = PathBuf::from("/nonexistent/paddock-test.sock");
    env.directory.insert(
        "idead",
        Upstream {
            envd_socket: gone.clone(),
            forward_socket: gone,
        },
    );
    for port in [ENVD_PORT, 8080] {
        let req = Request::builder()
            .uri(format!("http://{}/health", env.addr))
            .header("E2b-Sandbox-Id", "idead")
            .header("E2b-Sandbox-Port", port.to_string())
            .body(empty())
            .expect("request");
        let (status, _, body) = env.get(req).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body,
            r#"{"sandboxId":"idead","message":"The sandbox was not found","code":502}"#
        );
    }
}

#[tokio::test]
async fn closed_port_is_502_port_not_open() {
    let env = start(ProxyConfig::default()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let req = env.to(closed, "/").body(empty()).expect("request");
    let (status, headers, body) = env.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(
        body,
        format!(
            r#"{{"sandboxId":"{SANDBOX}","message":"The sandbox is running but port is not open","port":{closed},"code":502}}"#
        )
    );
}

#[tokio::test]
async fn unroutable_requests_are_400() {
    let env = start(ProxyConfig::default()).await;
    let req = Request::builder()
        .uri(format!("http://{}/health", env.addr))
        .body(empty())
        .expect("request");
    let (status, headers, body) = env.get(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert!(
        body.starts_with(r#"{"code":400,"message":"missing sandbox routing"#),
        "{body}"
    );

    let req = Request::builder()
        .uri(format!("http://{}/health", env.addr))
        .header("E2b-Sandbox-Id", "Bad_Id")
        .header("E2b-Sandbox-Port", "49983")
        .body(empty())
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        r#"{"code":400,"message":"invalid sandbox id \"Bad_Id\""}"#
    );
}

#[tokio::test]
async fn envd_control_paths_are_refused() {
    let env = start(ProxyConfig::default()).await;
    let req = env
        .to(ENVD_PORT, "/init")
        .method("POST")
        .body(full("{}"))
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.contains("envd init reached"), "{body}");
    assert_eq!(
        env.envd_conns.load(Ordering::SeqCst),
        0,
        "envd must not be contacted"
    );
}

#[tokio::test]
async fn envd_connections_are_reused() {
    let env = start(ProxyConfig::default()).await;
    for i in 0..5 {
        let req = env
            .to(ENVD_PORT, &format!("/echo?i={i}"))
            .body(empty())
            .expect("request");
        let (status, _, _) = env.get(req).await;
        assert_eq!(status, StatusCode::OK);
        // The connection goes back to the pool on a task once the response is complete.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.envd_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_going_away_drops_the_upstream_stream() {
    let mut env = start(ProxyConfig::default()).await;
    let mut tcp = TcpStream::connect(env.addr).await.expect("connect");
    let head = format!(
        "GET /hold HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {SANDBOX}\r\nE2b-Sandbox-Port: {ENVD_PORT}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("write request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("tick") {
        let n = within("ticks", tcp.read(&mut buf)).await.expect("read");
        assert!(n > 0, "proxy closed the stream");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(env.hold_dropped.try_recv().is_err(), "stream still running");
    drop(tcp);
    within("upstream stream dropped", env.hold_dropped.recv())
        .await
        .expect("drop signal");
}

#[tokio::test]
async fn shutdown_finishes_within_the_grace_period() {
    let config = ProxyConfig {
        shutdown_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let mut env = start(config).await;
    let req = env.to(ENVD_PORT, "/hold").body(empty()).expect("request");
    let resp = within("headers", client().request(req))
        .await
        .expect("response");
    let mut body = resp.into_body();
    within("first tick", body.frame())
        .await
        .expect("frame")
        .expect("ok");

    let started = Instant::now();
    env.stop
        .take()
        .expect("stop")
        .send(())
        .expect("signal shutdown");
    within("serve returns", &mut env.server)
        .await
        .expect("join")
        .expect("serve ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The cut stream ends for the client and the upstream stream is dropped.
    while let Some(Ok(_)) = within("body ends", body.frame()).await {}
    within("upstream dropped", env.hold_dropped.recv())
        .await
        .expect("drop signal");
    assert!(
        TcpStream::connect(env.addr).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn a_symlinked_envd_socket_is_not_followed() {
    let env = start(ProxyConfig::default()).await;
    let id = paddock_domain::SandboxId::parse(SANDBOX).expect("id");
    let paddock_proxy::Lookup::Running(real) = env.directory.lookup(&id) else {
        panic!("the test sandbox is listed");
    };
    // A sandbox replaced its envd.sock with a symlink to a socket elsewhere on the host.
    let evil_dir = tempfile::tempdir().expect("tempdir");
    let link = evil_dir.path().join("envd.sock");
    std::os::unix::fs::symlink(&real.envd_socket, &link).expect("symlink");
    env.directory.insert(
        "ievil",
        Upstream {
            envd_socket: link,
            forward_socket: real.forward_socket.clone(),
        },
    );
    let req = Request::builder()
        .uri(format!("http://{}/echo", env.addr))
        .header("E2b-Sandbox-Id", "ievil")
        .header("E2b-Sandbox-Port", ENVD_PORT.to_string())
        .body(empty())
        .expect("request");
    let (status, _, body) = env.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        r#"{"sandboxId":"ievil","message":"The sandbox was not found","code":502}"#
    );
    assert_eq!(env.envd_conns.load(Ordering::SeqCst), 0, "symlink followed");

    // The real socket is still reached.
    let req = env.to(ENVD_PORT, "/echo").body(empty()).expect("request");
    let (status, _, _) = env.get(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.envd_conns.load(Ordering::SeqCst), 1);
}

/// A raw "envd" that answers the first request of each connection and closes the connection,
/// unanswered, on the second one. Returns the request lines it read.
async fn serve_closing_envd(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let listener = tokio::net::UnixListener::bind(path).expect("bind");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for answered in [true, false] {
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            break String::from_utf8_lossy(&head).into_owned();
                        }
                        let mut chunk = [0u8; 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let line = head.lines().next().unwrap_or_default().to_string();
                    log.lock().expect("lock").push(line);
                    if !answered {
                        return; // closes the connection without an answer
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

#[tokio::test]
async fn pooled_requests_are_replayed_only_when_safe() {
    let env = start(ProxyConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("envd.sock");
    let seen = serve_closing_envd(&socket).await;
    env.directory.insert(
        "iclosing",
        Upstream {
            envd_socket: socket.clone(),
            forward_socket: socket,
        },
    );
    let send = |method: &'static str, path: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", env.addr))
            .header("E2b-Sandbox-Id", "iclosing")
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string())
            .body(empty())
            .expect("request");
        env.get(req)
    };
    // Fills the pool with a connection that will close on its next request.
    assert_eq!(send("GET", "/a").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A GET that hits the closing connection is sent again on a fresh one.
    assert_eq!(send("GET", "/b").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A POST may have been acted on: it is not sent twice.
    let (status, _, body) = send("POST", "/c").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.contains("was not found"), "{body}");
    let seen = seen.lock().expect("lock").clone();
    let lines: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(
        lines,
        [
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /b HTTP/1.1",
            "POST /c HTTP/1.1"
        ]
    );
}
