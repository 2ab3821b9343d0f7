//! `POST /sandboxes` (v1, default timeout 15 s) and `POST /v2/sandboxes` (default 300 s,
//! `Idempotency-Key`): 201 with a `Sandbox`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::Json;
use crate::lifecycle::create::CreateSpec;
use crate::wire::{NewSandbox, Sandbox};
use crate::AppState;

/// Default timeout of a v1 create, in seconds.
pub const V1_DEFAULT_TIMEOUT_SECS: i64 = 15;
/// Default timeout of a v2 create, in seconds.
pub const V2_DEFAULT_TIMEOUT_SECS: i64 = 300;

fn spec(body: NewSandbox, default_timeout: i64, idempotency_key: Option<String>) -> CreateSpec {
    CreateSpec {
        template: body.template_id,
        timeout_secs: body.timeout.unwrap_or(default_timeout),
        metadata: body.metadata.unwrap_or_default(),
        env_vars: body.env_vars.unwrap_or_default(),
        auto_pause: body.auto_pause.unwrap_or(false),
        auto_resume: body.auto_resume.is_some_and(|a| a.enabled),
        auto_pause_memory: body.auto_pause_memory,
        idempotency_key,
        allow_internet_access: body.allow_internet_access,
        network: body.network,
        node_template: None,
        egress: None,
        cold: false,
    }
}

async fn run(state: AppState, team: Team, spec: CreateSpec) -> Result<impl IntoResponse, ApiError> {
    let rec = state.core.create(&team.0, spec).await?;
    let domain = state.core.config.domain.as_deref();
    Ok((
        StatusCode::CREATED,
        axum::Json(Sandbox::from_record(&rec, domain)),
    ))
}

pub(super) async fn create_v1(
    State(state): State<AppState>,
    team: Team,
    Json(body): Json<NewSandbox>,
) -> Result<impl IntoResponse, ApiError> {
    run(state, team, spec(body, V1_DEFAULT_TIMEOUT_SECS, None)).await
}

pub(super) async fn create_v2(
    State(state): State<AppState>,
    team: Team,
    headers: HeaderMap,
    Json(body): Json<NewSandbox>,
) -> Result<impl IntoResponse, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".into()))?
                .to_string(),
        ),
    };
    run(state, team, spec(body, V2_DEFAULT_TIMEOUT_SECS, key)).await
}
