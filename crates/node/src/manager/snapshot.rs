//! Snapshots of a [`LocalNode`]'s live sandboxes: copying a sandbox's writable layer into a
//! new template stacked on the sandbox's own layers. The template store does the copy; a
//! sandbox paused to disk is brought back for it by the `Node` impl in the parent module.

use paddock_domain::{SandboxId, TemplateName};
use paddock_templates::{Template, TemplateSource};

use super::LocalNode;
use crate::{LocalError, SnapshotMade, TemplateInfo};

impl LocalNode {
    /// Copies the writable layer of a live sandbox into a new template `name` on top of the
    /// sandbox's own layers. A running sandbox is frozen for the copy (without telling the
    /// proxy: requests wait rather than fail) and thawed after it.
    pub(super) async fn snapshot_live(
        &self,
        id: &SandboxId,
        name: &TemplateName,
    ) -> Result<SnapshotMade, LocalError> {
        let was_paused = match self.table().live.get(id) {
            Some(live) => live.paused,
            None => return Err(LocalError::SandboxNotFound(id.clone())),
        };
        let meta = self.read_meta(id)?;
        if meta.layers.is_empty() {
            return Err(LocalError::Unsupported(
                "snapshots of sandboxes started before this version of Paddock",
            ));
        }
        let source = TemplateSource::Snapshot {
            sandbox_id: id.to_string(),
            parent: meta.template.clone(),
        };
        if !was_paused {
            self.runtime.pause(id).await?;
        }
        let started = std::time::Instant::now();
        let parent = Template {
            name: meta.template.clone(),
            layers: meta.layers.clone(),
            resources: meta.resources,
            created_at: chrono::Utc::now(),
            source: source.clone(),
            config: meta.config.clone(),
        };
        let upper = self.state_dir(id).join("disk").join("upper");
        let store = self.templates.clone();
        let target = name.clone();
        let resources = meta.resources;
        let copied = tokio::task::spawn_blocking(move || {
            store.snapshot(&target, &upper, &parent, resources, source)
        })
        .await;
        if !was_paused {
            if let Err(e) = self.runtime.resume(id).await {
                tracing::error!(sandbox_id = %id, error = %e, "thawing after a snapshot failed");
            }
        }
        let template = copied.map_err(|e| LocalError::Io {
            context: "snapshot task failed".into(),
            source: std::io::Error::other(e),
        })??;
        let size_bytes = paddock_templates::layer_size(template.top_layer()).unwrap_or(0);
        tracing::info!(
            sandbox_id = %id,
            template = %name,
            size_bytes,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "snapshot taken"
        );
        Ok(SnapshotMade {
            template: TemplateInfo {
                name: template.name,
                resources: template.resources,
            },
            size_bytes,
        })
    }
}
