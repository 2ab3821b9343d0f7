//! [`LocalNode`] as the [`Node`] contract: each call delegates to the node's own method and
//! turns a [`LocalError`] into the contract's code + message, so what the control plane sees of
//! an in-process node is exactly what it will see of a remote one.

use async_trait::async_trait;
use paddock_domain::{EgressPolicy, SandboxId, TemplateName};
use paddock_node_contract::build::{BuildError, BuildRequest, Built, LogSink};
use paddock_node_contract::{
    CreateRequest, ErrorCode, LayerStream, LogEntry, MetricSample, MetricsRange, Node, NodeError,
    NodeEvent, NodeSandbox, PoolStats, SandboxStatus, SnapshotMade, TemplateInfo, TemplateManifest,
    TemplateSummary,
};
use paddock_templates::TemplateError;

use crate::{LocalError, LocalNode};

impl From<LocalError> for NodeError {
    fn from(e: LocalError) -> Self {
        let code = match &e {
            LocalError::TemplateNotFound(_) => ErrorCode::TemplateNotFound,
            LocalError::SandboxNotFound(_) => ErrorCode::SandboxNotFound,
            LocalError::Busy(_) => ErrorCode::Busy,
            LocalError::Unsupported(_) => ErrorCode::Unsupported,
            LocalError::StartCmd(_) => ErrorCode::StartCmd,
            LocalError::Envd(_) => ErrorCode::Envd,
            LocalError::Template(TemplateError::AlreadyExists(_)) => ErrorCode::TemplateExists,
            LocalError::Template(TemplateError::NotFound(_)) => ErrorCode::TemplateNotFound,
            LocalError::Template(TemplateError::UnknownLayer(_)) => ErrorCode::TemplateNotFound,
            LocalError::Template(TemplateError::Transfer { .. }) => ErrorCode::InvalidArgument,
            LocalError::Template(TemplateError::Busy(_)) => ErrorCode::Busy,
            LocalError::Runtime(_)
            | LocalError::Network(_)
            | LocalError::Template(_)
            | LocalError::Io { .. } => ErrorCode::Internal,
        };
        NodeError::new(code, paddock_domain::error_chain(&e))
    }
}

#[async_trait]
impl Node for LocalNode {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        Ok(LocalNode::create(self, req).await?)
    }

    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        Ok(LocalNode::kill(self, id).await?)
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        Ok(LocalNode::template(self, name).await?)
    }

    async fn claim_warm(&self, req: &CreateRequest) -> Result<Option<SandboxId>, NodeError> {
        Ok(LocalNode::claim_warm(self, req))
    }

    async fn pool_stats(&self) -> Result<PoolStats, NodeError> {
        Ok(LocalNode::pool_stats(self))
    }

    async fn live(&self) -> Result<Vec<SandboxId>, NodeError> {
        Ok(LocalNode::live(self).await)
    }

    /// Refused (`unavailable`) until the node has been reconciled: a node that just started
    /// has not adopted the sandboxes that survived its restart yet, and a subscriber that
    /// compares its records with [`Node::live`] after subscribing (a set of nodes whose member
    /// came back) would take every one of them for lost.
    async fn events(&self) -> Result<tokio::sync::broadcast::Receiver<NodeEvent>, NodeError> {
        if !LocalNode::is_reconciled(self) {
            return Err(NodeError::unavailable(
                "the node has not been reconciled since it started",
            ));
        }
        Ok(LocalNode::events(self))
    }

    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError> {
        if let Some(mode) = LocalNode::pause_mode(self, id) {
            return Ok(Some(SandboxStatus::Paused(mode)));
        }
        Ok(LocalNode::endpoint(self, id).map(|_| SandboxStatus::Running))
    }

    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError> {
        Ok(LocalNode::update_network(self, id, policy).await?)
    }

    async fn metrics(
        &self,
        id: &SandboxId,
        range: MetricsRange,
    ) -> Result<Vec<MetricSample>, NodeError> {
        Ok(LocalNode::metrics(self, id, range).await)
    }

    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError> {
        Ok(LocalNode::reconcile(self, expected).await)
    }

    async fn shutdown(&self) -> Result<(), NodeError> {
        LocalNode::shutdown(self).await;
        Ok(())
    }

    async fn envd_logs(&self, id: &SandboxId) -> Result<Vec<LogEntry>, NodeError> {
        Ok(LocalNode::envd_logs(self, id).await?)
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), NodeError> {
        Ok(LocalNode::pause(self, id).await?)
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        Ok(LocalNode::resume(self, id).await?)
    }

    async fn pause_to_disk(&self, id: &SandboxId) -> Result<(), NodeError> {
        Ok(LocalNode::pause_to_disk(self, id).await?)
    }

    async fn snapshot(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, NodeError> {
        Ok(LocalNode::snapshot(self, id, name).await?)
    }

    async fn list_templates(&self) -> Result<Vec<TemplateSummary>, NodeError> {
        Ok(LocalNode::list_templates(self).await?)
    }

    async fn delete_template(&self, name: &TemplateName) -> Result<bool, NodeError> {
        Ok(LocalNode::delete_template(self, name).await?)
    }

    async fn copy_template(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<TemplateInfo, NodeError> {
        Ok(LocalNode::copy_template(self, from, to).await?)
    }

    async fn build(&self, req: BuildRequest, logs: LogSink) -> Result<Built, BuildError> {
        LocalNode::build(self, req, logs).await
    }

    async fn template_manifest(
        &self,
        name: &TemplateName,
    ) -> Result<Option<TemplateManifest>, NodeError> {
        Ok(LocalNode::template_manifest(self, name).await?)
    }

    async fn template_meta(&self, name: &TemplateName) -> Result<Option<String>, NodeError> {
        Ok(LocalNode::template_meta(self, name).await?)
    }

    async fn export_layer(&self, digest: &str) -> Result<LayerStream, NodeError> {
        Ok(LocalNode::export_layer(self, digest).await?)
    }

    async fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, NodeError> {
        Ok(LocalNode::missing_layers(self, digests).await?)
    }

    async fn install_template(
        &self,
        manifest: TemplateManifest,
        layers: LayerStream,
    ) -> Result<TemplateInfo, NodeError> {
        Ok(LocalNode::install_template(self, manifest, layers).await?)
    }

    async fn prepare_base(&self) -> Result<(), NodeError> {
        Ok(LocalNode::prepare_base(self).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_keep_their_kind_and_cause_across_the_seam() {
        let id = SandboxId::generate();
        let e = NodeError::from(LocalError::SandboxNotFound(id.clone()));
        assert_eq!(e.code, ErrorCode::SandboxNotFound);
        assert!(e.message.contains(id.as_str()), "{e:?}");
        let e = NodeError::from(LocalError::from(paddock_network::NetworkError::Exhausted));
        assert_eq!(e.code, ErrorCode::Busy);
        let e = NodeError::from(LocalError::Io {
            context: "reading node.json".into(),
            source: std::io::Error::other("disk on fire"),
        });
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(e.message, "reading node.json: disk on fire");
    }
}
