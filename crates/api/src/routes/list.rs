//! `GET /v2/sandboxes` (filters, pagination, `X-Next-Token` and `X-Total-Running` headers) and
//! `GET /sandboxes` (v1: every running sandbox, metadata filter only).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use paddock_domain::SandboxState;

use super::query::list_params;
use crate::auth::Team;
use crate::error::ApiError;
use crate::wire::SandboxDetail;
use crate::AppState;

pub(super) async fn list_v2(
    State(state): State<AppState>,
    team: Team,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let params = list_params(raw.as_deref())?;
    let page = state.core.list(&team.0, params).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-running", HeaderValue::from(page.total_running));
    if let Some(token) = page.next_token {
        let value = HeaderValue::from_str(&token).map_err(|e| ApiError::Internal(Box::new(e)))?;
        headers.insert("x-next-token", value);
    }
    let body: Vec<SandboxDetail> = page.sandboxes.iter().map(SandboxDetail::listed).collect();
    Ok((headers, Json(body)))
}

pub(super) async fn list_v1(
    State(state): State<AppState>,
    team: Team,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<SandboxDetail>>, ApiError> {
    let mut params = list_params(raw.as_deref())?;
    params.states = Some(vec![SandboxState::Running]);
    params.limit = None;
    let mut all = Vec::new();
    loop {
        let page = state.core.list(&team.0, params.clone()).await?;
        all.extend(page.sandboxes.iter().map(SandboxDetail::listed));
        match page.next_token {
            Some(token) => params.next_token = Some(token),
            None => break,
        }
    }
    Ok(Json(all))
}
