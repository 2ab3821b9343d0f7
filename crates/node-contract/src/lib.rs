//! The node contract: everything a control plane may ask of a node ("orchestrator" in E2B),
//! as one async trait, [`Node`], over values that can cross a network. The in-process node
//! (`paddock_node::LocalNode`, what `paddock serve` runs) implements it, and so will the gRPC
//! client of a remote node; the control plane (`paddock-api`) depends on this crate only, not
//! on the runtime, the networking or envd.
//!
//! The rules the trait keeps:
//! - every call is async and fallible, and a failure is a [`NodeError`]: an [`ErrorCode`] the
//!   control plane decides on and a message, nothing node-internal;
//! - nothing is read out of a node's memory: what the control plane sent (a sandbox's env
//!   vars, egress policy, how it was paused) it stores itself, and what changes on the node
//!   by itself (a sandbox exited) arrives as a [`NodeEvent`] from [`Node::events`].
//!
//! Modules: [`error`] (codes and errors), [`types`] (requests, sandboxes, templates, events),
//! [`layers`] (templates across nodes), [`logs`], [`metrics`], [`build`] and, with the `fake` feature, `fake` (the one fake node for
//! tests).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;

use async_trait::async_trait;
use paddock_domain::{EgressPolicy, SandboxId, TemplateName};

pub mod build;
pub mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod layers;
pub mod logs;
pub mod metrics;
pub mod types;

pub use error::{ErrorCode, NodeError};
pub use layers::{bounded, LayerChunk, LayerRef, LayerStream, TemplateManifest};
pub use logs::{LogEntry, LogLevel};
pub use metrics::{MetricSample, MetricsRange, PoolStats, TemplatePoolStats};
pub use types::{
    CreateRequest, ExitReason, NodeEvent, NodeSandbox, PauseMode, SandboxStatus, SnapshotMade,
    TemplateInfo, TemplateSummary,
};

/// How many node events a subscriber may fall behind before it is told it lagged
/// (`RecvError::Lagged`) and should compare its records with [`Node::live`].
pub const EVENT_BUFFER: usize = 1024;

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
    async fn claim_warm(&self, req: &CreateRequest) -> Result<Option<SandboxId>, NodeError> {
        let _ = req;
        Ok(None)
    }

    /// The warm pools' sizes and counters (for `/metrics`). Default: no pools.
    async fn pool_stats(&self) -> Result<PoolStats, NodeError> {
        Ok(PoolStats::default())
    }

    /// Sandboxes that are live on this node right now (warm pools' sandboxes not included).
    async fn live(&self) -> Result<Vec<SandboxId>, NodeError>;

    /// Subscribes to what happens on the node by itself (see [`NodeEvent`]). A subscriber
    /// that falls more than [`EVENT_BUFFER`] events behind gets `RecvError::Lagged` and should
    /// compare its records with [`Node::live`]; `RecvError::Closed` means the node is gone.
    async fn events(&self) -> Result<tokio::sync::broadcast::Receiver<NodeEvent>, NodeError>;

    /// Whether sandbox `id` is on this node and whether it runs or is paused (and how);
    /// `None` when the node does not hold it.
    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError>;

    /// Replaces the egress policy of a live sandbox. A node without networking accepts any
    /// policy: its sandboxes have no egress at all.
    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError>;

    /// Resource-usage samples of sandbox `id` within `range`, oldest first. A live sandbox
    /// always has at least one (taken at once if the sampler has not yet measured it); a
    /// sandbox no longer sampled (e.g. paused) returns its last samples; an unknown one none.
    /// Default: none.
    async fn metrics(
        &self,
        id: &SandboxId,
        range: MetricsRange,
    ) -> Result<Vec<MetricSample>, NodeError> {
        let _ = (id, range);
        Ok(Vec::new())
    }

    /// The newest sample of each of `ids` that has one (others are left out). Default: the
    /// last of [`Node::metrics`] for each.
    async fn latest_metrics(
        &self,
        ids: &[SandboxId],
    ) -> Result<HashMap<SandboxId, MetricSample>, NodeError> {
        let mut out = HashMap::new();
        for id in ids {
            if let Some(m) = self.metrics(id, MetricsRange::default()).await?.pop() {
                out.insert(id.clone(), m);
            }
        }
        Ok(out)
    }

    /// Reattaches to sandboxes that survived a node restart; kills everything else it finds.
    /// Returns the ids that are still running (or paused).
    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError>;

    /// Stops every sandbox but those paused to disk (shutdown of the node).
    async fn shutdown(&self) -> Result<(), NodeError>;

    /// envd's log entries for a sandbox, oldest first: from its live log, or from the copy the
    /// node kept after it stopped; bounded to the end of the log. Default: none.
    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<LogEntry>, NodeError> {
        let _ = id;
        Ok(Vec::new())
    }

    /// Pauses a live sandbox in memory (its processes stop, keeping memory and open files);
    /// traffic for it is held back until [`Node::resume`]. Pausing a paused sandbox is a no-op;
    /// a failed pause leaves it running. Default: unsupported.
    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::unsupported("pausing sandboxes"))
    }

    /// Resumes a sandbox paused by [`Node::pause`] or [`Node::pause_to_disk`]; a running
    /// sandbox is left as it is. Default: unsupported.
    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::unsupported("resuming sandboxes"))
    }

    /// Pauses a live (running or frozen) sandbox to disk: its processes end and its memory is
    /// freed, its files are kept; it survives node restarts, and [`Node::resume`] starts it
    /// again on its files. Pausing a sandbox already on disk is a no-op. Default: unsupported.
    async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _ = id;
        Err(NodeError::unsupported("pausing sandboxes to disk"))
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
        Err(NodeError::unsupported("snapshots"))
    }

    /// Every template of the node, sorted by name. Default: none.
    async fn list_templates(&self) -> Result<Vec<TemplateSummary>, NodeError> {
        Ok(Vec::new())
    }

    /// Deletes a template; its layers stay as long as sandboxes run on them. `false` if it
    /// did not exist. Default: unsupported.
    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        let _ = name;
        Err(NodeError::unsupported("deleting templates"))
    }

    /// Makes template `to` over the layers of template `from`, with its metadata (limits,
    /// start state and commands) and no files copied, replacing a template named `to`.
    /// Fails with [`ErrorCode::TemplateNotFound`] when `from` does not exist. Default:
    /// unsupported.
    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        let _ = (from, to);
        Err(NodeError::unsupported("copying templates"))
    }

    /// What another node needs to have template `name` (its metadata and its layers'
    /// digests); `None` if this node does not have it. Default: none.
    async fn template_manifest(
        &self,
        name: &TemplateName,
    ) -> Result<Option<TemplateManifest>, NodeError> {
        let _ = name;
        Ok(None)
    }

    /// Template `name`'s metadata as the node stores it (JSON, as in
    /// [`TemplateManifest::meta_json`]: its source and configuration); `None` if this node
    /// does not have it. Default: the manifest's (which a node may have to hash layers for).
    async fn template_meta(&self, name: &TemplateName) -> Result<Option<String>, NodeError> {
        Ok(self.template_manifest(name).await?.map(|m| m.meta_json))
    }

    /// Sends the layer with content address `digest`. Fails with
    /// [`ErrorCode::TemplateNotFound`] if this node has no such layer. Default: unsupported.
    async fn export_layer(&self, digest: &str) -> Result<LayerStream, NodeError> {
        let _ = digest;
        Err(NodeError::unsupported("sending template layers"))
    }

    /// Of `digests`, the layers this node does not have. Default: unsupported.
    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, NodeError> {
        let _ = digests;
        Err(NodeError::unsupported("receiving template layers"))
    }

    /// Makes the template of `manifest` on this node (replacing one of that name) from the
    /// layers it has and those in `layers` (each checked against its digest before it is
    /// kept). Fails with [`ErrorCode::InvalidArgument`] when a layer is refused or missing.
    /// Default: unsupported.
    async fn install_template(
        &self,
        manifest: TemplateManifest,
        layers: LayerStream,
    ) -> Result<TemplateInfo, NodeError> {
        let _ = (manifest, layers);
        Err(NodeError::unsupported("receiving templates"))
    }

    /// Builds the default template `base` if this node does not have it (a first node of a
    /// cluster; the others receive it from a node that has it); returns once it is there.
    /// Default: unsupported.
    async fn prepare_base(&self) -> Result<(), NodeError> {
        Err(NodeError::unsupported("building the base template"))
    }

    /// Builds a template from a recipe on this node and publishes it; log lines go to `logs`
    /// in order. Default: unsupported.
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
}
