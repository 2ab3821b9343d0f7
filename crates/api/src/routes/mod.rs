//! The HTTP surface: one file per operation, each parsing the request, calling one lifecycle
//! operation and shaping the E2B response. [`router`] wires them up; unknown routes get a 404 with
//! the E2B error body.

use axum::routing::{get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

mod builds;
mod connect;
mod create;
mod events;
mod get;
mod health;
mod kill;
mod list;
mod logs;
mod metrics;
mod network;
mod nodes;
mod pause;
mod prometheus;
pub(crate) mod query;
mod snapshots;
mod tags;
mod templates;
mod timeout;

/// Builds the REST API router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(prometheus::metrics))
        .route("/sandboxes", post(create::create_v1).get(list::list_v1))
        .route("/v2/sandboxes", post(create::create_v2).get(list::list_v2))
        .route("/sandboxes/{sandbox_id}", get(get::get).delete(kill::kill))
        .route("/sandboxes/metrics", get(metrics::batch_metrics))
        .route(
            "/sandboxes/{sandbox_id}/metrics",
            get(metrics::sandbox_metrics),
        )
        .route("/sandboxes/{sandbox_id}/logs", get(logs::logs_v1))
        .route("/v2/sandboxes/{sandbox_id}/logs", get(logs::logs_v2))
        .route("/sandboxes/{sandbox_id}/connect", post(connect::connect_v1))
        .route(
            "/v2/sandboxes/{sandbox_id}/connect",
            post(connect::connect_v2),
        )
        .route(
            "/sandboxes/{sandbox_id}/timeout",
            post(timeout::set_timeout),
        )
        .route("/sandboxes/{sandbox_id}/refreshes", post(timeout::refresh))
        .route("/sandboxes/{sandbox_id}/network", put(network::update))
        .route("/sandboxes/{sandbox_id}/pause", post(pause::pause))
        .route("/sandboxes/{sandbox_id}/resume", post(pause::resume))
        .route("/sandboxes/{sandbox_id}/fork", post(snapshots::fork))
        .route("/sandboxes/{sandbox_id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/templates/{template_id}",
            get(templates::get).delete(snapshots::delete_template),
        )
        .route("/templates", get(templates::list))
        .route("/v2/templates", get(templates::list))
        .route("/default-templates", get(templates::list))
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/templates/tags", post(tags::assign).delete(tags::remove))
        .route("/templates/{template_id}/tags", get(tags::list))
        .route("/v3/templates", post(builds::request))
        .route(
            "/templates/{template_id}/files/{hash}",
            get(builds::upload_link),
        )
        .route(
            "/templates/{template_id}/files/{hash}/upload",
            put(builds::upload),
        )
        .route(
            "/v2/templates/{template_id}/builds/{build_id}",
            post(builds::start),
        )
        .route(
            "/templates/{template_id}/builds/{build_id}/status",
            get(builds::status),
        )
        .route(
            "/templates/{template_id}/builds/{build_id}/logs",
            get(builds::logs),
        )
        .route("/events/sandboxes", get(events::team_events))
        .route(
            "/events/sandboxes/{sandbox_id}",
            get(events::sandbox_events),
        )
        .route(
            "/events/webhooks",
            post(events::create_webhook).get(events::list_webhooks),
        )
        .route(
            "/events/webhooks/{webhook_id}",
            get(events::get_webhook)
                .patch(events::update_webhook)
                .delete(events::delete_webhook),
        )
        .route("/nodes", get(nodes::list))
        .route("/nodes/events", get(nodes::events))
        .route("/nodes/{node_id}", get(nodes::get).post(nodes::set_status))
        .merge(crate::dashboard::routes())
        .route_layer(axum::middleware::from_fn(track_request))
        .fallback(not_found)
        .with_state(state)
}

/// Times a routed request to its response head into `paddock_http_request_duration_seconds`
/// (`service="api"`, the route template, method and status), in an `http.request` span (a
/// child of the caller's trace when it sends `traceparent`) while traces are exported.
async fn track_request(
    route: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let span = paddock_telemetry::span!(
        "http.request",
        otel.name = %format!("{method} {}", route.as_str()),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    paddock_telemetry::trace::adopt(&span, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    paddock_telemetry::HTTP_REQUEST_DURATION.observe(
        &[
            "api",
            route.as_str(),
            method.as_str(),
            response.status().as_str(),
        ],
        started.elapsed(),
    );
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
