//! Process-wide telemetry of every Paddock role: metrics rendered in the Prometheus text format
//! (0.0.4), and traces exported over OTLP ([`trace`]).
//!
//! [`metrics`] holds the types (a histogram and a counter, each with labels) and
//! [`metrics::render`], which writes every series this process has. The metrics themselves are
//! statics here, one place to read what Paddock exports ([`HTTP_REQUEST_DURATION`],
//! [`CREATE_PHASE`], ...); the crates that measure observe them. Label values come from fixed
//! sets (route templates, phase names, status codes), so series stay few.

pub mod metrics;
pub mod trace;

#[doc(hidden)]
pub use tracing as __tracing;

/// An `info` span exported as a trace span: `tracing::info_span!` with the same arguments while
/// traces are exported ([`trace::enabled`]), else a disabled span that costs nothing and adds
/// nothing to log lines.
#[macro_export]
macro_rules! span {
    ($($arg:tt)*) => {
        if $crate::trace::enabled() {
            $crate::__tracing::info_span!($($arg)*)
        } else {
            $crate::__tracing::Span::none()
        }
    };
}

use std::sync::LazyLock;

use metrics::{CounterVec, HistogramVec, FAST_BUCKETS, LATENCY_BUCKETS};

/// `paddock_http_request_duration_seconds{service,route,method,status}`: from a request's
/// arrival to its response's head, for the REST API (`service="api"`, `route` the matched
/// route template, `unmatched` otherwise) and the proxy (`service="proxy"`, `route` `envd`,
/// `port` or `unroutable`). Streamed bodies (logs, events) are not waited for.
pub static HTTP_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_http_request_duration_seconds",
        "Time from a request's arrival to its response head, by service, route template, method and status.",
        &["service", "route", "method", "status"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_grpc_request_duration_seconds{method,code}`: the node's gRPC service, from a
/// call's arrival to its response head, by RPC name and gRPC status code.
pub static GRPC_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_grpc_request_duration_seconds",
        "Time from a node gRPC call's arrival to its response head, by method and status code.",
        &["method", "code"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_create_phase_seconds{phase}`: each phase of a sandbox create in the control plane:
/// `validate`, `admit`, `template` (looked up), `claim_warm` (a warm sandbox asked of the
/// node), `record` (the `creating` row written), `node` (the node's part: a warm sandbox
/// handed over or a runtime started, its network and envd ready), `settle` (`running`
/// recorded, the event sent), and `total` (successful creates).
pub static CREATE_PHASE: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_create_phase_seconds",
        "Time of each phase of a sandbox create, and of the whole create (phase=\"total\").",
        &["phase"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_operation_seconds{operation,outcome}`: the control plane's other lifecycle
/// operations, whole: `pause`, `resume` (also a wake-up by the proxy or a connect), `snapshot`,
/// `fork` (its children's creates are in [`CREATE_PHASE`] too), `kill`; `outcome` `ok` or `error`.
pub static OPERATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_operation_seconds",
        "Time of a sandbox lifecycle operation (pause, resume, snapshot, fork, kill), by outcome.",
        &["operation", "outcome"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_build_step_seconds{kind}`: each template build step that ran (not a cache hit), on
/// the node that builds: `run` or `copy`.
pub static BUILD_STEP: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_build_step_seconds",
        "Time of a template build step that ran (not cached), by kind (run, copy).",
        &["kind"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_webhook_attempt_seconds{outcome}`: each webhook delivery attempt: `delivered`,
/// `failed_will_retry` or `failed_gave_up` (the last attempt failed too).
pub static WEBHOOK_ATTEMPT: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_webhook_attempt_seconds",
        "Time of a webhook delivery attempt, by outcome (delivered, failed_will_retry, failed_gave_up).",
        &["outcome"],
        LATENCY_BUCKETS,
    )
});

/// `paddock_store_seconds{operation,access}`: each call of the control plane's store (SQLite),
/// from the call to its result, waiting for the connection included: `operation` the store
/// method, `access` `inline` (run at once on the caller's thread: the connection was free) or
/// `pool` (run on the blocking pool).
pub static STORE_CALL: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "paddock_store_seconds",
        "Time of a store call (SQLite), waiting for the connection included, by operation and access (inline or pool).",
        &["operation", "access"],
        FAST_BUCKETS,
    )
});

/// `paddock_creates_total{outcome}`: creates that ended, `ok` or the reason they failed.
pub static CREATES: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "paddock_creates_total",
        "Sandbox creates that ended, by outcome (ok or the failure's reason).",
        &["outcome"],
    )
});

/// Every metric of this crate, in the order they are rendered.
pub fn all() -> [&'static dyn metrics::Render; 8] {
    [
        &*HTTP_REQUEST_DURATION,
        &*GRPC_REQUEST_DURATION,
        &*CREATE_PHASE,
        &*CREATES,
        &*OPERATION,
        &*BUILD_STEP,
        &*WEBHOOK_ATTEMPT,
        &*STORE_CALL,
    ]
}
