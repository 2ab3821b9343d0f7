//! The OTLP exporter against real collectors on loopback: a gRPC `TraceService` (tonic) and an
//! HTTP/protobuf endpoint (axum), receiving the spans of a `tracing` subscriber with the
//! exporter's layer; W3C context written by `inject` and taken up by `adopt`. One test function:
//! the pipeline's on/off switch is process-wide.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use paddock_telemetry::trace::{OtlpConfig, Protocol, Tracing};
use prost::Message as _;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt as _;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        assert_eq!(
            request
                .metadata()
                .get("x-collector-key")
                .and_then(|v| v.to_str().ok()),
            Some("k 1"),
            "the configured headers go with every export"
        );
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test setup");
    let addr = listener.local_addr().expect("test setup");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

/// An HTTP collector answering `status` to every export.
async fn http_collector(
    status: u16,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").expect("test setup"),
                        "application/x-protobuf"
                    );
                    let _ = tx.send(ExportTraceServiceRequest::decode(body).expect("test setup"));
                    axum::http::StatusCode::from_u16(status).expect("test setup")
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test setup");
    let addr = listener.local_addr().expect("test setup");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

fn config(protocol: Protocol, addr: SocketAddr) -> OtlpConfig {
    let env = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some(
            match protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http/protobuf",
            }
            .to_string(),
        ),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-collector-key=k%201".to_string()),
        "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("3000".to_string()),
        _ => None,
    };
    OtlpConfig::resolve(Some(&format!("http://{addr}")), env)
        .expect("test setup")
        .expect("test setup")
}

/// Makes a parent span and a child span (with a log event) under a subscriber that exports to
/// `config`, shuts the pipeline down (which sends them), and returns the `traceparent` the child
/// injected.
async fn emit(config: &OtlpConfig) -> String {
    let (pipeline, layer) =
        Tracing::start(config, "paddock-test", tokio::runtime::Handle::current())
            .expect("test setup");
    let subscriber = tracing_subscriber::registry().with(layer);
    let traceparent = tracing::subscriber::with_default(subscriber, || {
        let outer = paddock_telemetry::span!("outer", trace_id = tracing::field::Empty);
        paddock_telemetry::trace::record_trace_id(&outer);
        let _outer = outer.enter();
        let inner = paddock_telemetry::span!("inner", step = "one");
        let _inner = inner.enter();
        tracing::info!("inside");
        let mut headers = http::HeaderMap::new();
        paddock_telemetry::trace::inject(&mut headers);
        headers
            .get("traceparent")
            .expect("inject writes traceparent")
            .to_str()
            .expect("test setup")
            .to_string()
    });
    tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .expect("test setup");
    traceparent
}

fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for req in requests {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
    }
    out
}

fn check(received: Vec<ExportTraceServiceRequest>, traceparent: &str) {
    let spans = spans(&received);
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    };
    let (service, outer) = find("outer");
    let (_, inner) = find("inner");
    assert_eq!(service, "paddock-test");
    assert_eq!(inner.trace_id, outer.trace_id);
    assert_eq!(inner.parent_span_id, outer.span_id);
    assert!(inner.events.iter().any(|e| e.name == "inside"));
    // traceparent: 00-<trace id>-<span id>-<flags>, naming the current (inner) span.
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], hex(&outer.trace_id));
    assert_eq!(parts[2], hex(&inner.span_id));
    // The outer span's trace_id field carries the id (what log lines show).
    let recorded = outer
        .attributes
        .iter()
        .find(|a| a.key == "trace_id")
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(recorded.as_deref(), Some(parts[1]));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn drain(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) -> Vec<ExportTraceServiceRequest> {
    let mut out = Vec::new();
    while let Ok(req) = rx.try_recv() {
        out.push(req);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_collectors_over_grpc_and_http_with_their_context() {
    // gRPC.
    let (addr, mut rx) = grpc_collector().await;
    let traceparent = emit(&config(Protocol::Grpc, addr)).await;
    check(drain(&mut rx).await, &traceparent);

    // HTTP/protobuf.
    let (addr, mut rx) = http_collector(200).await;
    let traceparent = emit(&config(Protocol::HttpProtobuf, addr)).await;
    check(drain(&mut rx).await, &traceparent);

    // A collector that fails: the process is not held up past the timeout, nothing panics.
    let (addr, mut rx) = http_collector(503).await;
    let started = std::time::Instant::now();
    emit(&config(Protocol::HttpProtobuf, addr)).await;
    assert!(!drain(&mut rx).await.is_empty(), "the export was attempted");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A caller's context is taken up: the trace goes on under a new span.
    let cfg = OtlpConfig::resolve(Some("http://127.0.0.1:9"), |_| None)
        .expect("test setup")
        .expect("test setup");
    let (pipeline, layer) = Tracing::start(&cfg, "paddock-test", tokio::runtime::Handle::current())
        .expect("test setup");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .expect("test setup"),
        );
        let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
        paddock_telemetry::trace::adopt(&span, &incoming);
        let _entered = span.enter();
        let mut outgoing = http::HeaderMap::new();
        paddock_telemetry::trace::inject(&mut outgoing);
        let sent = outgoing
            .get("traceparent")
            .expect("test setup")
            .to_str()
            .expect("test setup");
        assert!(
            sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "the trace goes on: {sent}"
        );
        assert!(!sent.contains("b7ad6b7169203331"), "a new span id: {sent}");
    });
    // Its collector does not exist: shutting down still returns.
    tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .expect("test setup");

    // Off: nothing is injected, spans are disabled.
    assert!(!paddock_telemetry::trace::enabled());
    let mut headers = http::HeaderMap::new();
    paddock_telemetry::trace::inject(&mut headers);
    assert!(headers.is_empty());
    assert!(paddock_telemetry::span!("off").is_disabled());
}
