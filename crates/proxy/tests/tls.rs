//! HTTPS on [`paddock_proxy::listener::serve_tls`] over real sockets, with a certificate from a
//! throwaway CA made here: a client trusting the CA is served (by name, ALPN `http/1.1`), a
//! client that opens TCP and sends nothing, or stalls in the middle of the handshake, is
//! disconnected after the header timeout, handshakes in progress count against the caps, and
//! plain HTTP gets a plain 400 saying the port is HTTPS, and upgrades (WebSocket-style tunnels)
//! work over TLS.

mod wire;

use wire::until_closed;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use paddock_proxy::listener::{self, Limits};
use paddock_proxy::ServerTls;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// `GET /` answers `hello <host>`; a request with `Upgrade: echo` is switched to a tunnel
/// that echoes what it reads.
async fn handler(
    mut req: Request<Incoming>,
) -> Result<Response<http_body_util::Full<Bytes>>, Infallible> {
    if req.headers().get(http::header::UPGRADE).is_some() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut res = Response::new(http_body_util::Full::new(Bytes::new()));
        *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("echo"),
        );
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(res);
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(Response::new(http_body_util::Full::new(Bytes::from(
        format!("hello {host}"),
    ))))
}

/// A CA and a leaf for `*.paddock.test` and `api.example.test` it signed, written as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    tls: ServerTls,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params = CertificateParams::new(vec![
        "*.paddock.test".to_string(),
        "api.example.test".to_string(),
    ])
    .expect("leaf params");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    // The chain: leaf, then the CA (as servers usually send it).
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).expect("cert");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("key");
    let tls = ServerTls::load(&cert, &key).expect("load");
    Pki {
        _dir: dir,
        ca_der: ca.der().clone(),
        tls,
    }
}

fn connector(ca: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(limits: Limits, tls: ServerTls) -> Server {
    let tcp = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        listener::serve_tls(
            tcp,
            &limits,
            Some(&tls),
            handler,
            stopped,
            Duration::from_secs(1),
        )
        .await
        .expect("listener")
    });
    Server { addr, _stop: stop }
}

/// Hang guard only (generous, never a speed assertion).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within 60 s"))
}

/// `GET /` over TLS to `name`; the raw answer and the protocol ALPN chose.
async fn https_get(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    name: &str,
) -> io::Result<(String, Option<Vec<u8>>)> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).expect("name");
    let mut tls = connector(ca).connect(server_name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut got = Vec::new();
    match tls.read_to_end(&mut got).await {
        Ok(_) => {}
        // A peer that closes without close_notify: what was read is the answer.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    Ok((String::from_utf8_lossy(&got).into_owned(), alpn))
}

fn limits(header_timeout: Duration, max_connections: usize) -> Limits {
    Limits {
        header_timeout,
        max_connections,
        max_per_ip: max_connections,
        ..Limits::default()
    }
}

#[tokio::test]
async fn serves_https_to_a_client_trusting_the_ca() {
    let pki = pki();
    let server = start(limits(Duration::from_secs(10), 64), pki.tls.clone()).await;
    let (answer, alpn) = within(
        "https get",
        https_get(server.addr, &pki.ca_der, "49983-abc.paddock.test"),
    )
    .await
    .expect("https");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("hello 49983-abc.paddock.test"), "{answer}");
    assert_eq!(
        alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "h2 is never chosen"
    );
    let (answer, _) = within(
        "api host",
        https_get(server.addr, &pki.ca_der, "api.example.test"),
    )
    .await
    .expect("https");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // A name the certificate does not carry fails verification on the client.
    let wrong = within(
        "wrong name",
        https_get(server.addr, &pki.ca_der, "other.example.test"),
    )
    .await;
    assert!(wrong.is_err(), "{wrong:?}");
    // A client that does not trust the CA fails too.
    let stranger = KeyPair::generate().expect("key");
    let other_ca = CertificateParams::new(vec!["x.test".to_string()])
        .expect("params")
        .self_signed(&stranger)
        .expect("cert");
    let untrusted = within(
        "untrusted",
        https_get(server.addr, other_ca.der(), "49983-abc.paddock.test"),
    )
    .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
}

#[tokio::test]
async fn silent_and_stalled_handshakes_are_cut_at_the_header_timeout() {
    let pki = pki();
    let timeout = Duration::from_millis(800);
    let server = start(limits(timeout, 64), pki.tls.clone()).await;
    // Opens TCP and sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Sends the first bytes of a ClientHello (a handshake record header) and stalls.
    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("partial hello");
    let started = Instant::now();
    let got = within("silent closed", until_closed(&mut silent)).await;
    assert!(got.is_empty(), "nothing is written to a silent client");
    let got = within("stalled closed", until_closed(&mut stalled)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(100),
        "closed only once the timeout passed"
    );
    // The listener still serves.
    let (answer, _) = within(
        "served after",
        https_get(server.addr, &pki.ca_der, "49983-abc.paddock.test"),
    )
    .await
    .expect("https");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn connections_in_handshake_hold_their_place_under_the_cap() {
    let pki = pki();
    let server = start(limits(Duration::from_secs(3), 2), pki.tls.clone()).await;
    let _a = TcpStream::connect(server.addr).await.expect("a");
    let _b = TcpStream::connect(server.addr).await.expect("b");
    // Give the accept loop time to admit both before the third comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.addr).await.expect("c");
    let got = within("third refused", until_closed(&mut third)).await;
    assert!(got.is_empty(), "closed without a plain answer: {got:?}");
    let refused = https_get(server.addr, &pki.ca_der, "49983-abc.paddock.test").await;
    assert!(refused.is_err(), "the cap is full: {refused:?}");
    drop((_a, _b));
    let answer = within("served again", async {
        loop {
            if let Ok((answer, _)) =
                https_get(server.addr, &pki.ca_der, "49983-abc.paddock.test").await
            {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn plain_http_is_told_to_use_https() {
    let pki = pki();
    let server = start(limits(Duration::from_secs(10), 64), pki.tls.clone()).await;
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: 49983-abc.paddock.test\r\n\r\n")
        .await
        .expect("request");
    let got = within("plain answered", until_closed(&mut plain)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("use an https:// URL"), "{text}");
}

#[tokio::test]
async fn upgrades_work_over_tls() {
    let pki = pki();
    let server = start(limits(Duration::from_millis(500), 64), pki.tls.clone()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = ServerName::try_from("8000-abc.paddock.test").expect("name");
    let mut tls = within("handshake", connector(&pki.ca_der).connect(name, tcp))
        .await
        .expect("tls");
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 8000-abc.paddock.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("101 head", tls.read_exact(&mut byte))
            .await
            .expect("head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Longer in all than the header timeout: a tunnel is not cut by it.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let msg = format!("ping {round}");
        tls.write_all(msg.as_bytes()).await.expect("write");
        let mut echo = vec![0u8; msg.len()];
        within("echo", tls.read_exact(&mut echo))
            .await
            .expect("echo");
        assert_eq!(echo, msg.as_bytes());
    }
}
