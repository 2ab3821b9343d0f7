//! Lifecycle events and webhooks, as E2B serves them:
//!
//! - `GET /events/sandboxes/{sandboxID}` and `GET /events/sandboxes` (the whole team): a JSON
//!   array of events, `offset` (≥ 0, default 0), `limit` (1..=100, default 10), `orderAsc`
//!   (default newest first), `types` (repeatable, or comma-joined). A sandbox the team has no
//!   record and no event of is 404, another team's included. With `Accept: text/event-stream`
//!   the same paths stream events as Server-Sent Events (only `types` applies), resuming after
//!   `Last-Event-ID` (see [`crate::events::stream`]).
//! - `POST /events/webhooks` (201), `GET /events/webhooks`, `GET|PATCH|DELETE
//!   /events/webhooks/{webhookID}` (200): see [`crate::events::webhook`].
//!
//! Bad input is a 400 with the E2B error body; without a persistent event store the JSON and
//! webhook endpoints answer 501 (streams still carry live events).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use paddock_domain::SandboxId;

use super::query::parse_pairs;
use crate::auth::Team;
use crate::error::ApiError;
use crate::events::stream::{self, StreamFilter, KEEPALIVE};
use crate::events::webhook::{self, WebhookBody, WebhookWire, MAX_WEBHOOKS_PER_TEAM};
use crate::events::{EventQuery, EventStore, EventType};
use crate::extract::{Json, SandboxPath};
use crate::store::{StoreError, TeamId};
use crate::AppState;

/// Default page size of an event listing.
pub const DEFAULT_LIMIT: u32 = 10;
/// Largest page size of an event listing.
pub const MAX_LIMIT: u32 = 100;

/// The query parameters of an event listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListParams {
    offset: u64,
    limit: u32,
    ascending: bool,
    types: Vec<EventType>,
}

/// Go's `strconv.ParseBool`, which the reference server uses.
fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

fn parse_params(raw: Option<&str>) -> Result<ListParams, ApiError> {
    let mut params = ListParams {
        offset: 0,
        limit: DEFAULT_LIMIT,
        ascending: false,
        types: Vec::new(),
    };
    for (name, value) in parse_pairs(raw.unwrap_or(""))? {
        match name.as_str() {
            "offset" => {
                params.offset = value.trim().parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "offset must be a whole number of 0 or more, got {value:?}"
                    ))
                })?;
            }
            "limit" => {
                params.limit = value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be between 1 and {MAX_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            "orderAsc" => params.ascending = parse_bool("orderAsc", value.trim())?,
            "types" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let parsed = EventType::parse(t).ok_or_else(|| {
                        ApiError::BadRequest(format!("types: unknown event type {t:?}"))
                    })?;
                    if !params.types.contains(&parsed) {
                        params.types.push(parsed);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(params)
}

fn internal(e: StoreError) -> ApiError {
    ApiError::Internal(Box::new(e))
}

fn event_store(state: &AppState) -> Result<&std::sync::Arc<dyn EventStore>, ApiError> {
    state.core.events.store().ok_or_else(|| {
        ApiError::NotImplemented("lifecycle events need a persistent store on this server".into())
    })
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Whether the team may read the events of `id`: it owns its record or has events of it.
async fn sandbox_visible(
    state: &AppState,
    team: &TeamId,
    id: &SandboxId,
) -> Result<bool, ApiError> {
    match state.core.events.store() {
        Some(store) => store
            .sandbox_visible(team, id.as_str())
            .await
            .map_err(internal),
        None => Ok(state
            .core
            .store
            .sandbox(id)
            .await
            .map_err(internal)?
            .is_some_and(|rec| &rec.team_id == team)),
    }
}

async fn respond(
    state: AppState,
    team: TeamId,
    sandbox: Option<SandboxId>,
    headers: HeaderMap,
    raw_query: Option<String>,
) -> Result<Response, ApiError> {
    let params = parse_params(raw_query.as_deref())?;
    if let Some(id) = &sandbox {
        if !sandbox_visible(&state, &team, id).await? {
            return Err(ApiError::NotFound(format!("sandbox '{id}' not found")));
        }
    }
    let sandbox_id = sandbox.map(|id| id.to_string());
    if wants_stream(&headers) {
        let filter = StreamFilter {
            team_id: team,
            sandbox_id,
            types: params.types,
        };
        let last_event_id = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let events = std::sync::Arc::clone(&state.core.events);
        let stream = stream::open(
            events,
            filter,
            last_event_id,
            state.core.shutdown.subscribe(),
        )
        .await
        .map_err(internal)?;
        let keepalive = KeepAlive::new().interval(KEEPALIVE).text("keepalive");
        return Ok(Sse::new(stream).keep_alive(keepalive).into_response());
    }
    let store = event_store(&state)?;
    let query = EventQuery {
        team_id: team,
        sandbox_id,
        types: params.types,
        ascending: params.ascending,
        after_seq: None,
        offset: params.offset,
        limit: params.limit,
    };
    let events = store.events(&query).await.map_err(internal)?;
    let body: Vec<serde_json::Value> = events.iter().map(|e| e.to_api()).collect();
    Ok(axum::Json(body).into_response())
}

pub(super) async fn team_events(
    State(state): State<AppState>,
    team: Team,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    respond(state, team.0, None, headers, raw).await
}

pub(super) async fn sandbox_events(
    State(state): State<AppState>,
    team: Team,
    path: SandboxPath,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    respond(state, team.0, Some(path.0), headers, raw).await
}

/// The `{webhookID}` path segment.
fn webhook_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))
}

fn webhook_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("webhook '{id}' not found"))
}

pub(super) async fn create_webhook(
    State(state): State<AppState>,
    team: Team,
    Json(body): Json<WebhookBody>,
) -> Result<(StatusCode, axum::Json<WebhookWire>), ApiError> {
    let store = event_store(&state)?;
    let destinations = &state.core.config.webhook_destinations;
    let hook = webhook::new_webhook(&team.0, &body, destinations).map_err(ApiError::BadRequest)?;
    if store.webhooks(&team.0).await.map_err(internal)?.len() >= MAX_WEBHOOKS_PER_TEAM {
        return Err(ApiError::BadRequest(format!(
            "a team may register at most {MAX_WEBHOOKS_PER_TEAM} webhooks"
        )));
    }
    store.insert_webhook(&hook).await.map_err(internal)?;
    tracing::info!(webhook_id = %hook.id, url = %hook.url, "webhook registered");
    Ok((StatusCode::CREATED, axum::Json(WebhookWire::from(&hook))))
}

pub(super) async fn list_webhooks(
    State(state): State<AppState>,
    team: Team,
) -> Result<axum::Json<Vec<WebhookWire>>, ApiError> {
    let store = event_store(&state)?;
    let hooks = store.webhooks(&team.0).await.map_err(internal)?;
    Ok(axum::Json(hooks.iter().map(WebhookWire::from).collect()))
}

pub(super) async fn get_webhook(
    State(state): State<AppState>,
    team: Team,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<WebhookWire>, ApiError> {
    let id = webhook_id(path)?;
    let store = event_store(&state)?;
    let hook = store
        .webhook(&team.0, &id)
        .await
        .map_err(internal)?
        .ok_or_else(|| webhook_not_found(&id))?;
    Ok(axum::Json(WebhookWire::from(&hook)))
}

pub(super) async fn update_webhook(
    State(state): State<AppState>,
    team: Team,
    path: Result<Path<String>, PathRejection>,
    Json(body): Json<WebhookBody>,
) -> Result<axum::Json<WebhookWire>, ApiError> {
    let id = webhook_id(path)?;
    let store = event_store(&state)?;
    let mut hook = store
        .webhook(&team.0, &id)
        .await
        .map_err(internal)?
        .ok_or_else(|| webhook_not_found(&id))?;
    webhook::apply_patch(&mut hook, &body, &state.core.config.webhook_destinations)
        .map_err(ApiError::BadRequest)?;
    if !store.update_webhook(&hook).await.map_err(internal)? {
        return Err(webhook_not_found(&id));
    }
    tracing::info!(webhook_id = %hook.id, enabled = hook.enabled, "webhook updated");
    Ok(axum::Json(WebhookWire::from(&hook)))
}

pub(super) async fn delete_webhook(
    State(state): State<AppState>,
    team: Team,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = webhook_id(path)?;
    let store = event_store(&state)?;
    if !store.delete_webhook(&team.0, &id).await.map_err(internal)? {
        return Err(webhook_not_found(&id));
    }
    tracing::info!(webhook_id = %id, "webhook deleted");
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parameters() {
        let p = parse_params(None).expect("defaults");
        assert_eq!(
            p,
            ListParams {
                offset: 0,
                limit: 10,
                ascending: false,
                types: vec![]
            }
        );
        let p = parse_params(Some(
            "offset=5&limit=100&orderAsc=true&types=sandbox.lifecycle.killed\
             &types=sandbox.lifecycle.created,sandbox.lifecycle.killed",
        ))
        .expect("valid");
        assert_eq!(p.offset, 5);
        assert_eq!(p.limit, 100);
        assert!(p.ascending);
        assert_eq!(p.types, [EventType::Killed, EventType::Created]);
        for (bad, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("offset=-1", "offset"),
            ("orderAsc=maybe", "orderAsc"),
            ("types=sandbox.lifecycle.exploded", "types"),
        ] {
            match parse_params(Some(bad)) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with(field), "{bad}: {m}"),
                other => panic!("{bad}: expected a 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn event_stream_is_asked_for_by_accept() {
        let mut h = HeaderMap::new();
        assert!(!wants_stream(&h));
        h.insert(header::ACCEPT, "application/json".parse().expect("value"));
        assert!(!wants_stream(&h));
        h.append(header::ACCEPT, "Text/Event-Stream".parse().expect("value"));
        assert!(wants_stream(&h));
    }
}
