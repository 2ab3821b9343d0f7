//! The edge proxy and a node's hop over real sockets and real mutual TLS: the edge (a `Proxy`
//! over a `ClusterDirectory` whose locator names node `n1`) forwards to the hop, a `Proxy`
//! served with `serve_connection` on TLS streams accepted with the node's certificate, whose
//! directory names the local sockets of a fake envd and port forwarder. Certificates come from
//! a real cluster CA (`paddock_cluster_tls`), roles `proxy` and `node`.

#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use paddock_cluster_tls::{
    client_config, server_config, CertRequest, ClientAuth, ClusterCa, ExpectedPeer, MemberId,
    MemberIdentity, PeerIdentity, Role,
};
use paddock_domain::SandboxId;
use paddock_proxy::{
    ClusterDirectory, ClusterDirectoryConfig, LocateError, LocateFuture, Located, Locator, NodeHop,
    Proxy, ProxyConfig, Upstream, HOP_ALPN,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use support::*;

/// A sandbox the control plane places on a node nobody listens for.
const ON_DEAD_NODE: &str = "itestsandboxondeadnode";
/// A sandbox the control plane places on `n2`, at the address where `n1` answers.
const ON_WRONG_NODE: &str = "itestsandboxwrongnode0";

/// The control plane, as far as the edge sees it: a map from sandbox to node, and the proxy's
/// certificate for TLS to any node (trusting exactly that node).
struct TestLocator {
    proxy_identity: MemberIdentity,
    placed: Mutex<HashMap<String, NodeHop>>,
    locates: AtomicUsize,
}

impl Locator for TestLocator {
    fn locate<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
        Box::pin(async move {
            self.locates.fetch_add(1, Ordering::SeqCst);
            let placed = self.placed.lock().expect("lock");
            Ok(match placed.get(id.as_str()) {
                Some(hop) => Located::Running(hop.clone()),
                None => Located::NotFound,
            })
        })
    }

    fn wake<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
        self.locate(id)
    }

    fn hop_tls(&self, node_id: &str) -> Result<rustls::ClientConfig, LocateError> {
        let node = PeerIdentity::new(
            Role::Node,
            MemberId::new(node_id).map_err(LocateError::new)?,
        );
        client_config(&self.proxy_identity, ExpectedPeer::member(node)).map_err(LocateError::new)
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    edge: SocketAddr,
    hop: SocketAddr,
    user_port: u16,
    stream_go: Arc<Notify>,
    envd_conns: Arc<AtomicUsize>,
    /// TLS connections the hop accepted (handshake done, ALPN http/1.1).
    hop_conns: Arc<AtomicUsize>,
    dir: Arc<ClusterDirectory<TestLocator>>,
    proxy_identity: MemberIdentity,
}

fn member(ca: &ClusterCa, role: Role, id: &str) -> MemberIdentity {
    let identity = PeerIdentity::new(role, MemberId::new(id).expect("member id"));
    ca.issue_member(&CertRequest::new(identity))
        .expect("issue member")
}

/// Serves the hop: TLS with the node's certificate (clients must present one of the CA's),
/// ALPN `h2` or `http/1.1`, the latter handed to `hop.serve_connection`.
async fn serve_hop(hop: Proxy, node: &MemberIdentity) -> (SocketAddr, Arc<AtomicUsize>) {
    let mut config = server_config(node, ClientAuth::Required).expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), HOP_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hop");
    let addr = listener.local_addr().expect("hop addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let hop = hop.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(HOP_ALPN) {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                hop.serve_connection(tls, std::future::pending::<()>())
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn start_with(hop_config: ProxyConfig, edge_config: ProxyConfig) -> Cluster {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(&tmp.path().join("ca")).expect("cluster ca");
    let node = member(&ca, Role::Node, "n1");
    let proxy_identity = member(&ca, Role::Proxy, "p1");

    // The node: envd, the forwarder, a user's app, and the hop over them.
    let envd_socket = tmp.path().join("envd.sock");
    let forward_socket = tmp.path().join("forward.sock");
    let stream_go = Arc::new(Notify::new());
    let (hold_dropped, _) = mpsc::unbounded_channel();
    let envd_conns = serve_envd(
        &envd_socket,
        EnvdState {
            stream_go: stream_go.clone(),
            hold_dropped,
        },
    )
    .await;
    serve_forwarder(&forward_socket).await;
    let user_port = serve_user_app().await;
    let local = Arc::new(TestDirectory::default());
    local.insert(
        SANDBOX,
        Upstream {
            envd_socket,
            forward_socket,
        },
    );
    let (hop, hop_conns) = serve_hop(Proxy::new(local, hop_config), &node).await;

    // The edge.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let placed = HashMap::from([
        (SANDBOX.to_string(), hop_of(hop, "n1")),
        (ON_DEAD_NODE.to_string(), hop_of(dead_addr, "n1")),
        (ON_WRONG_NODE.to_string(), hop_of(hop, "n2")),
    ]);
    let locator = TestLocator {
        proxy_identity: proxy_identity.clone(),
        placed: Mutex::new(placed),
        locates: AtomicUsize::new(0),
    };
    let dir = Arc::new(ClusterDirectory::new(
        locator,
        ClusterDirectoryConfig::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind edge");
    let edge = listener.local_addr().expect("edge addr");
    let proxy = Proxy::new(dir.clone(), edge_config);
    tokio::spawn(async move { proxy.serve(listener, std::future::pending::<()>()).await });
    Cluster {
        _tmp: tmp,
        edge,
        hop,
        user_port,
        stream_go,
        envd_conns,
        hop_conns,
        dir,
        proxy_identity,
    }
}

async fn start_cluster() -> Cluster {
    start_with(ProxyConfig::default(), ProxyConfig::default()).await
}

fn hop_of(addr: SocketAddr, node_id: &str) -> NodeHop {
    NodeHop {
        addr,
        node_id: node_id.to_string(),
    }
}

impl Cluster {
    fn to(&self, sandbox: &str, port: u16, path: &str) -> http::request::Builder {
        Request::builder()
            .uri(format!("http://{}{}", self.edge, path))
            .header("E2b-Sandbox-Id", sandbox)
            .header("E2b-Sandbox-Port", port.to_string())
    }

    async fn get(&self, req: Request<ClientBody>) -> (StatusCode, String) {
        let resp = within("edge answers", client().request(req))
            .await
            .expect("edge answers");
        let status = resp.status();
        let body = within("body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn requests_reach_envd_and_user_ports_through_the_hop_unchanged() {
    let c = start_cluster().await;
    let req = c
        .to(SANDBOX, ENVD_PORT, "/echo?path=%2Fhome&x=1")
        .method("PUT")
        .header("X-Access-Token", "secret")
        .header("Connection", "keep-alive, x-hop")
        .header("X-Hop", "dropped")
        .body(full("payload"))
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("PUT /echo?path=%2Fhome&x=1\n"), "{body}");
    assert!(body.contains("x-access-token=secret"), "{body}");
    assert!(
        body.contains(&format!("e2b-sandbox-id={SANDBOX}")),
        "{body}"
    );
    assert!(
        body.contains(&format!("e2b-sandbox-port={ENVD_PORT}")),
        "{body}"
    );
    // The Host the client sent, not the hop's address.
    assert!(body.contains(&format!("host={}", c.edge)), "{body}");
    assert!(!body.contains("x-hop"), "hop-by-hop header leaked: {body}");
    assert!(body.ends_with("body=payload"), "{body}");

    // Routed by Host at the edge, and again by the same Host at the hop.
    let host = format!("{}-{SANDBOX}.sandbox.test", c.user_port);
    let req = Request::builder()
        .uri(format!("http://{}/hello", c.edge))
        .header("host", &host)
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("hello from {} via {host}", c.user_port));
}

#[tokio::test]
async fn bodies_stream_both_ways_through_the_hop() {
    let c = start_cluster().await;
    // A response streams: the second chunk is made only once the first reached the client.
    let req = c
        .to(SANDBOX, ENVD_PORT, "/stream")
        .body(empty())
        .expect("request");
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
    c.stream_go.notify_one();
    let rest = within("rest", body.collect())
        .await
        .expect("rest")
        .to_bytes();
    assert_eq!(rest, "second\n");

    // A request body streams: /duplex echoes each chunk before the next is sent.
    let (tx, rx) = mpsc::channel::<Result<Frame<bytes::Bytes>, BoxError>>(1);
    let req = c
        .to(SANDBOX, ENVD_PORT, "/duplex")
        .method("POST")
        .body(BodyExt::boxed_unsync(StreamBody::new(ReceiverStream::new(
            rx,
        ))))
        .expect("request");
    tx.send(Ok(Frame::data(bytes::Bytes::from_static(b"ping-1"))))
        .await
        .expect("send");
    let resp = within("duplex headers", client().request(req))
        .await
        .expect("response");
    let mut body = resp.into_body();
    for i in 1..=3 {
        if i > 1 {
            let chunk = format!("ping-{i}");
            tx.send(Ok(Frame::data(chunk.into()))).await.expect("send");
        }
        let echoed = within("echo", body.frame())
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(echoed, format!("ping-{i}"));
    }
    drop(tx);

    // A large upload arrives whole.
    let len = 8 * MIB;
    let data = bytes::Bytes::from(pattern(len));
    let chunks: Vec<Result<Frame<bytes::Bytes>, BoxError>> = (0..len)
        .step_by(256 * 1024)
        .map(|i| Ok(Frame::data(data.slice(i..(i + 256 * 1024).min(len)))))
        .collect();
    let req = c
        .to(SANDBOX, ENVD_PORT, "/upload")
        .method("POST")
        .body(BodyExt::boxed_unsync(StreamBody::new(
            futures::stream::iter(chunks),
        )))
        .expect("request");
    let (status, body) = c.get(req).await;
    let mut hash = FNV_START;
    fnv(&mut hash, &data);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("{len} {hash:x}"));
}

#[tokio::test]
async fn websocket_tunnels_through_the_hop() {
    let c = start_cluster().await;
    let mut req = format!("ws://{}/ws", c.edge)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("E2b-Sandbox-Id", SANDBOX.parse().expect("value"));
    req.headers_mut().insert(
        "E2b-Sandbox-Port",
        c.user_port.to_string().parse().expect("value"),
    );
    let tcp = TcpStream::connect(c.edge).await.expect("connect edge");
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
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn connections_to_the_hop_are_reused() {
    let c = start_cluster().await;
    for i in 0..5 {
        let req = c
            .to(SANDBOX, ENVD_PORT, &format!("/echo?i={i}"))
            .body(empty())
            .expect("request");
        let (status, _) = c.get(req).await;
        assert_eq!(status, StatusCode::OK);
        // The connection goes back to the pool on a task once the response is complete.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.hop_conns.load(Ordering::SeqCst), 1);
    assert_eq!(c.envd_conns.load(Ordering::SeqCst), 1);
    // One question to the control plane: the answer is cached.
    assert_eq!(c.dir.locator().locates.load(Ordering::SeqCst), 1);
}

fn edge_error(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn a_node_that_cannot_be_reached_is_an_e2b_502() {
    let c = start_cluster().await;
    let req = c
        .to(ON_DEAD_NODE, ENVD_PORT, "/health")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        edge_error(&body),
        serde_json::json!({"sandboxId": ON_DEAD_NODE,
            "message": "The sandbox could not be reached", "code": 502})
    );
    // The failed answer was dropped and the control plane asked again.
    assert_eq!(c.dir.locator().locates.load(Ordering::SeqCst), 2);

    // Gone from the control plane meanwhile: the E2B "not found" the SDKs match on.
    c.dir
        .locator()
        .placed
        .lock()
        .expect("lock")
        .remove(ON_DEAD_NODE);
    let req = c
        .to(ON_DEAD_NODE, ENVD_PORT, "/health")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("The sandbox was not found"), "{body}");
}

#[tokio::test]
async fn unknown_sandboxes_get_the_hop_or_edge_not_found() {
    let c = start_cluster().await;
    // Unknown to the control plane: the edge answers.
    let req = c
        .to("iunknown", ENVD_PORT, "/health")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        edge_error(&body),
        serde_json::json!({"sandboxId": "iunknown",
            "message": "The sandbox was not found", "code": 502})
    );
    assert_eq!(c.hop_conns.load(Ordering::SeqCst), 0);

    // Listed on n1 but gone from the node: the hop's own answer passes through.
    c.dir
        .locator()
        .placed
        .lock()
        .expect("lock")
        .insert("igonefromnode".into(), hop_of(c.hop, "n1"));
    let req = c
        .to("igonefromnode", 8080, "/health")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("The sandbox was not found"), "{body}");
    assert_eq!(c.hop_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_edge_trusts_only_the_node_it_was_told_of() {
    let c = start_cluster().await;
    // The control plane says n2; n1 answers at that address: the handshake fails.
    let req = c
        .to(ON_WRONG_NODE, ENVD_PORT, "/echo")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("The sandbox could not be reached"), "{body}");
    assert_eq!(c.envd_conns.load(Ordering::SeqCst), 0);

    // And the hop takes no client without a certificate of the cluster.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(c.proxy_identity.ca().der().clone())
        .expect("ca root");
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![HOP_ALPN.to_vec()];
    let tcp = TcpStream::connect(c.hop).await.expect("connect hop");
    let name = rustls::pki_types::ServerName::IpAddress(c.hop.ip().into());
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the server's verdict on the client arrives after the client's handshake.
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    };
    let outcome = within("anonymous client", refused).await;
    assert!(!matches!(outcome, Ok(1)), "{outcome:?}");
    assert_eq!(c.hop_conns.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn envd_control_paths_are_refused_at_the_edge() {
    let hop_lets_them_through = ProxyConfig {
        refuse_envd_control_paths: false,
        ..ProxyConfig::default()
    };
    let c = start_with(hop_lets_them_through, ProxyConfig::default()).await;
    let req = c
        .to(SANDBOX, ENVD_PORT, "/init")
        .method("POST")
        .body(empty())
        .expect("request");
    let (status, body) = c.get(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.contains("envd init reached"), "{body}");
    assert_eq!(c.hop_conns.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_hop_connection_without_a_request_head_is_closed_after_the_header_timeout() {
    let hop_config = ProxyConfig {
        limits: paddock_proxy::listener::Limits {
            header_timeout: Duration::from_millis(300),
            ..paddock_proxy::listener::Limits::default()
        },
        ..ProxyConfig::default()
    };
    let c = start_with(hop_config, ProxyConfig::default()).await;
    let n1 = PeerIdentity::new(Role::Node, MemberId::new("n1").expect("id"));
    let mut config = client_config(&c.proxy_identity, ExpectedPeer::member(n1)).expect("config");
    config.alpn_protocols = vec![HOP_ALPN.to_vec()];
    let tcp = TcpStream::connect(c.hop).await.expect("connect hop");
    let name = rustls::pki_types::ServerName::IpAddress(c.hop.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = within("hop closes", tls.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
}
