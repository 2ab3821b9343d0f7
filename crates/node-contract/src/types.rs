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

/// Why a sandbox ended without the control plane asking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Its init (envd) ended by itself (a crash, `kill 1` from inside), or the node cannot
    /// tell why it is gone (an older node says nothing more).
    #[default]
    Exited,
    /// Its init ended after the kernel's OOM killer acted in the sandbox's memory cgroup (the
    /// node found an `oom_kill` recorded there when it noticed the exit).
    OutOfMemory,
    /// Its node is gone: removed from the cluster after staying silent, never back after the
    /// control plane restarted, or back without it (the node restarted).
    NodeLost,
}

impl ExitReason {
    /// Every reason.
    pub const ALL: [ExitReason; 3] = [
        ExitReason::Exited,
        ExitReason::OutOfMemory,
        ExitReason::NodeLost,
    ];

    /// The short name (`exited`, `oom`, `node_lost`): E2B's `kill_reason` style.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exited => "exited",
            ExitReason::OutOfMemory => "oom",
            ExitReason::NodeLost => "node_lost",
        }
    }

    /// The reason as the control plane records it on the sandbox (its logs, its `killed`
    /// event's `reason`).
    pub fn describe(self) -> &'static str {
        match self {
            ExitReason::Exited => "sandbox exited by itself",
            ExitReason::OutOfMemory => "sandbox ran out of memory",
            ExitReason::NodeLost => "node lost",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to a sandbox on the node without the control plane asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// The sandbox ended by itself (or was lost with its node); the node has torn it down.
    Exited {
        /// The sandbox.
        id: SandboxId,
        /// Why.
        #[serde(default)]
        reason: ExitReason,
    },
}

impl NodeEvent {
    /// A sandbox that ended for `reason`.
    pub fn exited(id: SandboxId, reason: ExitReason) -> Self {
        NodeEvent::Exited { id, reason }
    }

    /// The sandbox the event is about.
    pub fn sandbox_id(&self) -> &SandboxId {
        match self {
            NodeEvent::Exited { id, .. } => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_have_distinct_names_and_descriptions() {
        let names: std::collections::HashSet<&str> =
            ExitReason::ALL.iter().map(|r| r.as_str()).collect();
        let texts: std::collections::HashSet<&str> =
            ExitReason::ALL.iter().map(|r| r.describe()).collect();
        assert_eq!(names.len(), ExitReason::ALL.len());
        assert_eq!(texts.len(), ExitReason::ALL.len());
        assert_eq!(ExitReason::NodeLost.to_string(), "node_lost");
        assert_eq!(ExitReason::default(), ExitReason::Exited);
    }

    #[test]
    fn an_event_without_a_reason_reads_as_exited() {
        let id = SandboxId::parse("isb1").expect("id");
        let old: NodeEvent =
            serde_json::from_str(r#"{"kind":"exited","id":"isb1"}"#).expect("decodes");
        assert_eq!(old, NodeEvent::exited(id.clone(), ExitReason::Exited));
        let lost = NodeEvent::exited(id, ExitReason::NodeLost);
        let json = serde_json::to_string(&lost).expect("encodes");
        assert!(json.contains(r#""reason":"node_lost""#), "{json}");
        assert_eq!(
            serde_json::from_str::<NodeEvent>(&json).expect("decodes"),
            lost
        );
    }
}
