//! Publishing a template over layers that exist already: how a build gives its result a name.
//! No files are copied; the template's `template.json` names the layers and carries the new
//! metadata. Replacing a template is one atomic rename of its `template.json`, so a reader sees
//! the old template or the new one, never neither; sandboxes running on the old one keep their
//! layers through their leases.

use std::path::PathBuf;

use paddock_domain::TemplateName;

use super::{write_record, Template, TemplateError, TemplateMeta, TemplateStore, META_FILE};

impl TemplateStore {
    /// Makes `meta.name` a template over `layers` (directories of this store's layers, top
    /// first), replacing the template of that name if there is one. Fails with
    /// [`TemplateError::NotALayer`] for a directory that is not a layer of this store,
    /// [`TemplateError::LayerMissing`] if one is gone and [`TemplateError::Busy`] while another
    /// operation on the name runs.
    pub fn publish(
        &self,
        layers: &[PathBuf],
        meta: &TemplateMeta,
    ) -> Result<Template, TemplateError> {
        let lock = self.lock_for(&meta.name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(TemplateError::Busy(meta.name.clone()));
        };
        let layers_dir = self.layers_dir();
        let mut ids = Vec::with_capacity(layers.len());
        for layer in layers {
            let id = layer
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|id| super::layers::is_layer_id(id) && layer.parent() == Some(&layers_dir))
                .ok_or_else(|| TemplateError::NotALayer(layer.clone()))?;
            ids.push(id.to_string());
        }
        if ids.is_empty() {
            return Err(TemplateError::Broken {
                name: meta.name.clone(),
                reason: "a template needs at least one layer".into(),
            });
        }
        // Held until the template names the layers, so a collection cannot take them.
        let lease = self.lease_layers(layers)?;
        let dir = self.root.join(meta.name.as_str());
        if dir.join(META_FILE).exists() {
            write_record(&dir.join(META_FILE), meta, &ids)?;
        } else {
            let mut build = self.start_build(&meta.name)?;
            write_record(&build.dir.join(META_FILE), meta, &ids)?;
            std::fs::rename(&build.dir, &dir).map_err(TemplateError::io(format!(
                "cannot move {} into place",
                dir.display()
            )))?;
            build.committed = true;
        }
        drop(lease);
        tracing::info!(template = %meta.name, layers = ids.len(), "template published");
        self.get(&meta.name)?
            .ok_or_else(|| TemplateError::NotFound(meta.name.clone()))
    }
}

impl TemplateStore {
    /// Makes `to` a template over the layers of template `from`, with `from`'s limits, source
    /// and start state (its creation time is now), replacing a template named `to`; no files
    /// are copied ([`TemplateStore::publish`]). `None` when `from` does not exist.
    pub fn copy(
        &self,
        from: &TemplateName,
        to: &TemplateName,
    ) -> Result<Option<Template>, TemplateError> {
        let Some(source) = self.get(from)? else {
            return Ok(None);
        };
        let meta = TemplateMeta {
            name: to.clone(),
            resources: source.resources,
            created_at: chrono::Utc::now(),
            source: source.source,
            config: source.config,
        };
        self.publish(&source.layers, &meta).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TemplateConfig, TemplateSource};
    use super::*;
    use paddock_domain::Resources;

    fn meta(name: &str, cmd: &str) -> TemplateMeta {
        TemplateMeta {
            name: TemplateName::parse(name).expect("ok"),
            resources: Resources::default(),
            created_at: chrono::Utc::now(),
            source: TemplateSource::Build {
                base: "template:base".into(),
                key: "k".into(),
            },
            config: TemplateConfig {
                start_cmd: Some(cmd.into()),
                ..TemplateConfig::default()
            },
        }
    }

    #[test]
    fn publishes_and_replaces_over_existing_layers() {
        let dir = tempfile::tempdir().expect("ok");
        let store = TemplateStore::open(dir.path()).expect("ok");
        let id = store.new_layer_id().expect("ok");
        let layer = store.layer_path(&id);
        std::fs::create_dir_all(layer.join("etc")).expect("ok");
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("ok");

        let t = store
            .publish(std::slice::from_ref(&layer), &meta("app", "one"))
            .expect("ok");
        assert_eq!(t.layers, vec![layer.clone()]);
        assert_eq!(t.config.start_cmd.as_deref(), Some("one"));
        let t = store
            .publish(std::slice::from_ref(&layer), &meta("app", "two"))
            .expect("ok");
        assert_eq!(t.config.start_cmd.as_deref(), Some("two"));
        assert_eq!(store.list().expect("ok").len(), 1);

        // The layer is referenced: a collection keeps it.
        store.collect_garbage().expect("ok");
        assert!(layer.exists());
        // Not a layer of the store.
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir(&outside).expect("ok");
        assert!(matches!(
            store.publish(&[outside], &meta("other", "x")),
            Err(TemplateError::NotALayer(_))
        ));
        // A missing layer.
        let gone = store.layer_path(&store.new_layer_id().expect("ok"));
        assert!(store.publish(&[gone], &meta("other", "x")).is_err());
        assert!(store
            .get(&TemplateName::parse("other").expect("ok"))
            .expect("ok")
            .is_none());
    }

    #[test]
    fn copies_share_the_layers_and_outlive_their_source() {
        let dir = tempfile::tempdir().expect("ok");
        let store = TemplateStore::open(dir.path()).expect("ok");
        let id = store.new_layer_id().expect("ok");
        let layer = store.layer_path(&id);
        std::fs::create_dir_all(layer.join("etc")).expect("ok");
        store
            .publish(std::slice::from_ref(&layer), &meta("app", "serve"))
            .expect("ok");
        let (app, copy) = (
            TemplateName::parse("app").expect("ok"),
            TemplateName::parse("build-0123").expect("ok"),
        );
        let t = store.copy(&app, &copy).expect("ok").expect("copied");
        assert_eq!(
            (t.name.clone(), t.layers.clone()),
            (copy.clone(), vec![layer.clone()])
        );
        assert_eq!(t.config.start_cmd.as_deref(), Some("serve"));
        // The source's name can go: the copy keeps the layer through a collection.
        assert!(store.delete(&app).expect("ok"));
        store.collect_garbage().expect("ok");
        assert!(layer.exists());
        assert!(store.get(&copy).expect("ok").is_some());
        assert!(store.copy(&app, &copy).expect("ok").is_none(), "no source");
    }
}
