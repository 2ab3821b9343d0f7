//! Reading templates as the E2B CLI and SDKs do:
//! - `GET /templates`, `GET /v2/templates`, `GET /default-templates` → 200 `[Template]`: the
//!   node's templates (public), the team's own snapshots and the templates it builds (private;
//!   also those with no successful build yet), by name; hidden templates (`buildcache-`,
//!   `image-`, `fork-`) and other teams' never;
//! - `GET /templates/{templateID}` → 200 `TemplateWithBuilds`: a built template with its
//!   builds (newest first), any other with one build (how it was made); 404;
//! - `GET /templates/aliases/{alias}` → 200 `{"templateID", "public"}` for a node template or
//!   one of the team's own, 403 when another team's snapshot or built template has the name,
//!   404 when it is free.
//!
//! `spawnCount` and `lastSpawnedAt` count the team's sandbox records, which are kept for a week
//! after the sandboxes stop. A built template's `buildID` is its last successful build (else
//! its newest), `buildStatus` its newest build's status and `buildCount` its number of builds;
//! for other templates `buildID` is a UUID derived from the template's layers, so it changes
//! exactly when the template's content does.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use paddock_domain::TemplateName;
use paddock_node_contract::TemplateSummary;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Team;
use crate::error::ApiError;
use crate::lifecycle::build::{template_ref, Owner};
use crate::store::{BuildRecord, BuildStatus, TeamId, TemplateRecord};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
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
    /// The asking team's snapshot or built template.
    Own,
    /// Another team's snapshot or built template.
    Others,
    /// A hidden template (cached build layers, base images, forks' private snapshots).
    Internal,
}

async fn visibility(
    state: &AppState,
    team: &TeamId,
    name: &TemplateName,
) -> Result<Visibility, ApiError> {
    Ok(match state.core.template_owner(name).await? {
        Owner::Public => Visibility::Public,
        Owner::Hidden => Visibility::Internal,
        owner if owner.team() == Some(team) => Visibility::Own,
        _ => Visibility::Others,
    })
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Internal(Box::new(e))
}

fn usage_of(
    name: &TemplateName,
    usage: &HashMap<TemplateName, (u64, DateTime<Utc>)>,
) -> (u64, Option<String>) {
    usage
        .get(name)
        .map_or((0, None), |(n, at)| (*n, Some(rfc3339(*at))))
}

fn view(
    t: &TemplateSummary,
    public: bool,
    usage: &HashMap<TemplateName, (u64, DateTime<Utc>)>,
) -> TemplateView {
    let (spawn_count, last) = usage_of(&t.name, usage);
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

/// The view of a built template: as the node has it (`None` until a build succeeded), with
/// its record and builds (newest first; there is at least one).
fn built_view(
    rec: &TemplateRecord,
    on_node: Option<&TemplateSummary>,
    builds: &[BuildRecord],
    usage: &HashMap<TemplateName, (u64, DateTime<Utc>)>,
) -> TemplateView {
    let newest = builds.first();
    let shown = builds
        .iter()
        .find(|b| b.status == BuildStatus::Ready)
        .or(newest);
    let mut v = match on_node {
        Some(t) => view(t, false, usage),
        None => {
            let (spawn_count, last) = usage_of(&rec.name, usage);
            let resources = newest.map(|b| b.resources).unwrap_or_default();
            TemplateView {
                template_id: rec.name.to_string(),
                build_id: String::new(),
                cpu_count: resources.cpu_count,
                memory_mb: resources.memory_mb,
                disk_size_mb: resources.disk_mb,
                public: false,
                aliases: vec![rec.name.to_string()],
                names: vec![rec.name.to_string()],
                created_at: rfc3339(rec.created_at),
                updated_at: rfc3339(rec.created_at),
                created_by: None,
                last_spawned_at: last,
                spawn_count,
                build_count: 0,
                envd_version: paddock_domain::ENVD_VERSION,
                build_status: "waiting",
            }
        }
    };
    v.created_at = rfc3339(rec.created_at);
    v.build_count = u32::try_from(builds.len()).unwrap_or(u32::MAX);
    if let Some(b) = shown {
        v.build_id = b.id.to_string();
    }
    if let Some(b) = newest {
        v.build_status = b.status.as_str();
        v.updated_at = rfc3339(b.updated_at);
    }
    v
}

fn build_view(b: &BuildRecord) -> BuildView {
    BuildView {
        build_id: b.id.to_string(),
        status: b.status.as_str(),
        created_at: rfc3339(b.created_at),
        updated_at: rfc3339(b.updated_at),
        finished_at: b.finished_at.map(rfc3339),
        cpu_count: b.resources.cpu_count,
        memory_mb: b.resources.memory_mb,
        disk_size_mb: b.resources.disk_mb,
        envd_version: paddock_domain::ENVD_VERSION,
    }
}

/// The one build of a template that was not built through the API: how it was made.
fn made_build(t: &TemplateSummary, v: &TemplateView) -> BuildView {
    BuildView {
        build_id: v.build_id.clone(),
        status: "ready",
        created_at: v.created_at.clone(),
        updated_at: v.updated_at.clone(),
        finished_at: Some(v.created_at.clone()),
        cpu_count: t.resources.cpu_count,
        memory_mb: t.resources.memory_mb,
        disk_size_mb: t.resources.disk_mb,
        envd_version: paddock_domain::ENVD_VERSION,
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    team: Team,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    let team = &team.0;
    let templates = state.core.node.list_templates().await.map_err(internal)?;
    let usage = state
        .core
        .store
        .template_usage(team)
        .await
        .map_err(internal)?;
    let mut built: HashMap<TemplateName, (TemplateRecord, Vec<BuildRecord>)> = state
        .core
        .built_templates(team)
        .await?
        .into_iter()
        .map(|(rec, builds)| (rec.name.clone(), (rec, builds)))
        .collect();
    let mut out = Vec::new();
    for t in &templates {
        let v = match visibility(&state, team, &t.name).await? {
            Visibility::Public => view(t, true, &usage),
            Visibility::Own => match built.remove(&t.name) {
                Some((rec, builds)) => built_view(&rec, Some(t), &builds, &usage),
                None => view(t, false, &usage),
            },
            Visibility::Others | Visibility::Internal => continue,
        };
        out.push(v);
    }
    // The team's templates that no build has published yet.
    out.extend(
        built
            .values()
            .map(|(rec, builds)| built_view(rec, None, builds, &usage)),
    );
    out.sort_by(|a, b| a.template_id.cmp(&b.template_id));
    Ok(Json(out))
}

/// The template `raw` names (`name`, `name:tag`, `namespace/name`) with its builds, if the
/// team sees it.
async fn find(
    state: &AppState,
    team: &TeamId,
    raw: &str,
) -> Result<Option<TemplateWithBuilds>, ApiError> {
    let Some((name, _)) = template_ref(raw) else {
        return Ok(None);
    };
    let visible = match visibility(state, team, &name).await? {
        Visibility::Public => true,
        Visibility::Own => false,
        Visibility::Others | Visibility::Internal => return Ok(None),
    };
    // Only the template asked for is looked at and counted.
    let on_node = state
        .core
        .node
        .list_templates()
        .await
        .map_err(internal)?
        .into_iter()
        .find(|t| t.name == name);
    let usage = state
        .core
        .store
        .template_usage(team)
        .await
        .map_err(internal)?;
    let record = match visible {
        true => None,
        false => state
            .core
            .store
            .template_record(&name)
            .await
            .map_err(internal)?,
    };
    if let Some(rec) = record {
        let builds = state.core.builds_of(&name).await?;
        return Ok(Some(TemplateWithBuilds {
            template: built_view(&rec, on_node.as_ref(), &builds, &usage),
            builds: builds.iter().map(build_view).collect(),
        }));
    }
    Ok(on_node.map(|t| {
        let template = view(&t, visible, &usage);
        TemplateWithBuilds {
            builds: vec![made_build(&t, &template)],
            template,
        }
    }))
}

pub(super) async fn get(
    State(state): State<AppState>,
    team: Team,
    Path(template_id): Path<String>,
) -> Result<Json<TemplateWithBuilds>, ApiError> {
    find(&state, &team.0, &template_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("template '{template_id}' not found")))
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
    let Some((name, _)) = template_ref(&alias) else {
        return Err(not_found());
    };
    let public = match visibility(&state, &team.0, &name).await? {
        Visibility::Public => {
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
            true
        }
        Visibility::Own => false,
        Visibility::Others => {
            return Err(ApiError::Forbidden(format!(
                "template alias '{alias}' is taken by another team"
            )))
        }
        Visibility::Internal => return Err(not_found()),
    };
    Ok(Json(AliasInfo {
        template_id: name.to_string(),
        public,
    }))
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
