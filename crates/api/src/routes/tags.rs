//! Template tags as the E2B SDKs drive them (`Template.assign_tags`, `remove_tags`,
//! `get_tags`):
//! - `POST /templates/tags` `{"target": "name:tag", "tags": [..]}` → 201 `{"tags", "buildID"}`:
//!   the tags now name the build `target` names (`name` = `name:default`, `name:<buildID>`);
//!   400 invalid or no tags or a template not built through the API, 404 unknown template, tag
//!   or build (other teams' templates too), 409 the build's files are gone;
//! - `DELETE /templates/tags` `{"name", "tags": [..]}` → 204; 404 unknown template or tag
//!   (then nothing is removed);
//! - `GET /templates/{templateID}/tags` → 200 `[{"tag", "buildID", "createdAt"}]` by tag; a
//!   template not built through the API (a node template, a snapshot) has its one version as
//!   `default`; 404 other teams' and hidden templates.
//!
//! What tags do is in `lifecycle::tags`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Team;
use crate::error::ApiError;
use crate::extract::Json;
use crate::lifecycle::tags::{TagsOf, DEFAULT_TAG};
use crate::AppState;

/// `AssignTemplateTagsRequest`.
#[derive(Debug, Deserialize)]
pub(crate) struct AssignBody {
    target: String,
    tags: Vec<String>,
}

/// `AssignedTemplateTags`.
#[derive(Debug, Serialize)]
pub(crate) struct Assigned {
    tags: Vec<String>,
    #[serde(rename = "buildID")]
    build_id: String,
}

/// `DeleteTemplateTagsRequest`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteBody {
    name: String,
    tags: Vec<String>,
}

/// `TemplateTag`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TagView {
    tag: String,
    #[serde(rename = "buildID")]
    build_id: String,
    created_at: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) async fn assign(
    State(state): State<AppState>,
    team: Team,
    Json(body): Json<AssignBody>,
) -> Result<(StatusCode, axum::Json<Assigned>), ApiError> {
    let (build, tags) = state
        .core
        .assign_tags(&team.0, &body.target, body.tags)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Assigned {
            tags,
            build_id: build.to_string(),
        }),
    ))
}

pub(super) async fn remove(
    State(state): State<AppState>,
    team: Team,
    Json(body): Json<DeleteBody>,
) -> Result<StatusCode, ApiError> {
    state
        .core
        .remove_tags(&team.0, &body.name, body.tags)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list(
    State(state): State<AppState>,
    team: Team,
    Path(template_id): Path<String>,
) -> Result<axum::Json<Vec<TagView>>, ApiError> {
    let views = match state.core.template_tags(&team.0, &template_id).await? {
        TagsOf::Built(tags) => tags
            .into_iter()
            .map(|t| TagView {
                tag: t.tag,
                build_id: t.build_id.to_string(),
                created_at: rfc3339(t.created_at),
            })
            .collect(),
        TagsOf::Made(name) => {
            let summary = state
                .core
                .node
                .list_templates()
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))?
                .into_iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ApiError::NotFound(format!("template '{template_id}' not found")))?;
            vec![TagView {
                tag: DEFAULT_TAG.into(),
                build_id: super::templates::build_id(&summary.layer_ids),
                created_at: rfc3339(summary.created_at),
            }]
        }
    };
    Ok(axum::Json(views))
}
