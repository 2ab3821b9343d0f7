//! The node agent ("orchestrator" in E2B): owns the sandboxes of one host. It places a sandbox's
//! files, asks the [`paddock_sandbox::RuntimeDriver`] to start it, initialises envd, keeps the
//! handles the proxy routes to, and tears sandboxes down. Templates live in [`templates`].
//!
//! The control plane talks to a node only through the [`Node`] contract
//! ([`paddock_node_contract`]), which [`LocalNode`] implements in `contract`; its own errors
//! ([`LocalError`]) become the contract's code + message there.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use paddock_domain::SandboxId;

pub mod build;
mod contract;
pub mod doctor;
pub mod envd_client;
pub mod logs;
pub mod manager;
pub mod metrics;
mod start;
mod transfer;
/// Template storage ([`paddock_templates`]), under the name callers knew it by.
pub use paddock_templates as templates;

pub use manager::{LocalNode, NodeConfig, PoolConfig};
pub use paddock_network::{Cidr, EgressPolicy, FlowLimits, Network, NetworkConfig};
pub use paddock_node_contract::{
    CreateRequest, ErrorCode, MetricSample, MetricsRange, Node, NodeError, NodeEvent, NodeSandbox,
    PauseMode, PoolStats, SandboxStatus, SnapshotMade, TemplateInfo, TemplatePoolStats,
    TemplateSummary,
};

use std::path::PathBuf;

/// Where the proxy sends traffic for a sandbox.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// envd's HTTP socket (port 49983).
    pub envd_socket: PathBuf,
    /// The port-forwarding socket (any other port): write the port as 2 bytes big-endian, read
    /// one status byte (0 connected, 1 nothing listening), then raw bytes both ways.
    pub forward_socket: PathBuf,
}

/// The node's own failures, with their causes; the [`Node`] contract turns them into a
/// [`NodeError`] (code + message) in `contract`.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
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

impl From<paddock_network::NetworkError> for LocalError {
    /// A pool that ran out for now (every address block taken, even after waiting for slots
    /// being destroyed) is [`LocalError::Busy`], which the control plane answers with 429 and
    /// `Retry-After`; every other networking error is [`LocalError::Network`].
    fn from(e: paddock_network::NetworkError) -> Self {
        if e.is_exhausted() {
            LocalError::Busy(e.to_string())
        } else {
            LocalError::Network(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_network_pool_is_busy_not_a_failure() {
        let e = LocalError::from(paddock_network::NetworkError::Exhausted);
        assert!(
            matches!(&e, LocalError::Busy(m) if m.contains("network pool")),
            "{e:?}"
        );
        let e = LocalError::from(paddock_network::NetworkError::ShuttingDown);
        assert!(matches!(e, LocalError::Network(_)), "{e:?}");
    }
}
