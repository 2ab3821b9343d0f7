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

pub mod doctor;
pub mod manager;
pub mod templates;

pub use manager::{LocalNode, NodeConfig};
pub use paddock_network::{Cidr, EgressPolicy, Network, NetworkConfig};

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
    /// The node cannot take more sandboxes right now.
    #[error("node is at capacity: {0}")]
    Busy(String),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] paddock_sandbox::RuntimeError),
    /// envd did not accept initialisation.
    #[error("envd initialisation failed: {0}")]
    Envd(String),
    /// Sandbox networking failed.
    #[error(transparent)]
    Network(#[from] paddock_network::NetworkError),
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

/// The operations a control plane needs from a node.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Starts a sandbox; returns once envd is up and initialised.
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError>;
    /// Stops a sandbox and removes everything it held. Unknown ids are not an error.
    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError>;
    /// Looks a template up.
    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError>;
    /// Sandboxes that are live on this node right now.
    async fn live(&self) -> Vec<SandboxId>;
    /// Notifies when a sandbox died by itself.
    fn exits(&self) -> tokio::sync::broadcast::Receiver<SandboxId>;
    /// Where to route traffic for a sandbox.
    fn endpoint(&self, id: &SandboxId) -> Option<Endpoint>;
    /// Replaces the egress policy of a live sandbox. A node without networking accepts any
    /// policy: its sandboxes have no egress at all.
    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError>;
    /// Reattaches to sandboxes that survived a node restart; kills everything else it finds.
    /// Returns the ids that are still running.
    async fn reconcile(&self, expected: &[SandboxId]) -> Vec<SandboxId>;
    /// Stops every sandbox (shutdown).
    async fn shutdown(&self);
}
