//! The values that cross the seam: what to start, what was started, templates, sandbox status
//! and the events a node reports on its own.

use std::collections::HashMap;

use paddock_domain::{EgressPolicy, Resources, SandboxId, TemplateName};
use serde::{Deserialize, Serialize};

/// What the control plane asks a node to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The id chosen by the control plane.
    pub id: SandboxId,
    /// Template to start from.
    pub template: TemplateName,
    /// Environment variables for every process in the sandbox.
    pub env_vars: HashMap<String, String>,
    /// envd access token (`X-Access-Token`).
    pub access_token: String,
    /// Limits; `None` = the template's.
    pub resources: Option<Resources>,
    /// Egress policy (ignored when the node runs without networking).
    pub network: EgressPolicy,
    /// Run the template's start command and wait for its ready check before answering
    /// (every user sandbox; the builder's step sandboxes do not).
    pub start_cmd: bool,
}

/// A sandbox the node has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSandbox {
    /// The id.
    pub id: SandboxId,
    /// Template it runs.
    pub template: TemplateName,
    /// Applied limits.
    pub resources: Resources,
}

/// What a template offers, as the control plane needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// Name.
    pub name: TemplateName,
    /// Default limits for sandboxes of this template.
    pub resources: Resources,
}

/// How a paused sandbox is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// Frozen in memory: its processes, memory and open files come back as they were.
    Memory,
    /// Paused to disk: its processes ended and its memory is free; its files are kept, and
    /// it survives a restart of the node. Resuming starts it again on its files.
    Disk,
}

impl PauseMode {
    /// The stored name (`memory`, `disk`).
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Memory => "memory",
            PauseMode::Disk => "disk",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "memory" => Some(PauseMode::Memory),
            "disk" => Some(PauseMode::Disk),
            _ => None,
        }
    }
}

/// Where a sandbox the node holds is, as [`Node::status`](crate::Node::status) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Its processes run.
    Running,
    /// Paused, kept as the mode says.
    Paused(PauseMode),
}

/// A template as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSummary {
    /// Name.
    pub name: TemplateName,
    /// Default limits of its sandboxes.
    pub resources: Resources,
    /// When it was registered.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Its layers' ids, top first (they identify its content).
    pub layer_ids: Vec<String>,
}

/// A snapshot a node made of a sandbox's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMade {
    /// The new template: the sandbox's writable layer on top of its template's layers.
    pub template: TemplateInfo,
    /// Bytes the new layer takes on disk.
    pub size_bytes: u64,
}

/// Something that happened to a sandbox on the node without the control plane asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// The sandbox's init (envd) ended by itself; the node has torn it down.
    Exited {
        /// The sandbox.
        id: SandboxId,
    },
}

impl NodeEvent {
    /// The sandbox the event is about.
    pub fn sandbox_id(&self) -> &SandboxId {
        match self {
            NodeEvent::Exited { id } => id,
        }
    }
}
