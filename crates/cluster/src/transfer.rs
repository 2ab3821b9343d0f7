//! Templates across the set's members: a template sent to a member that lacks it
//! ([`NodeSet::replicate`]: the manifest from the catalog or a member that has it, then the
//! layers the member lacks, checked against their digests), `base` for a member that joins
//! ([`NodeSet::provide_base`]), templates archived in the control plane's catalog
//! ([`NodeSet::archive`]), and older copies dropped when a template changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_domain::TemplateName;
use paddock_node_contract::{Node, NodeError, TemplateInfo, TemplateManifest};

use crate::catalog::{Catalog, CatalogEntry};
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

/// Failed transfers of one template to one node, in a row.
#[derive(Debug, Clone)]
pub(crate) struct Failures {
    count: u32,
    last: String,
    retry_at: Instant,
}

/// Has `dst` (member `to`) install `manifest`, sent `layers` (the `missing` ones) from `from`,
/// and logs what travelled.
async fn install(
    dst: &Arc<dyn Node>,
    manifest: TemplateManifest,
    missing: Vec<String>,
    layers: paddock_node_contract::LayerStream,
    from: &str,
    to: &str,
    started: Instant,
) -> Result<TemplateInfo, NodeError> {
    let name = manifest.name.clone();
    let bytes: u64 = manifest
        .layers
        .iter()
        .filter(|l| missing.contains(&l.digest))
        .map(|l| l.size)
        .sum();
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
    Ok(info)
}

impl NodeSet {
    /// The failures in a row of transfers of `name` to `to`, while the next must wait.
    fn backing_off(&self, name: &TemplateName, to: &str) -> Option<Failures> {
        let failures = self.inner.transfer_failures.lock().expect("failures lock");
        failures
            .get(&(to.to_string(), name.clone()))
            .filter(|f| Instant::now() < f.retry_at)
            .cloned()
    }

    /// Counts the outcome of a transfer of `name` to `to`.
    fn transfer_ended(
        &self,
        name: &TemplateName,
        to: &str,
        result: &Result<Option<TemplateInfo>, NodeError>,
    ) {
        let key = (to.to_string(), name.clone());
        let mut failures = self.inner.transfer_failures.lock().expect("failures lock");
        match result {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(e) => {
                let count = failures.get(&key).map_or(1, |f| f.count.saturating_add(1));
                let (first, most) = crate::TRANSFER_BACKOFF;
                let wait = first.saturating_mul(1 << (count - 1).min(16)).min(most);
                failures.insert(
                    key,
                    Failures {
                        count,
                        last: e.message.clone(),
                        retry_at: Instant::now() + wait,
                    },
                );
            }
        }
    }

    /// Sends template `name` to member `to` in the background (see [`NodeSet::replicate`]);
    /// nothing while transfers of it to `to` back off after failures.
    pub(crate) fn replicate_in_background(&self, name: &TemplateName, to: &str) {
        if self.backing_off(name, to).is_some() {
            return;
        }
        let (set, name, to) = (self.clone(), name.clone(), to.to_string());
        tokio::spawn(async move {
            if let Err(e) = set.replicate(&name, &to).await {
                tracing::warn!(template = %name, node = %to, error = %e, "sending a template to a node failed");
            }
        });
    }

    /// Gives member `to` template `name` from a member that has it: the manifest from that
    /// member, then the layers `to` lacks, each checked by `to` against its digest. One
    /// transfer of a template to a node at a time (creates that need it wait for it). After a
    /// failure, the next transfer of it to `to` waits ([`TRANSFER_BACKOFF`]): meanwhile this
    /// fails at once with the last error. `Ok(None)` when no other member has the template.
    ///
    /// [`TRANSFER_BACKOFF`]: crate::TRANSFER_BACKOFF
    pub async fn replicate(
        &self,
        name: &TemplateName,
        to: &str,
    ) -> Result<Option<TemplateInfo>, NodeError> {
        let lock = self.transfer_lock(name, to);
        let _one = lock.lock().await;
        if let Some(f) = self.backing_off(name, to) {
            return Err(NodeError::unavailable(format!(
                "sending template '{name}' to node {to} failed {} time(s) in a row (last: {}); next try in {} ms",
                f.count,
                f.last,
                f.retry_at
                    .saturating_duration_since(Instant::now())
                    .as_millis()
            )));
        }
        let result = self.replicate_locked(name, to).await;
        self.transfer_ended(name, to, &result);
        result
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
        if let Some((catalog, entry)) = self.catalog_entry(name).await {
            match self.install_from_catalog(&*catalog, entry, to, &dst).await {
                Ok(Some(info)) => return Ok(Some(info)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(template = %name, node = %to, error = %e, "sending a template from the catalog failed; trying the nodes")
                }
            }
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
        let layers = send_layers(src, missing.clone());
        install(&dst, manifest, missing, layers, &from, to, started)
            .await
            .map(Some)
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
        dst.prepare_base().await?;
        self.archive_in_background(&base, to);
        Ok(())
    }

    /// How long [`NodeSet::provide_base`] waits for a node with `base` to join before it has
    /// a node build it (default [`BASE_GRACE`]).
    pub fn set_base_grace(&self, grace: Duration) {
        *self.inner.base_grace.lock().expect("grace lock") = grace;
    }

    /// Deletes template `name` on every member but `keep` (their copies are of an older
    /// template of that name; a create there fetches the new one), and from the catalog.
    pub(crate) async fn drop_stale(&self, name: &TemplateName, keep: &[String]) {
        self.forget_template(name);
        self.uncatalog(name).await;
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

impl NodeSet {
    /// Keeps the cluster's templates in `catalog` from now on: each template made through the
    /// set is archived there, members that lack a template are sent it from there first, and
    /// it answers for templates no reachable member has.
    pub fn set_catalog(&self, catalog: Arc<dyn Catalog>) {
        *self.inner.catalog.write().expect("catalog lock") = Some(catalog);
    }

    pub(crate) fn catalog(&self) -> Option<Arc<dyn Catalog>> {
        self.inner.catalog.read().expect("catalog lock").clone()
    }

    fn generation(&self, name: &TemplateName) -> u64 {
        self.inner
            .generations
            .lock()
            .expect("generations lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// The catalog's entry for `name`, if there is a catalog and it has one (a catalog that
    /// cannot be read is logged and counts as having none: the members still answer).
    pub(crate) async fn catalog_entry(
        &self,
        name: &TemplateName,
    ) -> Option<(Arc<dyn Catalog>, CatalogEntry)> {
        let catalog = self.catalog()?;
        match catalog.entry(name).await {
            Ok(Some(entry)) => Some((catalog, entry)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(template = %name, error = %e, "the template catalog could not be read");
                None
            }
        }
    }

    /// Every template the catalog records (none without one, or when it cannot be read).
    pub(crate) async fn catalog_entries(&self) -> Vec<CatalogEntry> {
        let Some(catalog) = self.catalog() else {
            return Vec::new();
        };
        catalog.entries().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the template catalog could not be listed");
            Vec::new()
        })
    }

    /// Sends member `to` the catalog's copy of a template: the layers it lacks, from the
    /// catalog's store. `Ok(None)` when the catalog lacks one of them.
    async fn install_from_catalog(
        &self,
        catalog: &dyn Catalog,
        entry: CatalogEntry,
        to: &str,
        dst: &Arc<dyn Node>,
    ) -> Result<Option<TemplateInfo>, NodeError> {
        let started = Instant::now();
        let missing = dst.missing_layers(&entry.digests()).await?;
        if !catalog.missing_layers(&missing).await?.is_empty() {
            return Ok(None);
        }
        let layers = catalog.open_layers(missing.clone()).await?;
        install(
            dst,
            entry.manifest(),
            missing,
            layers,
            "catalog",
            to,
            started,
        )
        .await
        .map(Some)
    }

    /// Archives template `name` from member `from` in the background (see
    /// [`NodeSet::archive`]).
    pub(crate) fn archive_in_background(&self, name: &TemplateName, from: &str) {
        if self.catalog().is_none() {
            return;
        }
        let (set, name, from) = (self.clone(), name.clone(), from.to_string());
        tokio::spawn(async move {
            if let Err(e) = set.archive(&name, &from).await {
                tracing::warn!(template = %name, node = %from, error = %e, "archiving a template in the catalog failed");
            }
        });
    }

    /// Records template `name` as member `from` has it in the catalog: the layers the catalog
    /// lacks (checked against their digests), then the entry. Not recorded (`Ok(false)`) when
    /// there is no catalog, `from` does not have it, or it changed through the set meanwhile
    /// (the change archives the new one).
    pub async fn archive(&self, name: &TemplateName, from: &str) -> Result<bool, NodeError> {
        let Some(catalog) = self.catalog() else {
            return Ok(false);
        };
        let generation = self.generation(name);
        let _one = self.inner.archiving.lock().await;
        let started = Instant::now();
        let src = self.member_or_gone(from)?;
        let Some(manifest) = src.template_manifest(name).await? else {
            return Ok(false);
        };
        let Some(summary) = src
            .list_templates()
            .await?
            .into_iter()
            .find(|t| &t.name == name)
        else {
            return Ok(false);
        };
        let missing = catalog.missing_layers(&manifest.digests()).await?;
        let bytes = catalog
            .put_layers(paddock_node_contract::bounded(
                &manifest.layers,
                send_layers(Arc::clone(&src), missing.clone()),
            ))
            .await?;
        if self.generation(name) != generation {
            tracing::info!(template = %name, "the template changed while it was archived; not recorded");
            return Ok(false);
        }
        catalog
            .put_entry(&CatalogEntry {
                summary,
                meta_json: manifest.meta_json,
                layers: manifest.layers,
            })
            .await?;
        tracing::info!(
            template = %name,
            from = %from,
            layers_stored = missing.len(),
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "template archived in the catalog"
        );
        Ok(true)
    }

    /// Archives every template member `from` has that the catalog does not record (a node of
    /// a cluster that ran before it had a catalog, or that made templates while the control
    /// plane was away). Answers how many it recorded.
    pub async fn archive_missing(&self, from: &str) -> Result<usize, NodeError> {
        if self.catalog().is_none() {
            return Ok(0);
        }
        let src = self.member_or_gone(from)?;
        let recorded: std::collections::HashSet<TemplateName> = self
            .catalog_entries()
            .await
            .into_iter()
            .map(|e| e.summary.name)
            .collect();
        let mut archived = 0;
        for t in src.list_templates().await? {
            if !recorded.contains(&t.name) && self.archive(&t.name, from).await? {
                archived += 1;
            }
        }
        Ok(archived)
    }

    /// Forgets template `name` in the catalog (it changed or went); its layers no template
    /// uses any more are collected in the background. Whether the catalog had it.
    pub(crate) async fn uncatalog(&self, name: &TemplateName) -> bool {
        let Some(catalog) = self.catalog() else {
            return false;
        };
        match catalog.remove_entry(name).await {
            Ok(false) => false,
            Ok(true) => {
                let set = self.clone();
                tokio::spawn(async move {
                    let _one = set.inner.archiving.lock().await;
                    match catalog.collect().await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(layers = n, "unused layers removed from the catalog")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "collecting the catalog's unused layers failed")
                        }
                    }
                });
                true
            }
            Err(e) => {
                tracing::warn!(template = %name, error = %e, "could not forget a template in the catalog");
                false
            }
        }
    }
}
