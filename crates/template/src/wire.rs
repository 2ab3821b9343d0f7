//! The JSON of E2B's template build API that carries a recipe: `TemplateBuildStartV2`, the body
//! of `POST /v2/templates/{templateID}/builds/{buildID}` (see `spec/e2b-compat.md` 2.4).
//!
//! The SDKs send `null` for some fields they leave unset, so every optional field accepts
//! `null`. Unknown fields are ignored, as the reference's generated server does.

use serde::{Deserialize, Serialize};

/// `TemplateBuildStartV2`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStartV2 {
    /// A container image reference (`debian:bookworm`, `e2bdev/base`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    /// An existing template (`base`, `my-template`, `my-template:tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    /// Registry credentials for `fromImage` (Paddock reaches no registry: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<serde_json::Value>,
    /// Rebuild everything, ignoring cached layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The steps, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<WireStep>>,
    /// Command started in every new sandbox of the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Command that exits 0 once the sandbox is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// One step of `TemplateBuildStartV2.steps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStep {
    /// `COPY`, `RUN`, `ENV`, `WORKDIR` or `USER`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The step's arguments (see [`crate::BuildStep`] for each kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// COPY: sha256 (hex) of the files, the key of the uploaded archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    /// Rebuild this step (and every later one) even if cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// COPY: the client uploaded the files again although they were present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_upload: Option<bool>,
}
