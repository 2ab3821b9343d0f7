//! The node agent ("orchestrator" in E2B): owns the sandboxes of one host. It places a sandbox's
//! files, asks the [`paddock_sandbox::RuntimeDriver`] to start it, initialises envd, keeps the
//! handles the proxy routes to, and tears sandboxes down. Templates live in [`templates`].
//!
//! The control plane talks to a node only through the [`Node`] trait, so a remote node (gRPC)
//! can replace the in-process [`LocalNode`] later.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use paddock_domain::{Resources, SandboxId, TemplateName};

pub mod build;
pub mod doctor;
pub mod envd_client;
pub mod logs;
pub mod manager;
pub mod metrics;
mod start;
pub mod templates;

pub use manager::{LocalNode, NodeConfig, PoolConfig, PoolStats, TemplatePoolStats};
pub use metrics::{MetricSample, MetricsRange};
pub use paddock_network::{Cidr, EgressPolicy, FlowLimits, Network, NetworkConfig};

/// What the control plane asks a node to start.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct NodeSandbox {
    /// The id.
    pub id: SandboxId,
    /// Template it runs.
    pub template: TemplateName,
    /// Applied limits.
    pub resources: Resources,
}

/// What a template offers, as the control plane needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    /// Name.
    pub name: TemplateName,
    /// Default limits for sandboxes of this template.
    pub resources: Resources,
}

/// How a paused sandbox is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Frozen in memory: its processes, memory and open files come back as they were.
    Memory,
    /// Paused to disk: its processes ended and its memory is free; its files are kept, and
    /// it survives a restart of the node. Resuming starts it again on its files.
    Disk,
}

/// A template as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
pub struct SnapshotMade {
    /// The new template: the sandbox's writable layer on top of its template's layers.
    pub template: TemplateInfo,
    /// Bytes the new layer takes on disk.
    pub size_bytes: u64,
}

/// Where the proxy sends traffic for a sandbox.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// envd's HTTP socket (port 49983).
    pub envd_socket: PathBuf,
    /// The port-forwarding socket (any other port): write the port as 2 bytes big-endian, read
    /// one status byte (0 connected, 1 nothing listening), then raw bytes both ways.
    pub forward_socket: PathBuf,
}

/// Node failures, as the control plane maps them to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The template does not exist on this node.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// The sandbox is not on this node.
    #[error("sandbox {0} not found")]
    SandboxNotFound(SandboxId),
    /// The node cannot take more sandboxes right now (including a pooled resource such as
    /// network slots running out: see the `From<NetworkError>` conversion).
    #[error("node is at capacity: {0}")]
    Busy(String),
    /// This node cannot do the operation at all.
    #[error("this node does not support {0}")]
    Unsupported(&'static str),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] paddock_sandbox::RuntimeError),
    /// The template's start command did not start or its ready check did not pass.
    #[error("the template's start command failed: {0}")]
    StartCmd(String),
    /// envd did not accept initialisation.
    #[error("envd initialisation failed: {0}")]
    Envd(String),
    /// Sandbox networking failed.
    #[error(transparent)]
    Network(paddock_network::NetworkError),
    /// Template store failure.
    #[error(transparent)]
    Template(#[from] templates::TemplateError),
    /// Other I/O.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<paddock_network::NetworkError> for NodeError {
    /// A pool that ran out for now (every address block taken, even after waiting for slots
    /// being destroyed) is [`NodeError::Busy`], which the control plane answers with 429 and
    /// `Retry-After`; every other networking error is [`NodeError::Network`].
    fn from(e: paddock_network::NetworkError) -> Self {
        if e.is_exhausted() {
            NodeError::Busy(e.to_string())
        } else {
            NodeError::Network(e)
        }
    }
}

/// The operations a control plane needs from a node.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Starts a sandbox; returns once envd is up and initialised.
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError>;
    /// Stops a sandbox and removes everything it held. Unknown ids are not an error.
    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError>;
    /// Looks a template up.
    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError>;
    /// Claims a sandbox of `req.template`'s warm pool for `req`, if one is ready and `req`
    /// can use it (the template's limits and start command, the default egress policy).
    /// Returns its id, which the control plane gives the sandbox instead of `req.id`; the
    /// following [`Node::create`] with that id hands it over in about a millisecond. A claim
    /// with no `create` after it is released by [`Node::kill`] of the id (or, at the latest, a
    /// minute later). Every miss tells the node that the template is wanted. Default: no pools.
    fn claim_warm(&self, req: &CreateRequest) -> Option<SandboxId> {
        let _ = req;
        None
    }
    /// The warm pools' sizes and counters (for `/metrics`). Default: no pools.
    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }
    /// Sandboxes that are live on this node right now (warm pools' sandboxes not included).
    async fn live(&self) -> Vec<SandboxId>;
    /// Notifies when a sandbox died by itself.
    fn exits(&self) -> tokio::sync::broadcast::Receiver<SandboxId>;
    /// Where to route traffic for a sandbox.
    fn endpoint(&self, id: &SandboxId) -> Option<Endpoint>;
    /// Replaces the egress policy of a live sandbox. A node without networking accepts any
    /// policy: its sandboxes have no egress at all.
    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError>;
    /// Resource-usage samples of sandbox `id` within `range`, oldest first (see [`metrics`]).
    /// A live sandbox always has at least one (taken at once if the sampler has not yet
    /// measured it); a sandbox no longer sampled (e.g. paused) returns its last samples; an
    /// unknown one none. Default: none.
    async fn metrics(&self, id: &SandboxId, range: MetricsRange) -> Vec<MetricSample> {
        let _ = (id, range);
        Vec::new()
    }
    /// The newest sample of each of `ids` that has one (others are left out). Default: the
    /// last of [`Node::metrics`] for each.
    async fn latest_metrics(&self, ids: &[SandboxId]) -> HashMap<SandboxId, MetricSample> {
        let mut out = HashMap::new();
        for id in ids {
            if let Some(m) = self.metrics(id, MetricsRange::default()).await.pop() {
                out.insert(id.clone(), m);
            }
        }
        out
    }
    /// Reattaches to sandboxes that survived a node restart; kills everything else it finds.
    /// Returns the ids that are still running.
    async fn reconcile(&self, expected: &[SandboxId]) -> Vec<SandboxId>;
    /// Stops every sandbox (shutdown).
    async fn shutdown(&self);
    /// envd's log entries for a sandbox, oldest first: from its live log, or from the copy the
    /// node kept after it stopped (see [`logs`]); bounded to the end of the log. The default
    /// (a node without envd logs) has none.
    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<logs::LogEntry>, NodeError> {
        let _ = id;
        Ok(Vec::new())
    }

    /// Pauses a live sandbox in memory (its processes stop, keeping memory and open files);
    /// traffic for it is held back until [`Node::resume`]. Pausing a paused sandbox is a no-op;
    /// a failed pause leaves it running. Default: unsupported.
    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::Unsupported("pausing sandboxes"))
    }

    /// Resumes a sandbox paused by [`Node::pause`]; a running sandbox is left as it is.
    /// Default: unsupported.
    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::Unsupported("resuming sandboxes"))
    }

    /// Whether a live sandbox is paused (also after a restart of the node). Default: never.
    fn is_paused(&self, id: &SandboxId) -> bool {
        let _ = id;
        false
    }

    /// How a paused sandbox is kept; `None` when it is not paused (or unknown). Default:
    /// [`PauseMode::Memory`] for every paused sandbox.
    fn pause_mode(&self, id: &SandboxId) -> Option<PauseMode> {
        self.is_paused(id).then_some(PauseMode::Memory)
    }

    /// Pauses a live (running or frozen) sandbox to disk: its processes end and its memory is
    /// freed, its files are kept; it survives node restarts, and [`Node::resume`] starts it
    /// again on its files. Pausing a sandbox already on disk is a no-op. Default: unsupported.
    async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::Unsupported("pausing sandboxes to disk"))
    }

    /// Makes template `name` from sandbox `id`'s files as they are now (its writable layer
    /// over its template): running, frozen or on disk, the sandbox is left as it was.
    /// Default: unsupported.
    async fn snapshot(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, NodeError> {
        let _ = (id, name);
        Err(NodeError::Unsupported("snapshots"))
    }

    /// Every template of the node, sorted by name. Default: none.
    async fn list_templates(&self) -> Result<Vec<TemplateSummary>, NodeError> {
        Ok(Vec::new())
    }

    /// Deletes a template; its layers stay as long as sandboxes run on them. `false` if it
    /// did not exist. Default: unsupported.
    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        let _ = name;
        Err(NodeError::Unsupported("deleting templates"))
    }

    /// Makes template `to` over the layers of template `from`, with its metadata (limits,
    /// start state and commands) and no files copied, replacing a template named `to`.
    /// Fails with [`NodeError::TemplateNotFound`] when `from` does not exist. Default:
    /// unsupported.
    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        let _ = (from, to);
        Err(NodeError::Unsupported("copying templates"))
    }

    /// The environment variables sandbox `id` was created with (empty if unknown). Default:
    /// none.
    fn env_vars(&self, id: &SandboxId) -> HashMap<String, String> {
        let _ = id;
        HashMap::new()
    }

    /// Builds a template from a recipe on this node and publishes it (see [`build`]); log
    /// lines go to `logs` in order. Default: unsupported.
    async fn build(
        &self,
        req: build::BuildRequest,
        logs: build::LogSink,
    ) -> Result<build::Built, build::BuildError> {
        let _ = (req, logs);
        Err(build::BuildError {
            step: paddock_template::BASE_STEP.into(),
            message: "this node cannot build templates".into(),
        })
    }

    /// The egress policy sandbox `id` runs with (`None` if unknown). Default: unknown.
    fn egress_policy(&self, id: &SandboxId) -> Option<EgressPolicy> {
        let _ = id;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_network_pool_is_busy_not_a_failure() {
        let e = NodeError::from(paddock_network::NetworkError::Exhausted);
        assert!(
            matches!(&e, NodeError::Busy(m) if m.contains("network pool")),
            "{e:?}"
        );
        let e = NodeError::from(paddock_network::NetworkError::ShuttingDown);
        assert!(matches!(e, NodeError::Network(_)), "{e:?}");
    }
}
