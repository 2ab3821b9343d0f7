//! Reading templates as the E2B CLI and SDKs do (no builds yet):
//! - `GET /templates`, `GET /v2/templates`, `GET /default-templates` → 200 `[Template]`: the
//!   node's templates (public) and the team's own snapshots (private), by name;
//! - `GET /templates/{templateID}` → 200 `TemplateWithBuilds` (one build: how it was made), 404;
//! - `GET /templates/aliases/{alias}` → 200 `{"templateID", "public"}` when it exists, 404 when
//!   the name is free, 403 when another team's snapshot has it.
//!
//! `spawnCount` and `lastSpawnedAt` count the team's sandbox records, which are kept for a week
//! after the sandboxes stop. `buildID` is a UUID derived from the template's layers, so it
//! changes exactly when the template's content does.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use paddock_domain::TemplateName;
use paddock_node::TemplateSummary;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Team;
use crate::error::ApiError;
use crate::store::TeamId;
use crate::AppState;

/// `Template`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TemplateView {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "buildID")]
    build_id: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    public: bool,
    aliases: Vec<String>,
    names: Vec<String>,
    created_at: String,
    updated_at: String,
    created_by: Option<serde_json::Value>,
    last_spawned_at: Option<String>,
    spawn_count: u64,
    build_count: u32,
    envd_version: &'static str,
    build_status: &'static str,
}

/// `TemplateWithBuilds`.
#[derive(Debug, Serialize)]
pub(crate) struct TemplateWithBuilds {
    #[serde(flatten)]
    template: TemplateView,
    builds: Vec<BuildView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildView {
    #[serde(rename = "buildID")]
    build_id: String,
    status: &'static str,
    created_at: String,
    updated_at: String,
    finished_at: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    envd_version: &'static str,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A UUID (version 5 layout) from the template's layer ids.
pub(crate) fn build_id(layer_ids: &[String]) -> String {
    let digest = Sha256::digest(layer_ids.join(":").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whom a template belongs to, as the team asking sees it.
enum Visibility {
    /// A node template: everyone's.
    Public,
    /// The asking team's snapshot.
    Own,
    /// Another team's snapshot, or a fork's short-lived private template.
    Hidden,
}

async fn visibility(
    state: &AppState,
    team: &TeamId,
    name: &TemplateName,
) -> Result<Visibility, ApiError> {
    if crate::lifecycle::snapshot::is_fork_template(name) {
        return Ok(Visibility::Hidden);
    }
    Ok(
        match state.core.store.snapshot(name).await.map_err(internal)? {
            None => Visibility::Public,
            Some(s) if &s.team_id == team => Visibility::Own,
            Some(_) => Visibility::Hidden,
        },
    )
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Internal(Box::new(e))
}

fn view(
    t: &TemplateSummary,
    public: bool,
    usage: &HashMap<TemplateName, (u64, DateTime<Utc>)>,
) -> TemplateView {
    let (spawn_count, last) = usage
        .get(&t.name)
        .map_or((0, None), |(n, at)| (*n, Some(rfc3339(*at))));
    TemplateView {
        template_id: t.name.to_string(),
        build_id: build_id(&t.layer_ids),
        cpu_count: t.resources.cpu_count,
        memory_mb: t.resources.memory_mb,
        disk_size_mb: t.resources.disk_mb,
        public,
        aliases: vec![t.name.to_string()],
        names: vec![t.name.to_string()],
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.created_at),
        created_by: None,
        last_spawned_at: last,
        spawn_count,
        build_count: 1,
        envd_version: paddock_domain::ENVD_VERSION,
        build_status: "ready",
    }
}

/// The templates the team can see, with their views.
async fn visible_templates(
    state: &AppState,
    team: &TeamId,
) -> Result<Vec<(TemplateSummary, TemplateView)>, ApiError> {
    let templates = state.core.node.list_templates().await.map_err(internal)?;
    with_views(state, team, templates).await
}

/// The views of those of `templates` the team can see.
async fn with_views(
    state: &AppState,
    team: &TeamId,
    templates: Vec<TemplateSummary>,
) -> Result<Vec<(TemplateSummary, TemplateView)>, ApiError> {
    let usage = state
        .core
        .store
        .template_usage(team)
        .await
        .map_err(internal)?;
    let mut out = Vec::new();
    for t in templates {
        let public = match visibility(state, team, &t.name).await? {
            Visibility::Public => true,
            Visibility::Own => false,
            Visibility::Hidden => continue,
        };
        let v = view(&t, public, &usage);
        out.push((t, v));
    }
    Ok(out)
}

pub(super) async fn list(
    State(state): State<AppState>,
    team: Team,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    let views = visible_templates(&state, &team.0).await?;
    Ok(Json(views.into_iter().map(|(_, v)| v).collect()))
}

/// The template `raw` names (`name`, `name:default`, `namespace/name`), if the team sees it.
async fn find(
    state: &AppState,
    team: &TeamId,
    raw: &str,
) -> Result<Option<(TemplateSummary, TemplateView)>, ApiError> {
    let bare = raw.rsplit('/').next().unwrap_or(raw);
    let Ok(name) = TemplateName::parse(bare) else {
        return Ok(None);
    };
    // Only the template asked for is checked and counted.
    let one: Vec<TemplateSummary> = state
        .core
        .node
        .list_templates()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|t| t.name == name)
        .collect();
    Ok(with_views(state, team, one).await?.pop())
}

pub(super) async fn get(
    State(state): State<AppState>,
    team: Team,
    Path(template_id): Path<String>,
) -> Result<Json<TemplateWithBuilds>, ApiError> {
    let Some((t, template)) = find(&state, &team.0, &template_id).await? else {
        return Err(ApiError::NotFound(format!(
            "template '{template_id}' not found"
        )));
    };
    let build = BuildView {
        build_id: template.build_id.clone(),
        status: "ready",
        created_at: template.created_at.clone(),
        updated_at: template.updated_at.clone(),
        finished_at: template.created_at.clone(),
        cpu_count: t.resources.cpu_count,
        memory_mb: t.resources.memory_mb,
        disk_size_mb: t.resources.disk_mb,
        envd_version: paddock_domain::ENVD_VERSION,
    };
    Ok(Json(TemplateWithBuilds {
        template,
        builds: vec![build],
    }))
}

/// `{"templateID", "public"}` of `GET /templates/aliases/{alias}`.
#[derive(Debug, Serialize)]
pub(crate) struct AliasInfo {
    #[serde(rename = "templateID")]
    template_id: String,
    public: bool,
}

pub(super) async fn alias(
    State(state): State<AppState>,
    team: Team,
    Path(alias): Path<String>,
) -> Result<Json<AliasInfo>, ApiError> {
    let not_found = || ApiError::NotFound(format!("template alias '{alias}' not found"));
    let Ok(name) = TemplateName::parse(&alias) else {
        return Err(not_found());
    };
    let exists = state
        .core
        .node
        .template(&name)
        .await
        .map_err(internal)?
        .is_some();
    if !exists {
        return Err(not_found());
    }
    match visibility(&state, &team.0, &name).await? {
        Visibility::Public => Ok(Json(AliasInfo {
            template_id: name.to_string(),
            public: true,
        })),
        Visibility::Own => Ok(Json(AliasInfo {
            template_id: name.to_string(),
            public: false,
        })),
        Visibility::Hidden => Err(ApiError::Forbidden(format!(
            "template alias '{alias}' is taken by another team"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_uuids_that_follow_the_content() {
        let a = build_id(&["aa".repeat(12)]);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'), "version 5 layout: {a}");
        assert!("89ab".contains(&parts[3][..1]), "RFC 4122 variant: {a}");
        assert_eq!(a, build_id(&["aa".repeat(12)]));
        assert_ne!(a, build_id(&["bb".repeat(12), "aa".repeat(12)]));
    }
}
