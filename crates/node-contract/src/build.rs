//! A template build as the control plane asks a node for it: the request, the log lines the
//! node streams back in order, and the outcome.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, TemplateName};
use paddock_template::Recipe;
use serde::{Deserialize, Serialize};

pub use crate::logs::LogLevel;
use crate::TemplateInfo;

/// Prefix of the hidden templates that hold cached build layers (`buildcache-<key>`); listings
/// leave them out and `paddock template cache clear` deletes them.
pub const CACHE_PREFIX: &str = "buildcache-";
/// Prefix of the hidden templates of base images (`image-...`: Debian suites, imported image
/// archives), made once and reused by later builds; also left out of listings.
pub const IMAGE_PREFIX: &str = "image-";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The template to publish (replaced if it exists; sandboxes running on the old one keep
    /// their files).
    pub name: TemplateName,
    /// The recipe.
    pub recipe: Recipe,
    /// Limits of the build's sandboxes and, recorded with the template, of its sandboxes.
    pub resources: Resources,
    /// Where the uploaded COPY archives are: `<files_dir>/<filesHash>` (tar, optionally gzip),
    /// named by the SHA-256 the SDK computed. A node in the same process reads them there.
    pub files_dir: PathBuf,
    /// Image archives (`fromImage` paths) must be inside this directory; `None` = anywhere
    /// (local use by the node's operator).
    pub images_dir: Option<PathBuf>,
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLog {
    /// When it was produced.
    pub timestamp: DateTime<Utc>,
    /// Severity.
    pub level: LogLevel,
    /// The step it belongs to: `base`, `1`..`N` (1-based, as in the recipe), `finalize`.
    pub step: String,
    /// The line (no trailing newline).
    pub message: String,
}

/// Where a build sends its log lines. A closed receiver does not stop the build.
pub type LogSink = tokio::sync::mpsc::UnboundedSender<BuildLog>;

/// Why a build failed, and in which step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("build step '{step}' failed: {message}")]
pub struct BuildError {
    /// `base`, `1`..`N` or `finalize`.
    pub step: String,
    /// What went wrong: for a command its text, exit code and last lines of output.
    pub message: String,
}

/// A finished build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    /// The published template.
    pub template: TemplateInfo,
    /// Its layers' ids, top first.
    pub layer_ids: Vec<String>,
    /// Steps that changed files and came from the cache.
    pub cached_steps: usize,
    /// Steps that changed files and ran.
    pub built_steps: usize,
}
