//! The template store: the root filesystems sandboxes start from, kept on the node's disk.
//!
//! Layout: `<root>/<name>/rootfs/` (the tree an overlay mounts read-only) and
//! `<root>/<name>/template.json` ([`TemplateMeta`]). Templates are built in
//! `<root>/.build-<name>-<pid>-<random>` and renamed into place only when complete, so an
//! interrupted build never leaves half a template; leftovers of dead builds are removed by
//! [`TemplateStore::open`]. Builds of one name are serialised by an async mutex per name, so
//! concurrent [`TemplateStore::ensure_base`] calls build once.
//!
//! How templates are made lives in the submodules: [`base`] (debootstrap of Debian bookworm),
//! [`import`] (rootfs tarballs) and [`users`] (the `user` account every template needs). This
//! module does not mount anything; the runtime layers sandboxes on top of [`Template::rootfs`].
//!
//! Every root filesystem is stored shifted into the sandboxes' user-id range
//! ([`paddock_sandbox::idmap`]): builds are shifted before they are committed, and templates
//! made by an older Paddock are shifted when the store opens.

pub mod base;
pub mod import;
pub mod users;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use paddock_domain::{Resources, TemplateName};
use serde::{Deserialize, Serialize};

/// Prefix of the directories builds happen in.
const BUILD_PREFIX: &str = ".build-";
/// Prefix of directories being deleted.
const TRASH_PREFIX: &str = ".trash-";
/// The metadata file of a template.
const META_FILE: &str = "template.json";
/// The root filesystem directory of a template.
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
    },
    /// Imported from a rootfs tarball.
    Import {
        /// The archive's path at import time.
        archive: PathBuf,
        /// Detected format (`tar`, `tar.gz`, `tar.zst`).
        format: String,
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
}

/// A complete template on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Template name.
    pub name: TemplateName,
    /// The root filesystem (mounted read-only as the overlay's lower layer).
    pub rootfs: PathBuf,
    /// Default limits of sandboxes started from it.
    pub resources: Resources,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// How it was made.
    pub source: TemplateSource,
}

/// Progress callback: one human-readable line per call.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// The template store of one node. Cheap to clone; clones share the per-name build locks.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<TemplateName, Arc<tokio::sync::Mutex<()>>>>>,
}

impl TemplateStore {
    /// Opens (creating if needed) a store at `root` and removes what dead builds left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TemplateError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(TemplateError::io(format!(
            "cannot create template dir {}",
            root.display()
        )))?;
        let store = TemplateStore {
            root,
            locks: Arc::default(),
        };
        store.remove_stale()?;
        for template in store.list()? {
            shift(&template.rootfs)?;
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Looks a template up; `None` if it does not exist.
    pub fn get(&self, name: &TemplateName) -> Result<Option<Template>, TemplateError> {
        let dir = self.root.join(name.as_str());
        let meta_path = dir.join(META_FILE);
        let raw = match std::fs::read(&meta_path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(TemplateError::Io {
                    context: format!("cannot read {}", meta_path.display()),
                    source: e,
                })
            }
        };
        let meta: TemplateMeta =
            serde_json::from_slice(&raw).map_err(|source| TemplateError::Metadata {
                path: meta_path.clone(),
                source,
            })?;
        Ok(Some(Template {
            name: name.clone(),
            rootfs: dir.join(ROOTFS_DIR),
            resources: meta.resources,
            created_at: meta.created_at,
            source: meta.source,
        }))
    }

    /// All complete templates, sorted by name. Unreadable entries are logged and skipped.
    pub fn list(&self) -> Result<Vec<Template>, TemplateError> {
        let entries = std::fs::read_dir(&self.root).map_err(TemplateError::io(format!(
            "cannot list {}",
            self.root.display()
        )))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(TemplateError::io(format!(
                "cannot list {}",
                self.root.display()
            )))?;
            let file_name = entry.file_name();
            let Some(raw) = file_name.to_str() else {
                continue;
            };
            let Ok(name) = TemplateName::parse(raw) else {
                continue;
            };
            if name.as_str() != raw {
                continue;
            }
            match self.get(&name) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(template = raw, error = %e, "skipping unreadable template")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a template; `false` if it did not exist. Sandboxes already running from it keep
    /// their mounted view only as long as the files exist, so callers stop them first.
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

    /// Writes the metadata into a finished build and renames it into place atomically.
    fn commit(&self, mut build: BuildDir, meta: &TemplateMeta) -> Result<Template, TemplateError> {
        shift(&build.rootfs())?;
        let meta_path = build.dir.join(META_FILE);
        let json = serde_json::to_vec_pretty(meta).map_err(|source| TemplateError::Metadata {
            path: meta_path.clone(),
            source,
        })?;
        std::fs::write(&meta_path, json).map_err(TemplateError::io(format!(
            "cannot write {}",
            meta_path.display()
        )))?;
        let target = self.root.join(meta.name.as_str());
        match std::fs::rename(&build.dir, &target) {
            Ok(()) => build.committed = true,
            // Another process registered the same name meanwhile (rename onto a non-empty dir).
            Err(e) if target.join(META_FILE).exists() => {
                tracing::info!(template = %meta.name, error = %e, "template appeared concurrently");
                return Err(TemplateError::AlreadyExists(meta.name.clone()));
            }
            Err(e) => {
                return Err(TemplateError::Io {
                    context: format!("cannot move {} into place", target.display()),
                    source: e,
                })
            }
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
                build_owner(rest).is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            } else {
                name.starts_with(TRASH_PREFIX)
            };
            if stale {
                tracing::info!(
                    dir = name,
                    "removing leftover of an interrupted template build"
                );
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = name, error = %e, "cannot remove stale build dir");
                }
            }
        }
        Ok(())
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

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.committed {
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
        };
        let t = store.commit(build, &meta).expect("commit");
        assert_eq!(t.rootfs, tmp.path().join("t1/rootfs"));
        assert_eq!(store.list().expect("list").len(), 1);

        let again = store.start_build(&n).expect("start");
        std::fs::create_dir_all(again.rootfs()).expect("mkdir");
        assert!(matches!(
            store.commit(again, &meta),
            Err(TemplateError::AlreadyExists(_))
        ));
        assert!(store.delete(&n).expect("delete"));
        assert!(!store.delete(&n).expect("delete again"));
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
    }
}
