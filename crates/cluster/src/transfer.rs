//! Templates across the set's members: a template sent to a member that lacks it
//! ([`NodeSet::replicate`]: the manifest from a member that has it, then the layers the
//! member lacks, checked against their digests), `base` for a member that joins
//! ([`NodeSet::provide_base`]), and older copies dropped when a template changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_domain::TemplateName;
use paddock_node_contract::{Node, NodeError, TemplateInfo};

use crate::NodeSet;

/// The chunks of layers `digests` of `src`, one layer after the other; a layer that cannot be
/// sent ends the stream with its error.
fn send_layers(src: Arc<dyn Node>, digests: Vec<String>) -> paddock_node_contract::LayerStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for digest in digests {
            let mut chunks = match src.export_layer(&digest).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl NodeSet {
    /// Sends template `name` to member `to` in the background (see [`NodeSet::replicate`]).
    pub(crate) fn replicate_in_background(&self, name: &TemplateName, to: &str) {
        let (set, name, to) = (self.clone(), name.clone(), to.to_string());
        tokio::spawn(async move {
            if let Err(e) = set.replicate(&name, &to).await {
                tracing::warn!(template = %name, node = %to, error = %e, "sending a template to a node failed");
            }
        });
    }

    /// Gives member `to` template `name` from a member that has it: the manifest from that
    /// member, then the layers `to` lacks, each checked by `to` against its digest. One
    /// transfer of a template to a node at a time (creates that need it wait for it).
    /// `Ok(None)` when no other member has the template.
    pub async fn replicate(
        &self,
        name: &TemplateName,
        to: &str,
    ) -> Result<Option<TemplateInfo>, NodeError> {
        let lock = self.transfer_lock(name, to);
        let _one = lock.lock().await;
        self.replicate_locked(name, to).await
    }

    /// The lock of transfers of template `name` to member `to`.
    pub(crate) fn transfer_lock(
        &self,
        name: &TemplateName,
        to: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut transfers = self.inner.transfers.lock().expect("transfers lock");
        Arc::clone(transfers.entry((to.to_string(), name.clone())).or_default())
    }

    /// [`NodeSet::replicate`] with its transfer lock held.
    pub(crate) async fn replicate_locked(
        &self,
        name: &TemplateName,
        to: &str,
    ) -> Result<Option<TemplateInfo>, NodeError> {
        let dst = self.member_or_gone(to)?;
        if let Some(t) = dst.template(name).await? {
            return Ok(Some(t));
        }
        let mut source = None;
        for (id, node) in self.members() {
            if id == to {
                continue;
            }
            match node.template_manifest(name).await {
                Ok(Some(m)) => {
                    source = Some((id, node, m));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %id, template = %name, error = %e, "a node could not describe a template")
                }
            }
        }
        let Some((from, src, manifest)) = source else {
            return Ok(None);
        };
        let started = Instant::now();
        let missing = dst.missing_layers(&manifest.digests()).await?;
        let bytes: u64 = manifest
            .layers
            .iter()
            .filter(|l| missing.contains(&l.digest))
            .map(|l| l.size)
            .sum();
        let layers = send_layers(src, missing.clone());
        let info = dst.install_template(manifest, layers).await?;
        tracing::info!(
            template = %name,
            from = %from,
            to = %to,
            layers_sent = missing.len(),
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "template sent to a node"
        );
        Ok(Some(info))
    }

    /// Makes sure member `to` has the default template `base`: from a member that has it, or,
    /// when none has (after waiting [`NodeSet::set_base_grace`] for one to join, as nodes of a
    /// new cluster start together), built by `to` itself. One at a time, so a cluster builds
    /// it once and the nodes that join meanwhile receive it; creates placed on `to` meanwhile
    /// wait for it.
    pub async fn provide_base(&self, to: &str) -> Result<(), NodeError> {
        let base = TemplateName::parse(paddock_template::BASE_STEP)
            .map_err(|e| NodeError::internal(e.to_string()))?;
        let _one = self.inner.base.lock().await;
        let lock = self.transfer_lock(&base, to);
        let _transfer = lock.lock().await;
        let grace = *self.inner.base_grace.lock().expect("grace lock");
        let deadline = Instant::now() + grace;
        loop {
            if self.replicate_locked(&base, to).await?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let dst = self.member_or_gone(to)?;
        tracing::info!(node = %to, "no node has the base template: this one builds it");
        dst.prepare_base().await
    }

    /// How long [`NodeSet::provide_base`] waits for a node with `base` to join before it has
    /// a node build it (default [`BASE_GRACE`]).
    pub fn set_base_grace(&self, grace: Duration) {
        *self.inner.base_grace.lock().expect("grace lock") = grace;
    }

    /// Deletes template `name` on every member but `keep` (their copies are of an older
    /// template of that name; a create there fetches the new one).
    pub(crate) async fn drop_stale(&self, name: &TemplateName, keep: &[String]) {
        self.forget_template(name);
        for (id, node) in self.members() {
            if keep.contains(&id) {
                continue;
            }
            if let Err(e) = node.delete_template(name).await {
                tracing::warn!(node = %id, template = %name, error = %e, "could not drop an older copy of a template");
            }
        }
    }
}
