//! The template builder: runs a [`Recipe`] on this node and publishes the result as a template.
//!
//! Every step that changes files runs in a sandbox of its own, started (with egress) on the
//! layers the previous step left; the sandbox's writable layer is then copied into a new layer
//! (a snapshot). Each layer is kept as a hidden cache template named by the step's cache key
//! ([`paddock_template::cache_key`]: the parent's key and the step), so an unchanged rebuild
//! finds every step cached and a changed step rebuilds from there on. ENV and USER steps change
//! only the build's state (kept in [`TemplateConfig`]), which later steps and the finished
//! template's sandboxes get. The finalize step publishes the template under its name with that
//! state, its start and ready commands and its resources, after starting one sandbox of it and
//! waiting for the ready check (so a start command that cannot start fails the build, not every
//! later create).
//!
//! Logs go to a [`LogSink`] in order, each with the step it belongs to (`base`, `1`..`N`,
//! `finalize`, as the SDKs expect); a failure names its step ([`BuildError`]).

pub(crate) mod run;

use paddock_domain::TemplateName;

pub use paddock_node_contract::logs::LogLevel;
pub use paddock_templates::TemplateConfig;

pub use paddock_node_contract::build::{
    BuildError, BuildLog, BuildRequest, Built, LogSink, CACHE_PREFIX, IMAGE_PREFIX,
};

/// Deletes the build cache of `store`: every `buildcache-*` template and, with `images`, every
/// `image-*` one. Their layers go with the next collection unless templates or sandboxes use
/// them. Returns the names deleted. A template busy in a build is skipped (logged).
pub fn clear_cache(
    store: &paddock_templates::TemplateStore,
    images: bool,
) -> Result<Vec<TemplateName>, paddock_templates::TemplateError> {
    let mut deleted = Vec::new();
    for name in store.names()? {
        let n = name.as_str();
        if !(n.starts_with(CACHE_PREFIX) || (images && n.starts_with(IMAGE_PREFIX))) {
            continue;
        }
        match store.delete(&name) {
            Ok(true) => deleted.push(name),
            Ok(false) => {}
            Err(paddock_templates::TemplateError::Busy(_)) => {
                tracing::warn!(template = %name, "in use by a build; not deleted")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use paddock_domain::Resources;
    use paddock_templates::{TemplateMeta, TemplateSource, TemplateStore};

    #[test]
    fn clearing_the_cache_keeps_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(dir.path()).expect("store");
        let layer = store.layers_dir().join("00112233445566778899aabb");
        std::fs::create_dir_all(layer.join("etc")).expect("mkdir");
        let publish = |name: &str| {
            let meta = TemplateMeta {
                name: TemplateName::parse(name).expect("name"),
                resources: Resources::default(),
                created_at: Utc::now(),
                source: TemplateSource::Build {
                    base: "template:base".into(),
                    key: "k".into(),
                },
                config: TemplateConfig::default(),
            };
            store
                .publish(std::slice::from_ref(&layer), &meta)
                .expect("publish");
        };
        for name in [
            "app",
            "buildcache-aa",
            "buildcache-bb",
            "image-debian-trixie",
        ] {
            publish(name);
        }
        let mut deleted = clear_cache(&store, false).expect("clear");
        deleted.sort();
        assert_eq!(
            deleted.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["buildcache-aa", "buildcache-bb"]
        );
        assert_eq!(store.list().expect("list").len(), 2);
        assert_eq!(clear_cache(&store, true).expect("clear").len(), 1);
        let left: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(left, ["app"]);
        // The layer is still the template's.
        assert!(layer.exists());
    }
}
