//! The request handler: route, look up, pass through. [`Proxy::handle`] needs no socket, so it
//! can be driven directly in tests; [`crate::serve`] wraps it in an HTTP/1.1 server.
//!
//! A sandbox on another host ([`Lookup::Remote`]) gets the request as the client sent it (same
//! `Host` and `E2b-Sandbox-*` headers, hop-by-hop headers removed) on a pooled TLS connection
//! to its node's hop, which routes it again; the envd control paths are refused here first.
//!
//! Streaming: request and response bodies are handed over frame by frame (nothing is buffered),
//! so Connect server streams, chunked uploads and large downloads flow as they are produced.
//! When the client goes away, hyper drops the handler future or the response body, which drops
//! the upstream request and closes that upstream connection.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::Instrument;

use crate::directory::{Lookup, SandboxDirectory};
use crate::headers::{is_upgrade, strip_hop_by_hop};
use crate::pool::Pool;
use crate::reply;
use crate::route::{self, Route};
use crate::upstream::{self, BoxError, ConnectError, Target, UpstreamBody};
use crate::ProxyConfig;

/// The body of every proxy response: the sandbox's streamed body or a proxy-made JSON error.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// envd paths only the node may call (spec 1.7); refused for external traffic.
const ENVD_CONTROL_PATHS: [&str; 7] = [
    paddock_envd_proto::rpc::INIT,
    "/freeze",
    "/unfreeze",
    "/collapse",
    "/fsfreeze",
    "/fsthaw",
    "/upgrade",
];

/// The sandbox traffic proxy. Cheap to clone; clones share the upstream connection pool.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    dir: Arc<dyn SandboxDirectory>,
    config: ProxyConfig,
    pool: Arc<Pool>,
    /// Flips to `true` to close every open upgrade tunnel (shutdown).
    tunnels_stop: watch::Sender<bool>,
}

/// Why a request could not be exchanged with the sandbox.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("exchanging the request with the sandbox failed")]
    Exchange(#[source] hyper::Error),
}

impl Proxy {
    /// A proxy that finds sandboxes through `dir`.
    pub fn new(dir: Arc<dyn SandboxDirectory>, config: ProxyConfig) -> Proxy {
        let pool = Pool::new(config.max_idle_per_upstream, config.idle_timeout);
        let (tunnels_stop, _) = watch::channel(false);
        Proxy {
            inner: Arc::new(Inner {
                dir,
                config,
                pool,
                tunnels_stop,
            }),
        }
    }

    /// The configuration this proxy runs with.
    pub fn config(&self) -> &ProxyConfig {
        &self.inner.config
    }

    /// Closes every open upgrade tunnel (WebSocket); used by [`Proxy::serve`] at shutdown.
    /// Final: tunnels opened afterwards on this proxy (or its clones) close at once as well.
    pub fn close_tunnels(&self) {
        self.inner.tunnels_stop.send_replace(true);
    }

    /// Answers one request: the sandbox's response, or a JSON error (400 unroutable, 502 sandbox
    /// not found or port not open, 403 for envd control paths). Never fails.
    ///
    /// A protocol upgrade is tunnelled only when `req` carries hyper's upgrade handle, i.e. when
    /// it came from a server connection with upgrades enabled.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let (kind, response) = match route::resolve(req.uri(), req.headers()) {
            Ok(route) => {
                let kind = if route.port == paddock_envd_proto::ENVD_PORT {
                    "envd"
                } else {
                    "port"
                };
                let span = if paddock_telemetry::trace::enabled() {
                    // Exported: the request's trace span (a child of the caller's trace when
                    // it sends `traceparent`); the path stays out (it may hold a signature).
                    let span = tracing::info_span!(
                        "proxy.request",
                        otel.name = %format!("{} {kind}", req.method()),
                        otel.kind = "server",
                        sandbox_id = %route.sandbox_id,
                        port = route.port,
                        http.request.method = %req.method(),
                        trace_id = tracing::field::Empty,
                    );
                    paddock_telemetry::trace::adopt(&span, req.headers());
                    span
                } else {
                    tracing::debug_span!(
                        "proxy",
                        sandbox_id = %route.sandbox_id,
                        port = route.port,
                        method = %req.method(),
                        path = req.uri().path(),
                    )
                };
                (kind, self.pass(route, req).instrument(span).await)
            }
            Err(route::RouteError::Missing) if is_routing_preflight(&req) => {
                ("preflight", reply::routing_preflight(req.headers()))
            }
            Err(e) => {
                tracing::debug!(error = %e, "unroutable request");
                ("unroutable", reply::bad_request(&e.to_string()))
            }
        };
        paddock_telemetry::HTTP_REQUEST_DURATION.observe(
            &["proxy", kind, method.as_str(), response.status().as_str()],
            started.elapsed(),
        );
        response
    }

    async fn pass<B>(&self, route: Route, mut req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let config = &self.inner.config;
        let id = &route.sandbox_id;
        let is_envd = route.port == config.envd_port;
        let mut lookup = self.inner.dir.resolve(id).await;
        if lookup == Lookup::Paused {
            // Resumes it when it asked for that (autoResume); the request then goes through.
            lookup = self.inner.dir.wake(id).await;
        }
        let target = match lookup {
            Lookup::Running(upstream) if is_envd => Target::Envd(upstream.envd_socket),
            Lookup::Running(upstream) => Target::Forward(upstream.forward_socket, route.port),
            Lookup::Remote(hop) => Target::Remote(hop),
            Lookup::Paused => {
                tracing::debug!("sandbox is paused");
                return reply::paused(id, is_envd);
            }
            Lookup::NotFound => {
                tracing::debug!("sandbox not found");
                return reply::sandbox_not_found(id);
            }
            Lookup::Unavailable => {
                tracing::debug!("the directory cannot tell where the sandbox runs");
                return reply::sandbox_unreachable(id);
            }
        };
        if is_envd && config.refuse_envd_control_paths && is_control_path(req.uri().path()) {
            return reply::forbidden_path(id, req.uri().path());
        }

        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let remote = matches!(target, Target::Remote(_));
        let upstream_req = prepare_request(req, route.port, upgrade, remote);

        // A pause that lands while the sandbox has yet to answer ends the wait: a frozen
        // sandbox answers nothing until it is resumed.
        let paused = self.inner.dir.until_paused(&route.sandbox_id);
        let sent = tokio::select! {
            sent = self.send(&target, upstream_req, upgrade) => sent,
            () = paused => {
                tracing::debug!("sandbox paused before it answered");
                return reply::paused(&route.sandbox_id, is_envd);
            }
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(e) if remote => return self.remote_failure(&route, is_envd, e).await,
            Err(e) => return self.failure(&route, is_envd, e).await,
        };
        tracing::debug!(status = response.status().as_u16(), "upstream answered");

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let stop = self.inner.tunnels_stop.subscribe();
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, stop).in_current_span());
                let (mut parts, _) = response.into_parts();
                parts.extensions = response_extensions(&parts.extensions);
                strip_hop_by_hop(&mut parts.headers, true);
                let empty = Empty::new().map_err(|never| match never {}).boxed();
                return Response::from_parts(parts, empty);
            }
        }
        let (mut parts, body) = response.into_parts();
        parts.extensions = response_extensions(&parts.extensions);
        strip_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(parts, body.boxed())
    }

    /// Sends on a pooled connection if one is idle, else on a new connection. Only requests
    /// without a body use the pool: they can be replayed on a fresh connection when the pooled
    /// one turns out to have been closed by the sandbox meanwhile (e.g. after envd answered an
    /// upload without reading its epilogue), which a streamed body cannot. A request hyper had
    /// already written is replayed only for GET, HEAD and OPTIONS. Upgrades always get a
    /// fresh connection, which is never pooled.
    async fn send(
        &self,
        target: &Target,
        req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, SendError> {
        let pool = &self.inner.pool;
        let mut req = req;
        if !upgrade && req.body().is_end_stream() {
            while let Some(mut sender) = pool.checkout(target) {
                let replay = replay_of(&req);
                match sender.try_send_request(req).await {
                    Ok(response) => {
                        pool.checkin_when_idle(target.clone(), sender);
                        return Ok(response);
                    }
                    Err(mut e) => {
                        // With the message back, hyper never wrote it: resending is safe. Without
                        // it the sandbox may already have acted on the request, so only methods
                        // that are safe to repeat are sent again.
                        req = match e.take_message() {
                            Some(unsent) => unsent,
                            None if is_safe_to_repeat(replay.method()) => replay,
                            None => return Err(SendError::Exchange(e.into_error())),
                        };
                        tracing::debug!(error = %e.error(), "pooled connection failed; retrying");
                    }
                }
            }
        }
        let mut sender = upstream::connect(target, self.inner.config.connect_timeout).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(SendError::Exchange)?;
        if !upgrade {
            pool.checkin_when_idle(target.clone(), sender);
        }
        Ok(response)
    }

    async fn failure(&self, route: &Route, is_envd: bool, error: SendError) -> Response<ProxyBody> {
        tracing::debug!(error = %ErrorChain(&error), "proxying failed");
        let id = &route.sandbox_id;
        match error {
            SendError::Connect(ConnectError::Unreachable { .. }) => reply::sandbox_not_found(id),
            // envd listens as long as the sandbox runs, so a slow connect usually means the
            // sandbox is gone; if it is still listed, it is only slow to accept.
            SendError::Connect(ConnectError::Timeout) if is_envd => {
                self.answer_for_failed(route, is_envd).await
            }
            SendError::Connect(
                ConnectError::PortClosed | ConnectError::BadStatus(_) | ConnectError::Timeout,
            ) => reply::port_not_open(id, route.port),
            // The sandbox may have died under the request: say so if it did.
            SendError::Connect(
                ConnectError::Handshake(_)
                | ConnectError::NodeUnreachable { .. }
                | ConnectError::NoHopAlpn(_),
            )
            | SendError::Exchange(_) => self.answer_for_failed(route, is_envd).await,
        }
    }

    /// The answer when a node's hop could not be reached or failed mid-exchange (the hop's own
    /// answers, 502s for a sandbox gone from the node included, pass through as they are): the
    /// directory forgets its answer, and is asked again whether the sandbox is still there.
    async fn remote_failure(
        &self,
        route: &Route,
        is_envd: bool,
        error: SendError,
    ) -> Response<ProxyBody> {
        tracing::debug!(error = %ErrorChain(&error), "proxying to the node's hop failed");
        let id = &route.sandbox_id;
        self.inner.dir.forget(id);
        match (error, self.inner.dir.resolve(id).await) {
            (_, Lookup::NotFound) => reply::sandbox_not_found(id),
            (_, Lookup::Paused) => reply::paused(id, is_envd),
            (SendError::Exchange(_), _) => reply::upstream_failed(id, route.port),
            (SendError::Connect(_), _) => reply::sandbox_unreachable(id),
        }
    }

    /// The answer when a sandbox listed as running failed to answer: not found or paused if
    /// the directory now says so, else that it did not answer.
    async fn answer_for_failed(&self, route: &Route, is_envd: bool) -> Response<ProxyBody> {
        let id = &route.sandbox_id;
        match self.inner.dir.resolve(id).await {
            Lookup::NotFound => reply::sandbox_not_found(id),
            Lookup::Paused => reply::paused(id, is_envd),
            Lookup::Running(_) | Lookup::Remote(_) | Lookup::Unavailable => {
                reply::upstream_failed(id, route.port)
            }
        }
    }
}

/// Rewrites a client request for the upstream hop: origin-form URI, HTTP/1.1, hop-by-hop
/// headers removed (the upgrade pair kept for upgrades), a `Host` if the client sent none.
///
/// For a `remote` hop (another node's proxy, which routes the request again) the `Host` is
/// the client's: an absolute URI's authority if the client sent no `Host`, else none, so that
/// the hop routes by the `E2b-Sandbox-*` headers as this proxy did.
fn prepare_request<B>(
    req: Request<B>,
    port: u16,
    upgrade: bool,
    remote: bool,
) -> Request<UpstreamBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().cloned();
    let path = parts.uri.path_and_query().cloned();
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    // A bare path-and-query always forms a valid origin-form URI.
    parts.uri = Uri::from_parts(uri).expect("origin-form uri from a path and query");
    parts.version = Version::HTTP_11;
    // The client connection's extensions (hyper's upgrade handle among them) mean nothing
    // to the upstream connection.
    parts.extensions = http::Extensions::new();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if !parts.headers.contains_key(header::HOST) {
        let host = match authority {
            Some(authority) if remote => HeaderValue::from_str(authority.as_str()).ok(),
            None if remote => None,
            _ => Some(
                HeaderValue::from_str(&format!("localhost:{port}"))
                    .expect("a number is a valid header value"),
            ),
        };
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
    }
    let body = body.map_err(Into::into).boxed_unsync();
    Request::from_parts(parts, body)
}

/// What of an upstream response's extensions the client side should see: only the reason
/// phrase, so a non-standard one (`200 Fine`) passes through.
fn response_extensions(upstream: &http::Extensions) -> http::Extensions {
    let mut extensions = http::Extensions::new();
    if let Some(reason) = upstream.get::<hyper::ext::ReasonPhrase>() {
        extensions.insert(reason.clone());
    }
    extensions
}

fn is_control_path(path: &str) -> bool {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    ENVD_CONTROL_PATHS.contains(&path)
}

/// Copies bytes both ways between the client's and the sandbox's upgraded connections until
/// either side closes or the proxy shuts down.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, mut stop: watch::Receiver<bool>) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel failed"),
        },
        _ = stop.wait_for(|stop| *stop) => tracing::debug!("tunnel closed by shutdown"),
    }
}

/// Displays an error with its sources, `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Whether `req` is a browser's CORS preflight for a request routed by the `E2b-Sandbox-Id`
/// header: the preflight itself carries no routing headers (browsers send only the names, in
/// `Access-Control-Request-Headers`), so the proxy answers it, as envd would.
fn is_routing_preflight<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    req.method() == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| {
                name.trim()
                    .eq_ignore_ascii_case(paddock_envd_proto::headers::SANDBOX_ID)
            })
}

/// Whether a request may be sent a second time without its effect happening twice.
fn is_safe_to_repeat(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// A copy of a bodiless request, to send again on a fresh connection.
fn replay_of(req: &Request<UpstreamBody>) -> Request<UpstreamBody> {
    let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
    let mut copy = Request::new(empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn control_paths() {
        assert!(is_control_path("/init"));
        assert!(is_control_path("/freeze/"));
        assert!(!is_control_path("/"));
        assert!(!is_control_path("/files"));
        assert!(!is_control_path("/initx"));
    }

    #[test]
    fn upstream_request_is_origin_form_http11_with_host() {
        let req = Request::builder()
            .uri("http://49983-iabc.example.com/files?path=%2Ftmp")
            .version(Version::HTTP_10)
            .header("connection", "keep-alive")
            .header("x-access-token", "t")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let up = prepare_request(req, 49983, false, false);
        assert_eq!(up.uri(), "/files?path=%2Ftmp");
        assert_eq!(up.version(), Version::HTTP_11);
        assert_eq!(up.headers()[header::HOST], "localhost:49983");
        assert!(!up.headers().contains_key(header::CONNECTION));
        assert_eq!(up.headers()["x-access-token"], "t");
    }

    struct Nobody;
    impl SandboxDirectory for Nobody {
        fn lookup(&self, _: &paddock_domain::SandboxId) -> Lookup {
            Lookup::NotFound
        }
    }

    #[tokio::test]
    async fn handle_without_a_socket() {
        let timed = |labels: [&str; 4]| paddock_telemetry::HTTP_REQUEST_DURATION.count(&labels);
        let (envd_502, unroutable) = (
            ["proxy", "envd", "GET", "502"],
            ["proxy", "unroutable", "GET", "400"],
        );
        let before = (timed(envd_502), timed(unroutable));
        let proxy = Proxy::new(Arc::new(Nobody), ProxyConfig::default());
        let req = Request::builder()
            .uri("/health")
            .header("e2b-sandbox-id", "iabc")
            .header("e2b-sandbox-port", "49983")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = proxy.handle(req).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let req = Request::builder()
            .uri("/health")
            .body(Full::new(Bytes::new()))
            .expect("req");
        assert_eq!(proxy.handle(req).await.status(), StatusCode::BAD_REQUEST);
        // Both timed by kind of route and status (other tests in the process may add more).
        assert!(timed(envd_502) > before.0);
        assert!(timed(unroutable) > before.1);
    }

    #[tokio::test]
    async fn header_routed_preflights_are_answered_here() {
        let proxy = Proxy::new(Arc::new(Nobody), ProxyConfig::default());
        let preflight = |request_headers: &str| {
            Request::builder()
                .method(http::Method::OPTIONS)
                .uri("/process.Process/Start")
                .header("origin", "http://127.0.0.1:3000")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", request_headers)
                .body(Full::new(Bytes::new()))
                .expect("request")
        };
        let names = "content-type,e2b-sandbox-id,e2b-sandbox-port,x-access-token";
        let resp = proxy.handle(preflight(names)).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], names);
        assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .expect("ascii")
            .contains("POST"));
        // Not for the routing headers: unroutable as before.
        let resp = proxy.handle(preflight("content-type")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        // A plain OPTIONS without the routing headers is no preflight.
        let req = Request::builder()
            .method(http::Method::OPTIONS)
            .uri("/")
            .header("access-control-request-headers", "e2b-sandbox-id")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(proxy.handle(req).await.status(), StatusCode::BAD_REQUEST);
    }

    /// Lists every sandbox as running, with sockets that do not exist.
    struct Everybody;
    impl SandboxDirectory for Everybody {
        fn lookup(&self, _: &paddock_domain::SandboxId) -> Lookup {
            Lookup::Running(crate::Upstream {
                envd_socket: "/nonexistent/envd.sock".into(),
                forward_socket: "/nonexistent/forward.sock".into(),
            })
        }
    }

    async fn body_text(response: Response<ProxyBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn envd_connect_timeout_reports_not_found_only_for_unlisted_sandboxes() {
        let route = Route {
            sandbox_id: paddock_domain::SandboxId::parse("iabc").expect("id"),
            port: 49983,
        };
        let timeout = || SendError::Connect(ConnectError::Timeout);

        let listed = Proxy::new(Arc::new(Everybody), ProxyConfig::default());
        let response = listed.failure(&route, true, timeout()).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = body_text(response).await;
        assert!(!body.contains("was not found"), "{body}");
        assert!(body.contains("did not answer"), "{body}");

        let gone = Proxy::new(Arc::new(Nobody), ProxyConfig::default());
        let body = body_text(gone.failure(&route, true, timeout()).await).await;
        assert!(body.contains("The sandbox was not found"), "{body}");
    }

    #[test]
    fn only_safe_methods_are_repeated() {
        assert!(is_safe_to_repeat(&http::Method::GET));
        assert!(is_safe_to_repeat(&http::Method::HEAD));
        assert!(is_safe_to_repeat(&http::Method::OPTIONS));
        assert!(!is_safe_to_repeat(&http::Method::POST));
        assert!(!is_safe_to_repeat(&http::Method::DELETE));
    }

    /// A paused sandbox; `wake` counts its calls and answers `after_wake`.
    struct PausedDir {
        wakes: std::sync::atomic::AtomicUsize,
        after_wake: Lookup,
    }
    impl SandboxDirectory for PausedDir {
        fn lookup(&self, _: &paddock_domain::SandboxId) -> Lookup {
            Lookup::Paused
        }
        fn wake<'a>(&'a self, _: &'a paddock_domain::SandboxId) -> crate::WakeFuture<'a> {
            self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(std::future::ready(self.after_wake.clone()))
        }
    }

    fn paused_request() -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/health")
            .header("e2b-sandbox-id", "iabc")
            .header("e2b-sandbox-port", "3000")
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    #[tokio::test]
    async fn paused_sandbox_without_auto_resume_gets_the_edge_409() {
        let dir = Arc::new(PausedDir {
            wakes: Default::default(),
            after_wake: Lookup::Paused,
        });
        let proxy = Proxy::new(dir.clone(), ProxyConfig::default());
        // envd's port: a 502 the SDKs read as "not running".
        let envd = Request::builder()
            .uri("/health")
            .header("e2b-sandbox-id", "iabc")
            .header("e2b-sandbox-port", "49983")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = proxy.handle(envd).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(body_text(resp).await.contains("The sandbox is paused"));
        let resp = proxy.handle(paused_request()).await;
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).expect("json body");
        assert_eq!(
            v,
            serde_json::json!({"sandboxId": "iabc", "message": "The sandbox is paused",
                "code": 409, "canAutoResume": false})
        );
        assert_eq!(dir.wakes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_woken_sandbox_is_proxied_to() {
        // Woken to sockets that do not exist: the request is attempted (and fails as for any
        // running sandbox whose socket is gone), so it is not answered as paused.
        let dir = Arc::new(PausedDir {
            wakes: Default::default(),
            after_wake: Lookup::Running(crate::Upstream {
                envd_socket: "/nonexistent/envd.sock".into(),
                forward_socket: "/nonexistent/forward.sock".into(),
            }),
        });
        let proxy = Proxy::new(dir.clone(), ProxyConfig::default());
        let resp = proxy.handle(paused_request()).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(body_text(resp).await.contains("was not found"));
        assert_eq!(dir.wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
mod pause_race_tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// A running sandbox whose envd accepts connections but never answers (it is frozen), and
    /// whose pause the test announces through `paused`.
    struct FreezingDir {
        socket: std::path::PathBuf,
        paused: tokio::sync::watch::Receiver<bool>,
    }

    impl SandboxDirectory for FreezingDir {
        fn lookup(&self, _: &paddock_domain::SandboxId) -> Lookup {
            Lookup::Running(crate::Upstream {
                envd_socket: self.socket.clone(),
                forward_socket: self.socket.clone(),
            })
        }

        fn until_paused<'a>(&'a self, _: &'a paddock_domain::SandboxId) -> crate::PausedFuture<'a> {
            let mut rx = self.paused.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|p| *p).await;
            })
        }
    }

    #[tokio::test]
    async fn a_pause_landing_before_the_answer_ends_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("envd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let (pause, paused) = tokio::sync::watch::channel(false);
        let (got_request, mut request_seen) = tokio::sync::mpsc::channel::<()>(1);
        // The frozen envd: reads the request, never answers, keeps the connection open.
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = got_request.send(()).await;
            std::future::pending::<()>().await;
            drop(conn);
        });
        let proxy = Proxy::new(
            Arc::new(FreezingDir { socket, paused }),
            ProxyConfig::default(),
        );
        let req = Request::builder()
            .uri("/health")
            .header("e2b-sandbox-id", "iabc")
            .header("e2b-sandbox-port", "49983")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let handling = tokio::spawn(async move { proxy.handle(req).await });
        request_seen.recv().await.expect("the request reached envd");
        pause.send(true).expect("pause");
        // A hang guard, not a speed check: without the race the handler waits forever.
        let resp = tokio::time::timeout(std::time::Duration::from_secs(60), handling)
            .await
            .expect("the proxy kept waiting on a frozen sandbox")
            .expect("handler");
        // What a paused sandbox's envd port answers: a 502 the SDKs read as "not running".
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }
}
