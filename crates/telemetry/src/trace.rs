//! Traces: the `tracing` spans of a Paddock process exported over OTLP, and W3C trace context
//! carried across the process's links.
//!
//! [`OtlpConfig::resolve`] reads where to send spans the way OpenTelemetry SDKs do (the
//! `--otlp-endpoint` flag or `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `_HEADERS`, `_TIMEOUT` and their `_TRACES_` forms); [`Tracing::start`] builds the exporter
//! (OTLP over gRPC or HTTP/protobuf, sent from the process's Tokio runtime) behind the SDK's
//! batch processor and gives the `tracing` layer that turns spans into OpenTelemetry spans,
//! with `service.name` naming the role. Sampling follows `OTEL_TRACES_SAMPLER` (default: every
//! trace, or as the caller's context says).
//!
//! [`inject`] writes the current span's context into outgoing headers (`traceparent`,
//! `tracestate`); [`adopt`] makes a new span the child of the context in incoming headers and
//! records its trace id in the span's `trace_id` field, so log lines inside it carry it. Both
//! do nothing while tracing is off ([`enabled`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether spans are exported (a [`Tracing`] was started in this process).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: [`inject`] and [`adopt`] do nothing otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc`: the collector's `TraceService/Export` (port 4317 by convention).
    Grpc,
    /// `http/protobuf` (the specification's default): `POST <endpoint>/v1/traces` (port 4318).
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err(ConfigError::Unsupported(
                "OTLP protocol http/json (use http/protobuf or grpc)".into(),
            )),
            other => Err(ConfigError::Invalid(format!(
                "unknown OTLP protocol {other:?} (grpc, http/protobuf)"
            ))),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A value names something Paddock does not do.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Where and how spans are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans go to (for HTTP, with `/v1/traces`).
    pub endpoint: http::Uri,
    /// The transport.
    pub protocol: Protocol,
    /// Extra headers (or gRPC metadata) sent with every export.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Longest an export may take.
    pub timeout: Duration,
}

/// Default of `OTEL_EXPORTER_OTLP_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpConfig {
    /// The configuration from `flag` (`--otlp-endpoint`, which wins over
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) and the environment as read by `var`; `None` when no
    /// endpoint is set (tracing off). As the OpenTelemetry specification says:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as it is, while the general endpoint gets
    /// `/v1/traces` appended for HTTP; the `_TRACES_` form of each variable wins over the
    /// general one; the protocol defaults to `http/protobuf`; headers are `k=v` pairs separated
    /// by commas, values percent-decoded; the timeout is in milliseconds.
    pub fn resolve(
        flag: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let either = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        let protocol = match either("PROTOCOL") {
            Some(p) => p.parse()?,
            None => Protocol::HttpProtobuf,
        };
        let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let general = flag
            .map(str::to_string)
            .filter(|f| !f.trim().is_empty())
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let endpoint = match (traces_endpoint, general) {
            (Some(url), _) => url,
            (None, Some(base)) if protocol == Protocol::HttpProtobuf => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        let endpoint: http::Uri = endpoint.trim().parse().map_err(|e| {
            ConfigError::Invalid(format!(
                "OTLP endpoint {endpoint:?}: {e} (expected an http:// URL)"
            ))
        })?;
        match endpoint.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ConfigError::Unsupported(format!(
                    "OTLP endpoint {endpoint}: https (send to a collector over http, e.g. one \
                     on the same host)"
                )))
            }
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "OTLP endpoint {endpoint:?}: expected an http:// URL"
                )))
            }
        }
        let headers = match either("HEADERS") {
            Some(h) => parse_headers(&h)?,
            None => Vec::new(),
        };
        let timeout = match either("TIMEOUT") {
            Some(ms) => Duration::from_millis(ms.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!("OTLP timeout {ms:?}: expected milliseconds"))
            })?),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
        }))
    }
}

/// `k=v,k2=v2` (values percent-encoded) as headers.
fn parse_headers(list: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let mut out = Vec::new();
    for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ConfigError::Invalid(format!("OTLP header {pair:?}: expected key=value"))
        })?;
        let name = http::HeaderName::from_str(k.trim())
            .map_err(|_| ConfigError::Invalid(format!("OTLP header name {k:?}")))?;
        let decoded = percent_decode(v.trim());
        let value = http::HeaderValue::from_str(&decoded)
            .map_err(|_| ConfigError::Invalid(format!("OTLP header value of {k:?}")))?;
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running trace pipeline: stop it with [`Tracing::shutdown`] to send what is buffered.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gRPC endpoint is unusable.
    #[error("OTLP gRPC endpoint")]
    Grpc(#[from] tonic::transport::Error),
}

impl Tracing {
    /// Starts exporting spans to `config` as `service_name` (`paddock-api`, ...), sending from
    /// `runtime`; returns the pipeline and the `tracing` layer to add to the subscriber.
    pub fn start<S>(
        config: &OtlpConfig,
        service_name: &'static str,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Self, impl tracing_subscriber::Layer<S>), StartError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let transport = match config.protocol {
            Protocol::Grpc => {
                let channel = {
                    // `connect_lazy` needs the runtime it will run on.
                    let _enter = runtime.enter();
                    tonic::transport::Endpoint::from(config.endpoint.clone())
                        .timeout(config.timeout)
                        .connect_lazy()
                };
                Transport::Grpc(TraceServiceClient::new(channel))
            }
            Protocol::HttpProtobuf => Transport::Http(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
            ),
        };
        let exporter = OtlpExporter {
            transport,
            config: config.clone(),
            runtime,
            resource: ResourceAttributesWithSchema::default(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        let tracer = provider.tracer("paddock");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false);
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Tracing { provider }, layer))
    }

    /// Sends the spans still buffered and stops. Blocks (up to the export timeout): call it
    /// from a thread that may block, while the runtime given to [`Tracing::start`] still runs.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("paddock: sending the last spans failed: {e}");
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

#[derive(Clone, Debug)]
enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(HttpClient),
}

/// The SDK's exporter: each batch becomes one OTLP `ExportTraceServiceRequest`, sent by a task
/// on the process's runtime (the SDK's batch processor runs on a thread of its own).
#[derive(Debug)]
struct OtlpExporter {
    transport: Transport,
    config: OtlpConfig,
    runtime: tokio::runtime::Handle,
    resource: ResourceAttributesWithSchema,
}

impl OtlpExporter {
    async fn send(
        transport: Transport,
        config: OtlpConfig,
        request: ExportTraceServiceRequest,
    ) -> Result<(), String> {
        match transport {
            Transport::Grpc(mut client) => {
                let mut req = tonic::Request::new(request);
                for (name, value) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())
                        .map_err(|e| e.to_string())?;
                    let value = tonic::metadata::MetadataValue::try_from(value.as_bytes())
                        .map_err(|e| e.to_string())?;
                    req.metadata_mut().insert(key, value);
                }
                client
                    .export(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            Transport::Http(client) => {
                let mut req = http::Request::post(config.endpoint.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(request.encode_to_vec())))
                    .map_err(|e| e.to_string())?;
                for (name, value) in &config.headers {
                    req.headers_mut().insert(name.clone(), value.clone());
                }
                let response = client.request(req).await.map_err(|e| e.to_string())?;
                let status = response.status();
                // The body is read so the connection can be reused, and for the error message.
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                    Err(format!("HTTP {status}: {text}"))
                }
            }
        }
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let transport = self.transport.clone();
        let config = self.config.clone();
        let timeout = config.timeout;
        let sent = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, Self::send(transport, config, request))
                .await
                .unwrap_or_else(|_| Err(format!("no answer in {timeout:?}")))
        });
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OTelSdkError::InternalFailure(format!(
                "exporting spans to {}: {e}",
                self.config.endpoint
            ))),
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "exporting spans: {e}"
            ))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

/// Headers as the propagator writes them.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_str(key),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Headers as the propagator reads them.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the current span's W3C trace context (`traceparent`, `tracestate`) into `headers`,
/// for the next hop (a gRPC call's metadata are its HTTP/2 headers).
pub fn inject(headers: &mut http::HeaderMap) {
    inject_current(&mut HeaderInjector(headers));
}

/// Writes the current span's context through `injector`, while traces are exported.
fn inject_current(injector: &mut dyn Injector) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, injector);
}

/// gRPC metadata as the propagator writes them.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// [`inject`] for an outgoing gRPC call.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    inject_current(&mut MetadataInjector(metadata));
}

/// Makes `span` (new, not entered yet) the child of the trace context in `headers`, when they
/// carry one, and records the trace id in its `trace_id` field (declared with
/// `trace_id = tracing::field::Empty`).
pub fn adopt(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only for a span that is not recorded (filtered out): nothing to trace then.
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field (declared with
/// `trace_id = tracing::field::Empty`), so that log lines inside it carry the id.
pub fn record_trace_id(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert_eq!(OtlpConfig::resolve(None, env(&[])).expect("valid"), None);
        assert_eq!(
            OtlpConfig::resolve(Some(" "), env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]))
                .expect("valid"),
            None
        );
    }

    #[test]
    fn endpoints_follow_the_specification() {
        // HTTP (the default): the general endpoint gets the signal's path.
        let c = OtlpConfig::resolve(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
        )
        .expect("valid")
        .expect("valid");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        // The flag wins over the variable; gRPC takes the endpoint as it is.
        let c = OtlpConfig::resolve(
            Some("http://flag:4317"),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://var:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
        )
        .expect("valid")
        .expect("valid");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://flag:4317/");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        // The signal's own variables win and are used as they are.
        let c = OtlpConfig::resolve(
            Some("http://flag:4318"),
            env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20x,x-team=a",
                ),
            ]),
        )
        .expect("valid")
        .expect("valid");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://t:9/custom");
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.headers[0].0, "authorization");
        assert_eq!(c.headers[0].1, "Bearer x");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let err = |pairs: &[(&str, &str)]| {
            OtlpConfig::resolve(Some("http://c:4318"), env(pairs))
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).contains("not supported"));
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")]).contains("unknown OTLP protocol"));
        assert!(err(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]).contains("milliseconds"));
        assert!(err(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).contains("key=value"));
        let https = OtlpConfig::resolve(Some("https://c:4318"), env(&[]))
            .expect_err("refused")
            .to_string();
        assert!(https.contains("not supported"), "{https}");
        let relative = OtlpConfig::resolve(Some("collector:4318"), env(&[]))
            .expect_err("refused")
            .to_string();
        assert!(relative.contains("http://"), "{relative}");
    }

    #[test]
    fn percent_decoding_leaves_malformed_escapes() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
