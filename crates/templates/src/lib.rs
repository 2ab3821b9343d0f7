//! Template storage: the root filesystems sandboxes start from, kept on a node's disk
//! ([`TemplateStore`]). The node agent (`paddock-node`) opens one store and starts sandboxes on
//! its layers; this crate starts no sandbox, runs no build recipe and mounts nothing.
//!
//! Layout: a template is a name, `<root>/<name>/template.json` ([`TemplateMeta`] plus the ids
//! of its layers), over a stack of read-only root-filesystem layers kept in
//! `<root>/.layers/<id>/` ([`layers`]); the overlay of a sandbox mounts them as its lower
//! layers, top first ([`Template::layers`]). Layers are shared: a snapshot is one new layer on
//! top of its parent's layers. Templates are built in `<root>/.build-<name>-<pid>-<random>`
//! (the tree in its `rootfs/`), whose tree is moved into a new layer and which is renamed into
//! place only when complete, so an interrupted build never leaves half a template; leftovers
//! of dead builds are removed by [`TemplateStore::open`]. Builds of one name are serialised by
//! an async mutex per name, so concurrent [`TemplateStore::ensure_base`] calls build once.
//!
//! How templates are made lives in the submodules: [`base`] (debootstrap of Debian bookworm),
//! [`import`] (rootfs tarballs), [`layers`] (snapshots of a sandbox's writable layer, leases
//! and garbage collection of layers, and the migration of the older one-tree-per-template
//! layout), [`copy`] (the tree copier snapshots use) and [`users`] (the `user` account every
//! template needs).
//!
//! Every layer is stored shifted into the sandboxes' user-id range
//! ([`paddock_sandbox::idmap`], whose marker sits beside the layer as
//! `<root>/.layers/.<id>.idmap`): builds are shifted before they are committed, and layers
//! made by an older Paddock are shifted when the store opens.

#![warn(missing_docs)]

pub mod base;
pub mod copy;
pub mod images;
pub mod import;
pub mod layers;
mod publish;
pub mod transfer;
pub mod users;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, TemplateName};
use serde::{Deserialize, Serialize};

pub use layers::{layer_size, GcStats, LayerLease};
pub use transfer::{LayerDigest, Manifest};

/// Prefix of the directories builds happen in.
const BUILD_PREFIX: &str = ".build-";
/// Prefix of directories being deleted.
const TRASH_PREFIX: &str = ".trash-";
/// The metadata file of a template.
const META_FILE: &str = "template.json";
/// The directory a build assembles its root filesystem in (and, in the layout of older
/// Paddock versions, the root filesystem of a template: `<root>/<name>/rootfs`).
const ROOTFS_DIR: &str = "rootfs";

/// Template store failures.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No template of that name exists.
    #[error("template '{0}' not found")]
    NotFound(TemplateName),
    /// A template of that name exists already (delete it first to replace it).
    #[error("template '{0}' already exists; delete it first to replace it")]
    AlreadyExists(TemplateName),
    /// Another operation on the same template is in progress.
    #[error("template '{0}' is being built or imported right now")]
    Busy(TemplateName),
    /// The archive cannot be imported.
    #[error("invalid archive {}: {reason}", path.display())]
    InvalidArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry of the archive could not be unpacked.
    #[error("cannot unpack {entry:?} from {}", path.display())]
    Unpack {
        /// The archive.
        path: PathBuf,
        /// The entry's path inside the archive.
        entry: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The unpacked tree has no `/etc/passwd`.
    #[error("not a root filesystem: {0}")]
    NotARootfs(String),
    /// A host tool the build needs is not installed.
    #[error("{tool} is not installed (install it with: {hint})")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// A build step failed.
    #[error("template build step '{step}' failed: {detail}")]
    Build {
        /// The step (`debootstrap`, `configure`, ...).
        step: String,
        /// Exit status and the last lines of output.
        detail: String,
    },
    /// A template's `template.json` is unreadable.
    #[error("invalid template metadata {}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A template's metadata or layers are not in the shape the store writes.
    #[error("template '{name}' is broken: {reason}")]
    Broken {
        /// The template.
        name: TemplateName,
        /// What is wrong.
        reason: String,
    },
    /// A layer a template or a lease needs is gone.
    #[error("template layer {} is missing", .0.display())]
    LayerMissing(PathBuf),
    /// A path is not a layer of this store.
    #[error("{} is not a layer of the template store", .0.display())]
    NotALayer(PathBuf),
    /// This store has no layer with the digest asked for ([`transfer`]).
    #[error("this node has no template layer {0}")]
    UnknownLayer(String),
    /// A layer received from another node was refused ([`transfer`]); nothing of it is kept.
    #[error("template layer {digest} was refused: {reason}")]
    Transfer {
        /// The digest it was sent as.
        digest: String,
        /// Why.
        reason: String,
    },
    /// An image reference names nothing this node can provide ([`images`]).
    #[error(transparent)]
    Image(#[from] images::ImageRefError),
    /// Filesystem or process I/O failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl TemplateError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
        let context = context.into();
        move |source| TemplateError::Io { context, source }
    }
}

/// How a template was made (recorded in `template.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TemplateSource {
    /// Built by debootstrap.
    Debootstrap {
        /// Debian suite (`bookworm`).
        suite: String,
        /// Mirror the packages came from.
        mirror: String,
        /// Packages added to the minbase variant.
        packages: Vec<String>,
        /// Version of the configuration applied after debootstrap ([`base::RECIPE`]); records
        /// written before it was kept are version 1.
        #[serde(default = "base::first_recipe")]
        recipe: u32,
    },
    /// Imported from a rootfs tarball.
    Import {
        /// The archive's path at import time.
        archive: PathBuf,
        /// Detected format (`tar`, `tar.gz`, `tar.zst`).
        format: String,
    },
    /// Built from a recipe (the template API, `paddock template build`).
    Build {
        /// What the recipe started from (`template:base`, `image:debian:bookworm`).
        base: String,
        /// The cache key of the build's last state (names its content).
        key: String,
    },
    /// A snapshot of a sandbox's files (its writable layer over its template).
    Snapshot {
        /// The sandbox it was taken of.
        sandbox_id: String,
        /// The template the sandbox ran (whose layers lie below the snapshot's).
        parent: TemplateName,
    },
}

/// The content of `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// Template name.
    pub name: TemplateName,
    /// Default limits of sandboxes started from it.
    pub resources: Resources,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// How it was made.
    pub source: TemplateSource,
    /// What sandboxes of it start with (built templates; empty for the others).
    #[serde(default, skip_serializing_if = "TemplateConfig::is_empty")]
    pub config: TemplateConfig,
}

/// What a built template's sandboxes start with, besides its files: the state its recipe left
/// (ENV, USER, WORKDIR) and its start and ready commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateConfig {
    /// Environment variables of every process (a create's own `envVars` win).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Default user of commands and file operations; `None` = `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Default working directory; `None` = the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Started (in the background, as `user`, in `workdir`) in every new sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Run until it exits 0 before a create returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

impl TemplateConfig {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == TemplateConfig::default()
    }
}

/// What `template.json` holds: the metadata and the template's layers.
#[derive(Debug, Clone, Deserialize)]
struct TemplateRecord {
    #[serde(flatten)]
    meta: TemplateMeta,
    /// Layer ids, top first. Empty in the layout of older Paddock versions.
    #[serde(default)]
    layers: Vec<String>,
}

/// [`TemplateRecord`] for writing.
#[derive(Serialize)]
struct TemplateRecordRef<'a> {
    #[serde(flatten)]
    meta: &'a TemplateMeta,
    layers: &'a [String],
}

/// A complete template on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Template name.
    pub name: TemplateName,
    /// The root-filesystem layers (absolute directories, top first, never empty), mounted
    /// read-only as the overlay's lower layers: `lowerdir=<layers[0]>:<layers[1]>:...`.
    pub layers: Vec<PathBuf>,
    /// Default limits of sandboxes started from it.
    pub resources: Resources,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// How it was made.
    pub source: TemplateSource,
    /// What its sandboxes start with.
    pub config: TemplateConfig,
}

impl Template {
    /// The top layer (the one the template's own build or snapshot made).
    pub fn top_layer(&self) -> &Path {
        self.layers.first().map_or(Path::new(""), PathBuf::as_path)
    }
}

/// Progress callback: one human-readable line per call.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// The template store of one node. Cheap to clone; clones share the per-name build locks and
/// the layer leases.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<TemplateName, Arc<tokio::sync::Mutex<()>>>>>,
    leases: Arc<Mutex<layers::LeaseTable>>,
}

impl TemplateStore {
    /// Opens (creating if needed) a store at `root`: removes what dead builds and deletions
    /// left behind, moves templates of the older one-tree-per-template layout into layers
    /// (finishing a move a crash interrupted), and shifts layers that are not yet in the
    /// sandboxes' id range. Does not collect garbage: layers used by sandboxes of an earlier
    /// run are not leased yet (the node calls [`TemplateStore::collect_garbage`] once it has
    /// re-adopted them).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TemplateError> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(TemplateError::io(format!(
            "cannot resolve template dir {}",
            root.display()
        )))?;
        let layers_dir = root.join(layers::LAYERS_DIR);
        std::fs::create_dir_all(&layers_dir).map_err(TemplateError::io(format!(
            "cannot create template dir {}",
            layers_dir.display()
        )))?;
        let store = TemplateStore {
            root,
            locks: Arc::default(),
            leases: Arc::default(),
        };
        store.remove_stale()?;
        store.migrate()?;
        store.shift_layers()?;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Looks a template up; `None` if it does not exist.
    pub fn get(&self, name: &TemplateName) -> Result<Option<Template>, TemplateError> {
        let meta_path = self.root.join(name.as_str()).join(META_FILE);
        let Some(record) = read_record(&meta_path)? else {
            return Ok(None);
        };
        if record.layers.is_empty() {
            return Err(TemplateError::Broken {
                name: name.clone(),
                reason: "it has no layers (the layout of an older Paddock; opening the store \
                         again converts it)"
                    .into(),
            });
        }
        let mut layers = Vec::with_capacity(record.layers.len());
        for id in &record.layers {
            if !layers::is_layer_id(id) {
                return Err(TemplateError::Broken {
                    name: name.clone(),
                    reason: format!("invalid layer id {id:?}"),
                });
            }
            layers.push(self.layer_path(id));
        }
        Ok(Some(Template {
            name: name.clone(),
            layers,
            resources: record.meta.resources,
            created_at: record.meta.created_at,
            source: record.meta.source,
            config: record.meta.config,
        }))
    }

    /// All complete templates, sorted by name. Unreadable entries are logged and skipped.
    pub fn list(&self) -> Result<Vec<Template>, TemplateError> {
        let mut out = Vec::new();
        for name in self.names()? {
            match self.get(&name) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(template = %name, error = %e, "skipping unreadable template")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the store's entries that are template directories by their name (valid,
    /// canonical template names; build, trash and layer directories are not), unsorted.
    pub fn names(&self) -> Result<Vec<TemplateName>, TemplateError> {
        let list_error = || TemplateError::io(format!("cannot list {}", self.root.display()));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(list_error())? {
            let file_name = entry.map_err(list_error())?.file_name();
            let Some(raw) = file_name.to_str() else {
                continue;
            };
            match TemplateName::parse(raw) {
                Ok(name) if name.as_str() == raw => out.push(name),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Deletes a template's name; `false` if it did not exist. Then collects garbage: layers
    /// no other template references and no [`LayerLease`] holds are removed, so sandboxes
    /// running from the template (which hold leases) keep their files.
    pub fn delete(&self, name: &TemplateName) -> Result<bool, TemplateError> {
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(TemplateError::Busy(name.clone()));
        };
        let dir = self.root.join(name.as_str());
        let trash = self
            .root
            .join(format!("{TRASH_PREFIX}{}-{}", name, unique_suffix()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(TemplateError::Io {
                    context: format!("cannot remove template {}", dir.display()),
                    source: e,
                })
            }
        }
        std::fs::remove_dir_all(&trash).map_err(TemplateError::io(format!(
            "cannot remove {}",
            trash.display()
        )))?;
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(template = %name, error = %e, "cannot collect unused template layers");
        }
        Ok(true)
    }

    /// The async lock that serialises builds and imports of one name.
    fn lock_for(&self, name: &TemplateName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(name.clone()).or_default().clone()
    }

    /// Starts a build directory for `name`; it is removed again unless committed.
    fn start_build(&self, name: &TemplateName) -> Result<BuildDir, TemplateError> {
        let dir = self.root.join(format!(
            "{BUILD_PREFIX}{}-{}-{}",
            name,
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir(&dir).map_err(TemplateError::io(format!(
            "cannot create build dir {}",
            dir.display()
        )))?;
        Ok(BuildDir {
            dir,
            committed: false,
        })
    }

    /// Commits a finished build as a template with one layer: its `rootfs`.
    fn commit(&self, build: BuildDir, meta: &TemplateMeta) -> Result<Template, TemplateError> {
        self.commit_layers(build, meta, &[])
    }

    /// Commits a finished build: shifts its `rootfs`, moves it into a new layer and renames
    /// the build into place as a template whose layers are the new one over `below` (layer
    /// ids, top first; the caller keeps them leased).
    ///
    /// The build's `template.json` names the new layer before the layer exists, and the layer
    /// is leased until the template is in place, so garbage collection never sees it
    /// unreferenced; a crash before the final rename leaves a dead build (removed by
    /// [`TemplateStore::open`]) and an unreferenced layer (removed by the next collection).
    fn commit_layers(
        &self,
        mut build: BuildDir,
        meta: &TemplateMeta,
        below: &[String],
    ) -> Result<Template, TemplateError> {
        let rootfs = build.rootfs();
        shift(&rootfs)?;
        let id = self.new_layer_id()?;
        let lease = self.lease_ids(vec![id.clone()]);
        let mut ids = Vec::with_capacity(below.len() + 1);
        ids.push(id.clone());
        ids.extend_from_slice(below);
        write_record(&build.dir.join(META_FILE), meta, &ids)?;
        let layer = self.layer_path(&id);
        std::fs::rename(&rootfs, &layer).map_err(TemplateError::io(format!(
            "cannot move {} to {}",
            rootfs.display(),
            layer.display()
        )))?;
        let moved_marker = move_marker(&rootfs, &layer);
        let target = self.root.join(meta.name.as_str());
        let renamed = moved_marker.and_then(|()| {
            std::fs::rename(&build.dir, &target).map_err(|e| {
                if target.join(META_FILE).exists() {
                    // Another process registered the same name meanwhile (rename onto a
                    // non-empty dir).
                    tracing::info!(template = %meta.name, error = %e, "template appeared concurrently");
                    TemplateError::AlreadyExists(meta.name.clone())
                } else {
                    TemplateError::Io {
                        context: format!("cannot move {} into place", target.display()),
                        source: e,
                    }
                }
            })
        });
        if let Err(e) = renamed {
            self.discard_layer(&id);
            return Err(e);
        }
        build.committed = true;
        drop(lease);
        match layer_size(&layer) {
            Ok(bytes) => tracing::info!(
                template = %meta.name,
                layers = ids.len(),
                top_layer = %id,
                top_layer_bytes = bytes,
                "template committed"
            ),
            Err(e) => tracing::info!(
                template = %meta.name,
                layers = ids.len(),
                top_layer = %id,
                error = %e,
                "template committed (size of its top layer unknown)"
            ),
        }
        self.get(&meta.name)?
            .ok_or_else(|| TemplateError::NotFound(meta.name.clone()))
    }

    /// Removes build and trash directories whose process is gone.
    fn remove_stale(&self) -> Result<(), TemplateError> {
        let entries = std::fs::read_dir(&self.root).map_err(TemplateError::io(format!(
            "cannot list {}",
            self.root.display()
        )))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if let Some(rest) = name.strip_prefix(BUILD_PREFIX) {
                !build_is_live(rest)
            } else {
                name.starts_with(TRASH_PREFIX)
            };
            if stale {
                tracing::info!(
                    dir = name,
                    "removing leftover of an interrupted template build"
                );
                unmount_below(&entry.path());
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = name, error = %e, "cannot remove stale build dir");
                }
            }
        }
        Ok(())
    }
}

/// Reads a `template.json`; `None` if there is none.
fn read_record(path: &Path) -> Result<Option<TemplateRecord>, TemplateError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(TemplateError::Io {
                context: format!("cannot read {}", path.display()),
                source: e,
            })
        }
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|source| TemplateError::Metadata {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a `template.json` atomically (a synced temporary file renamed over it).
fn write_record(path: &Path, meta: &TemplateMeta, layers: &[String]) -> Result<(), TemplateError> {
    let json =
        serde_json::to_vec_pretty(&TemplateRecordRef { meta, layers }).map_err(|source| {
            TemplateError::Metadata {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let tmp = tmp_record_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(TemplateError::io(format!(
        "cannot write {}",
        path.display()
    )))
}

/// Where [`write_record`] writes before renaming.
fn tmp_record_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{META_FILE}.tmp"))
}

/// Moves the id-shift marker of the tree that was at `from` to the tree now at `to`
/// (nothing to do if `from` had none).
fn move_marker(from: &Path, to: &Path) -> Result<(), TemplateError> {
    let (Some(old), Some(new)) = (
        paddock_sandbox::idmap::marker_path(from),
        paddock_sandbox::idmap::marker_path(to),
    ) else {
        return Ok(());
    };
    match std::fs::rename(&old, &new) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TemplateError::Io {
            context: format!("cannot move {} to {}", old.display(), new.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Shifts a root filesystem into the sandboxes' id range unless it is already.
fn shift(rootfs: &Path) -> Result<(), TemplateError> {
    let map = paddock_sandbox::idmap::IdMap::DEFAULT;
    if paddock_sandbox::idmap::is_shifted(rootfs, &map) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let stats =
        paddock_sandbox::idmap::shift_tree(rootfs, &map).map_err(TemplateError::io(format!(
            "cannot shift {} into the sandbox id range",
            rootfs.display()
        )))?;
    tracing::info!(
        rootfs = %rootfs.display(),
        shifted = stats.shifted,
        clamped = stats.clamped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "template shifted into the sandbox id range"
    );
    Ok(())
}

/// The pid in `<name>-<pid>-<random>` (the part after `.build-`).
fn build_owner(rest: &str) -> Option<u32> {
    let mut parts = rest.rsplitn(3, '-');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether the process that owns build `<name>-<pid>-<random>` (the part after `.build-`)
/// still runs.
fn build_is_live(rest: &str) -> bool {
    build_owner(rest).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// A random-enough suffix for build and trash directories.
fn unique_suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A build in progress; its directory is removed on drop unless it was committed.
#[derive(Debug)]
struct BuildDir {
    dir: PathBuf,
    committed: bool,
}

impl BuildDir {
    /// Where the root filesystem is assembled.
    fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS_DIR)
    }
}

/// Detaches every mount below `dir` (deepest first): what a build interrupted mid-way left
/// mounted in its tree (debootstrap mounts `/proc` in its target), which would otherwise keep
/// the build directory from being removed, then and at every later start.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::info!(mount = %point.display(), "unmounted what an interrupted build left")
            }
            Err(e) => {
                tracing::warn!(mount = %point.display(), error = %e, "cannot unmount what an interrupted build left")
            }
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.committed {
            unmount_below(&self.dir);
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove build dir");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_build_leaves_no_mount_and_no_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TemplateStore::open(dir.path()).expect("store");
        let build = store.start_build(&name("half")).expect("build");
        let proc_dir = build.rootfs().join("proc");
        std::fs::create_dir_all(&proc_dir).expect("mkdir");
        nix::mount::mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount proc as debootstrap does");
        let build_dir = build.dir.clone();
        drop(build);
        assert!(!build_dir.exists(), "the build dir is removed");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(build_dir.to_str().expect("utf-8")),
            "nothing left mounted"
        );
    }

    fn name(s: &str) -> TemplateName {
        TemplateName::parse(s).expect("valid name")
    }

    #[tokio::test]
    async fn delete_during_a_build_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(tmp.path()).expect("open");
        let n = name("busy");
        let lock = store.clone().lock_for(&n);
        let guard = lock.lock().await;
        assert!(matches!(store.delete(&n), Err(TemplateError::Busy(_))));
        drop(guard);
        assert!(!store.delete(&n).expect("delete"));
    }

    #[test]
    fn build_owner_parses_pid() {
        assert_eq!(build_owner("base-1234-abcdef"), Some(1234));
        assert_eq!(build_owner("my-tpl-42-ff"), Some(42));
        assert_eq!(build_owner("garbage"), None);
    }

    #[test]
    fn open_removes_dead_builds_but_keeps_live_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dead = tmp.path().join(".build-base-999999999-aa");
        let live = tmp
            .path()
            .join(format!(".build-base-{}-bb", std::process::id()));
        let trash = tmp.path().join(".trash-x-cc");
        for d in [&dead, &live, &trash] {
            std::fs::create_dir_all(d.join("rootfs")).expect("mkdir");
        }
        let store = TemplateStore::open(tmp.path()).expect("open");
        assert!(!dead.exists());
        assert!(!trash.exists());
        assert!(live.exists());
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn uncommitted_build_is_removed_and_commit_is_atomic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(tmp.path()).expect("open");
        let n = name("t1");
        let build = store.start_build(&n).expect("start");
        let dir = build.dir.clone();
        drop(build);
        assert!(!dir.exists());
        assert_eq!(store.get(&n).expect("get"), None);

        let build = store.start_build(&n).expect("start");
        std::fs::create_dir_all(build.rootfs().join("etc")).expect("mkdir");
        let meta = TemplateMeta {
            name: n.clone(),
            resources: Resources::default(),
            created_at: Utc::now(),
            source: TemplateSource::Import {
                archive: "/x.tar".into(),
                format: "tar".into(),
            },
            config: Default::default(),
        };
        let t = store.commit(build, &meta).expect("commit");
        assert_eq!(t.layers.len(), 1);
        assert_eq!(
            t.top_layer().parent(),
            Some(tmp.path().join(".layers").as_path())
        );
        assert!(t.top_layer().join("etc").is_dir());
        assert!(paddock_sandbox::idmap::is_shifted(
            t.top_layer(),
            &paddock_sandbox::idmap::IdMap::DEFAULT
        ));
        assert_eq!(store.list().expect("list").len(), 1);

        let again = store.start_build(&n).expect("start");
        std::fs::create_dir_all(again.rootfs()).expect("mkdir");
        assert!(matches!(
            store.commit(again, &meta),
            Err(TemplateError::AlreadyExists(_))
        ));
        assert!(store.delete(&n).expect("delete"));
        assert!(!store.delete(&n).expect("delete again"));
        // The name, its layer and the layer's marker are gone; only the layer store is left.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, [".layers"]);
        assert_eq!(
            std::fs::read_dir(tmp.path().join(".layers"))
                .expect("ls")
                .count(),
            0
        );
    }

    #[test]
    fn template_json_keeps_the_metadata_and_adds_layers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(META_FILE);
        let meta = TemplateMeta {
            name: name("snap"),
            resources: Resources::default(),
            created_at: Utc::now(),
            source: TemplateSource::Snapshot {
                sandbox_id: "i1234".into(),
                parent: name("base"),
            },
            config: Default::default(),
        };
        let ids = vec!["a".repeat(24), "b".repeat(24)];
        write_record(&path, &meta, &ids).expect("write");
        assert!(!tmp_record_path(&path).exists());
        let record = read_record(&path).expect("read").expect("exists");
        assert_eq!(record.meta, meta);
        assert_eq!(record.layers, ids);
        // What an older Paddock wrote (and older readers read) is plain metadata.
        let plain: TemplateMeta =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("old reader");
        assert_eq!(plain, meta);
        std::fs::write(&path, serde_json::to_vec(&meta).expect("json")).expect("write");
        let old = read_record(&path).expect("read").expect("exists");
        assert!(old.layers.is_empty());
        assert!(read_record(&tmp.path().join("none"))
            .expect("read")
            .is_none());
    }
}
