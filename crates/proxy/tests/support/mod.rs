//! The test world of the proxy's integration tests: a real axum app as "envd" on a Unix socket
//! (counting its connections), a user's app on a TCP port, the node's port forwarder on a Unix
//! socket, a [`SandboxDirectory`] over a map, and the proxy serving on 127.0.0.1:0.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use paddock_domain::SandboxId;
use paddock_proxy::{Lookup, Proxy, ProxyConfig, ProxyError, SandboxDirectory, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

pub use paddock_envd_proto::ENVD_PORT;
pub const SANDBOX: &str = "itestsandbox0000000001";
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The directory

#[derive(Default)]
pub struct TestDirectory(Mutex<HashMap<SandboxId, Upstream>>);

impl TestDirectory {
    pub fn insert(&self, id: &str, upstream: Upstream) {
        let id = SandboxId::parse(id).expect("test id");
        self.0.lock().expect("lock").insert(id, upstream);
    }
}

impl SandboxDirectory for TestDirectory {
    fn lookup(&self, id: &SandboxId) -> Lookup {
        match self.0.lock().expect("lock").get(id) {
            Some(upstream) => Lookup::Running(upstream.clone()),
            None => Lookup::NotFound,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// "envd": an axum app on a Unix socket, counting connections

#[derive(Clone)]
pub struct EnvdState {
    /// Lets `/stream` send its second chunk.
    pub stream_go: Arc<Notify>,
    /// Receives a message when a `/hold` stream is dropped (client went away).
    pub hold_dropped: mpsc::UnboundedSender<()>,
}

pub fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100000001b3);
    }
}

pub const FNV_START: u64 = 0xcbf29ce484222325;

/// The deterministic content of `/download`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

pub async fn echo(method: http::Method, uri: http::Uri, headers: HeaderMap, body: Bytes) -> String {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("{}={}", k, v.to_str().unwrap_or("?")))
        .collect();
    names.sort();
    format!(
        "{method} {uri}\n{}\nbody={}",
        names.join("\n"),
        String::from_utf8_lossy(&body)
    )
}

pub async fn stream(State(state): State<EnvdState>) -> AxumBody {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from_static(b"first\n"))).await;
        state.stream_go.notified().await;
        let _ = tx.send(Ok(Bytes::from_static(b"second\n"))).await;
    });
    AxumBody::from_stream(ReceiverStream::new(rx))
}

pub async fn upload(body: AxumBody) -> String {
    let mut stream = body.into_data_stream();
    let (mut len, mut hash) = (0usize, FNV_START);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("upload chunk");
        len += chunk.len();
        fnv(&mut hash, &chunk);
    }
    format!("{len} {hash:x}")
}

pub async fn download(Query(q): Query<HashMap<String, usize>>) -> AxumBody {
    let len = q.get("mib").copied().unwrap_or(1) * MIB;
    let data = Bytes::from(pattern(len));
    let chunks: Vec<Result<Bytes, Infallible>> = (0..len)
        .step_by(64 * 1024)
        .map(|i| Ok(data.slice(i..(i + 64 * 1024).min(len))))
        .collect();
    AxumBody::from_stream(futures::stream::iter(chunks))
}

/// Streams "tick" forever; tells the test when the stream is dropped.
pub async fn hold(State(state): State<EnvdState>) -> AxumBody {
    struct Guard(mpsc::UnboundedSender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let guard = Guard(state.hold_dropped.clone());
    let ticks = futures::stream::unfold(guard, |guard| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"tick\n")), guard))
    });
    AxumBody::from_stream(ticks)
}

/// Echoes the request body back as it arrives (full duplex, like a Connect bidi stream).
pub async fn duplex(body: AxumBody) -> AxumBody {
    body
}

pub async fn serve_envd(path: &Path, state: EnvdState) -> Arc<AtomicUsize> {
    let app = Router::new()
        .route("/echo", any(echo))
        .route("/stream", get(stream))
        .route("/upload", post(upload))
        .route("/download", get(download))
        .route("/hold", get(hold))
        .route("/duplex", post(duplex))
        .route("/init", any(|| async { "envd init reached" }))
        .with_state(state);
    let listener = UnixListener::bind(path).expect("bind envd socket");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    accepted
}

// ---------------------------------------------------------------------------------------------
// A user's server on a TCP port and the port forwarder in front of it

pub async fn serve_user_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind user app");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route(
            "/hello",
            get(move |headers: HeaderMap| async move {
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                format!("hello from {port} via {host}")
            }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        let reply = match msg {
                            AxumMessage::Text(t) => AxumMessage::Text(format!("echo: {t}").into()),
                            AxumMessage::Binary(b) => AxumMessage::Binary(b),
                            AxumMessage::Close(_) => break,
                            _ => continue,
                        };
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("user app");
    });
    port
}

/// The node's port forwarder: 2-byte port in, status byte out, then raw bytes both ways.
pub async fn serve_forwarder(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind forward socket");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut port = [0u8; 2];
                if stream.read_exact(&mut port).await.is_err() {
                    return;
                }
                let port = u16::from_be_bytes(port);
                match TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(mut tcp) => {
                        if stream.write_all(&[0]).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                        }
                    }
                    Err(_) => {
                        let _ = stream.write_all(&[1]).await;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The whole setup

pub struct Env {
    _tmp: tempfile::TempDir,
    pub addr: SocketAddr,
    pub user_port: u16,
    pub envd_conns: Arc<AtomicUsize>,
    pub stream_go: Arc<Notify>,
    pub hold_dropped: mpsc::UnboundedReceiver<()>,
    pub directory: Arc<TestDirectory>,
    pub stop: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<Result<(), ProxyError>>,
}

pub async fn start(config: ProxyConfig) -> Env {
    let tmp = tempfile::tempdir().expect("tempdir");
    let envd_socket = tmp.path().join("envd.sock");
    let forward_socket = tmp.path().join("forward.sock");
    let stream_go = Arc::new(Notify::new());
    let (hold_tx, hold_dropped) = mpsc::unbounded_channel();
    let envd_conns = serve_envd(
        &envd_socket,
        EnvdState {
            stream_go: stream_go.clone(),
            hold_dropped: hold_tx,
        },
    )
    .await;
    serve_forwarder(&forward_socket).await;
    let user_port = serve_user_app().await;

    let directory = Arc::new(TestDirectory::default());
    directory.insert(
        SANDBOX,
        Upstream {
            envd_socket,
            forward_socket,
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let proxy = Proxy::new(directory.clone(), config);
    let server = tokio::spawn(async move { proxy.serve(listener, stopped).await });
    Env {
        _tmp: tmp,
        addr,
        user_port,
        envd_conns,
        stream_go,
        hold_dropped,
        directory,
        stop: Some(stop),
        server,
    }
}

pub fn client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Env {
    /// A request to `path` routed by the E2B headers.
    pub fn to(&self, port: u16, path: &str) -> http::request::Builder {
        Request::builder()
            .uri(format!("http://{}{}", self.addr, path))
            .header("E2b-Sandbox-Id", SANDBOX)
            .header("E2b-Sandbox-Port", port.to_string())
    }

    pub async fn get(&self, req: Request<ClientBody>) -> (StatusCode, http::HeaderMap, String) {
        let resp = client().request(req).await.expect("proxy answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
