//! Root-filesystem layers of the template store: where they live, who uses them, when they
//! go, snapshots, and the move from the older layout.
//!
//! Every layer is a read-only tree `<root>/.layers/<id>/` (`id`: 24 random hex digits), with
//! its id-shift marker beside it (`<root>/.layers/.<id>.idmap`, see
//! [`paddock_sandbox::idmap::marker_path`]). Templates name their layers, top first, in
//! `template.json`; several templates share a layer (a snapshot's layers are its own over its
//! parent's).
//!
//! A layer is removed only by [`TemplateStore::collect_garbage`], and only when no template
//! (nor a live build) names it and no [`LayerLease`] holds it. Sandboxes hold a lease for as
//! long as their overlay uses the layers ([`TemplateStore::lease`] at create,
//! [`TemplateStore::lease_layers`] when a restarted node re-adopts them). Leases are counted in
//! the memory of one process (shared by clones of the store; the lease table's mutex makes a
//! lookup-and-lease atomic with respect to a collection), and a process that holds any lease
//! on a layer also holds a shared `flock` on `<root>/.layers/.<id>.lease`: a collection in
//! another process (a second server, or `paddock template delete`, over the same directory)
//! removes a layer only while it holds that file's lock exclusively, so it never removes a
//! layer a running sandbox of any process uses, and the kernel drops the locks of a process
//! that dies. A collection renames a doomed layer to
//! `<root>/.trash-layer-<id>-<random>` first and removes it then, so a crash leaves only trash,
//! which [`TemplateStore::open`] removes.
//!
//! [`TemplateStore::snapshot`] copies a sandbox's overlay upper directory ([`super::copy`])
//! into a new layer over its template's layers.
//!
//! Templates of the older layout (`<root>/<name>/rootfs/`, no layers in `template.json`) are
//! moved when the store opens, in steps that each leave a store the next open finishes:
//! `template.json` is rewritten (atomically) to name a new layer id first, then the tree is
//! renamed to the layer, then its marker follows it (so it is not shifted again).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use paddock_domain::{Resources, TemplateName};
use serde::Deserialize;

use super::copy::{copy_tree, CopyOptions};
use super::{
    build_is_live, move_marker, read_record, shift, tmp_record_path, unique_suffix, write_record,
    Template, TemplateError, TemplateMeta, TemplateSource, TemplateStore, BUILD_PREFIX, META_FILE,
    ROOTFS_DIR, TRASH_PREFIX,
};

/// The directory (below the store's root) layers live in.
pub(super) const LAYERS_DIR: &str = ".layers";
/// Random bytes of a layer id (hex-encoded: 24 digits).
const LAYER_ID_BYTES: usize = 12;

/// Whether `s` can be a layer id: 16 to 64 lowercase hex digits (random ids have 24; content
/// addresses, later, 64).
pub(super) fn is_layer_id(s: &str) -> bool {
    (16..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The layer id in a marker's file name (`.<id>.idmap`).
fn marker_id(file_name: &str) -> Option<&str> {
    let id = file_name.strip_prefix('.')?.strip_suffix(".idmap")?;
    is_layer_id(id).then_some(id)
}

/// The lock file of layer `id` in `layers_dir` (see the module docs).
fn lease_file(layers_dir: &Path, id: &str) -> PathBuf {
    layers_dir.join(format!(".{id}.lease"))
}

/// The layer id in a lease file's name (`.<id>.lease`).
fn lease_file_id(file_name: &str) -> Option<&str> {
    let id = file_name.strip_prefix('.')?.strip_suffix(".lease")?;
    is_layer_id(id).then_some(id)
}

/// Opens (creating) the lock file of layer `id` and locks it: shared for a lease, exclusive
/// (without waiting) for a collection. `Ok(None)`: another process holds a conflicting lock.
fn lock_layer(
    layers_dir: &Path,
    id: &str,
    exclusive: bool,
) -> io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(lease_file(layers_dir, id))?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockShared
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if exclusive => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// A layer's lease count in this process and the shared lock that tells other processes.
#[derive(Debug)]
struct Held {
    count: usize,
    /// `None` if the lock file could not be locked (logged; then only this process knows).
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// How many leases hold each layer (only layers with at least one are present).
#[derive(Debug, Default)]
pub(super) struct LeaseTable {
    counts: HashMap<String, Held>,
    /// Some layer's last lease ended since a [`LayerLease::release`] last took this: a
    /// collection could remove it (whichever lease ended it).
    freed: bool,
}

impl LeaseTable {
    fn add(&mut self, layers_dir: &Path, ids: &[String]) {
        for id in ids {
            let held = self.counts.entry(id.clone()).or_insert_with(|| Held {
                count: 0,
                _lock: match lock_layer(layers_dir, id, false) {
                    Ok(lock) => lock,
                    Err(e) => {
                        tracing::warn!(layer = %id, error = %e, "cannot lock a leased layer; other processes will not see the lease");
                        None
                    }
                },
            });
            held.count += 1;
        }
    }

    fn release(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(held) = self.counts.get_mut(id) {
                held.count -= 1;
                if held.count == 0 {
                    // Closing the file drops this process's shared lock.
                    self.counts.remove(id);
                    self.freed = true;
                }
            }
        }
    }

    fn is_leased(&self, id: &str) -> bool {
        self.counts.contains_key(id)
    }
}

/// Keeps layers from being garbage-collected while it lives (a sandbox's overlay uses them).
/// Dropping it releases them (no I/O); a collection after that may remove them.
pub struct LayerLease {
    table: Arc<Mutex<LeaseTable>>,
    ids: Vec<String>,
    layers: Vec<PathBuf>,
}

impl LayerLease {
    /// The leased layers (absolute directories, in the order they were leased).
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// Releases the lease and tells whether a collection could now remove a layer: true when
    /// some layer's last lease ended since the last `release` that said so (this one's, or one
    /// dropped without a collection after it, e.g. a failed start's), false when every layer
    /// that was let go is still leased by another lease of this process (another sandbox of
    /// the same template, a warm one), so there is no need to look.
    pub fn release(self) -> bool {
        let table = Arc::clone(&self.table);
        drop(self);
        let freed = std::mem::take(&mut lock(&table).freed);
        freed
    }
}

impl std::fmt::Debug for LayerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerLease")
            .field("layers", &self.ids)
            .finish()
    }
}

impl Drop for LayerLease {
    fn drop(&mut self) {
        lock(&self.table).release(&self.ids);
    }
}

fn lock(table: &Mutex<LeaseTable>) -> MutexGuard<'_, LeaseTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What [`TemplateStore::collect_garbage`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Layers removed.
    pub removed: usize,
    /// Layers kept because a template or a live build names them.
    pub referenced: usize,
    /// Layers no template names, kept because a lease holds them.
    pub leased: usize,
    /// Id-shift markers removed whose layer was gone already.
    pub markers_removed: usize,
}

/// The part of `template.json` a collection needs (read leniently: a template whose source
/// this version does not know still protects its layers).
#[derive(Deserialize)]
struct LayerRefs {
    #[serde(default)]
    layers: Vec<String>,
}

impl TemplateStore {
    /// The directory layers live in (`<root>/.layers`).
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join(LAYERS_DIR)
    }

    /// The directory of layer `id`.
    pub(super) fn layer_path(&self, id: &str) -> PathBuf {
        self.layers_dir().join(id)
    }

    /// The id of a layer of this store, given its directory.
    fn layer_id_of(&self, layer: &Path) -> Result<String, TemplateError> {
        let not_a_layer = || TemplateError::NotALayer(layer.to_path_buf());
        if layer.parent() != Some(self.layers_dir().as_path()) {
            return Err(not_a_layer());
        }
        let id = layer
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(not_a_layer)?;
        if !is_layer_id(id) {
            return Err(not_a_layer());
        }
        Ok(id.to_string())
    }

    /// Leases `ids` (already validated) with the table locked by the caller.
    fn lease_locked(&self, table: &mut LeaseTable, ids: Vec<String>) -> LayerLease {
        table.add(&self.layers_dir(), &ids);
        LayerLease {
            table: Arc::clone(&self.leases),
            layers: ids.iter().map(|id| self.layer_path(id)).collect(),
            ids,
        }
    }

    /// Leases `ids` without looking at the disk (for layers this process is creating).
    pub(super) fn lease_ids(&self, ids: Vec<String>) -> LayerLease {
        let mut table = lock(&self.leases);
        self.lease_locked(&mut table, ids)
    }

    /// Looks a template up and leases its layers, atomically with respect to garbage
    /// collection; `None` if it does not exist. Fails with [`TemplateError::LayerMissing`] if
    /// one of its layers is gone.
    pub fn lease(
        &self,
        name: &TemplateName,
    ) -> Result<Option<(Template, LayerLease)>, TemplateError> {
        let mut table = lock(&self.leases);
        let Some(template) = self.get(name)? else {
            return Ok(None);
        };
        let mut ids = Vec::with_capacity(template.layers.len());
        for layer in &template.layers {
            if !layer.is_dir() {
                return Err(TemplateError::LayerMissing(layer.clone()));
            }
            ids.push(self.layer_id_of(layer)?);
        }
        let lease = self.lease_locked(&mut table, ids);
        Ok(Some((template, lease)))
    }

    /// Leases layers by their directories (a sandbox re-adopted after a node restart still
    /// uses the layers it was started with). Fails with [`TemplateError::NotALayer`] for a
    /// path outside the store and [`TemplateError::LayerMissing`] for a layer that is gone.
    pub fn lease_layers(&self, layers: &[PathBuf]) -> Result<LayerLease, TemplateError> {
        let ids = layers
            .iter()
            .map(|l| self.layer_id_of(l))
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = lock(&self.leases);
        for layer in layers {
            if !layer.is_dir() {
                return Err(TemplateError::LayerMissing(layer.clone()));
            }
        }
        Ok(self.lease_locked(&mut table, ids))
    }

    /// Removes the layers no template (nor a live build) names and no lease holds. Fails,
    /// removing nothing, if a `template.json` cannot be read (its layers are unknown).
    pub fn collect_garbage(&self) -> Result<GcStats, TemplateError> {
        let mut stats = GcStats::default();
        let mut doomed = Vec::new();
        {
            let table = lock(&self.leases);
            let referenced = self.referenced_layers()?;
            let dir = self.layers_dir();
            let entries = std::fs::read_dir(&dir)
                .map_err(TemplateError::io(format!("cannot list {}", dir.display())))?;
            let mut markers = Vec::new();
            let mut lease_files = Vec::new();
            let mut digest_files = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(TemplateError::io(format!("cannot list {}", dir.display())))?;
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str() else {
                    continue;
                };
                if let Some(id) = marker_id(name) {
                    markers.push(id.to_string());
                    continue;
                }
                if let Some(id) = lease_file_id(name) {
                    lease_files.push(id.to_string());
                    continue;
                }
                if let Some(id) = super::transfer::digest_file_id(name) {
                    digest_files.push(id.to_string());
                    continue;
                }
                if !is_layer_id(name) {
                    continue;
                }
                if referenced.contains(name) {
                    stats.referenced += 1;
                    continue;
                }
                if table.is_leased(name) {
                    stats.leased += 1;
                    continue;
                }
                // Leased by another process (a shared lock on its lease file)?
                let exclusive = match lock_layer(&dir, name, true) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => {
                        stats.leased += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(layer = name, error = %e, "cannot lock layer; keeping it");
                        continue;
                    }
                };
                match self.trash_layer(name) {
                    Ok(trash) => {
                        doomed.push(trash);
                        stats.removed += 1;
                        // Still locked: nobody can lease the layer (no template names it).
                        let _ = std::fs::remove_file(lease_file(&dir, name));
                    }
                    Err(e) => tracing::warn!(layer = name, error = %e, "cannot remove layer"),
                }
                drop(exclusive);
            }
            // Lock files of layers that are gone, not held by any process.
            for id in lease_files {
                if self.layer_path(&id).exists() || table.is_leased(&id) {
                    continue;
                }
                if let Ok(Some(_lock)) = lock_layer(&dir, &id, true) {
                    let _ = std::fs::remove_file(lease_file(&dir, &id));
                }
            }
            for id in digest_files {
                if !self.layer_path(&id).exists() && !table.is_leased(&id) {
                    super::transfer::remove_digest_file(&dir, &id);
                }
            }
            for id in markers {
                if self.layer_path(&id).exists() || table.is_leased(&id) {
                    continue;
                }
                let marker = dir.join(format!(".{id}.idmap"));
                match std::fs::remove_file(&marker) {
                    Ok(()) => stats.markers_removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(marker = %marker.display(), error = %e, "cannot remove marker")
                    }
                }
            }
        }
        for trash in doomed {
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                tracing::warn!(dir = %trash.display(), error = %e, "cannot remove a layer's files");
            }
        }
        if stats.removed > 0 {
            tracing::info!(
                removed = stats.removed,
                referenced = stats.referenced,
                leased = stats.leased,
                "collected unused template layers"
            );
        }
        Ok(stats)
    }

    /// Every layer id named by a template or by a build in progress (whose `template.json`
    /// names its new layer before the layer exists).
    fn referenced_layers(&self) -> Result<HashSet<String>, TemplateError> {
        let entries = std::fs::read_dir(&self.root).map_err(TemplateError::io(format!(
            "cannot list {}",
            self.root.display()
        )))?;
        let mut out = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(TemplateError::io(format!(
                "cannot list {}",
                self.root.display()
            )))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let template = TemplateName::parse(name).is_ok_and(|n| n.as_str() == name);
            let build = name.strip_prefix(BUILD_PREFIX).is_some_and(build_is_live);
            if !template && !build {
                continue;
            }
            let path = entry.path().join(META_FILE);
            let raw = match std::fs::read(&path) {
                Ok(raw) => raw,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(TemplateError::Io {
                        context: format!("cannot read {}", path.display()),
                        source: e,
                    })
                }
            };
            let refs: LayerRefs =
                serde_json::from_slice(&raw).map_err(|source| TemplateError::Metadata {
                    path: path.clone(),
                    source,
                })?;
            out.extend(refs.layers);
        }
        Ok(out)
    }

    /// Renames layer `id` to a trash directory (removed by the caller, or by the next open
    /// after a crash) and removes its marker.
    fn trash_layer(&self, id: &str) -> io::Result<PathBuf> {
        let trash = self
            .root
            .join(format!("{TRASH_PREFIX}layer-{id}-{}", unique_suffix()));
        std::fs::rename(self.layer_path(id), &trash)?;
        super::transfer::remove_digest_file(&self.layers_dir(), id);
        let marker = self.layers_dir().join(format!(".{id}.idmap"));
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(marker = %marker.display(), error = %e, "cannot remove marker")
            }
            _ => {}
        }
        Ok(trash)
    }

    /// Removes a layer this process created but could not commit.
    pub(super) fn discard_layer(&self, id: &str) {
        match self.trash_layer(id) {
            Ok(trash) => {
                if let Err(e) = std::fs::remove_dir_all(&trash) {
                    tracing::warn!(dir = %trash.display(), error = %e, "cannot remove a layer's files");
                }
            }
            Err(e) => tracing::warn!(layer = id, error = %e, "cannot remove an uncommitted layer"),
        }
    }

    /// A fresh layer id (random, not in use).
    pub(super) fn new_layer_id(&self) -> Result<String, TemplateError> {
        let mut urandom = std::fs::File::open("/dev/urandom")
            .map_err(TemplateError::io("cannot open /dev/urandom"))?;
        loop {
            let mut bytes = [0u8; LAYER_ID_BYTES];
            urandom
                .read_exact(&mut bytes)
                .map_err(TemplateError::io("cannot read /dev/urandom"))?;
            let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if !self.layer_path(&id).exists() {
                return Ok(id);
            }
        }
    }

    /// Makes template `name` from a sandbox's files: copies `upper` (the overlay upper
    /// directory of a sandbox started from `parent`; pause or stop the sandbox for a
    /// consistent copy) into a new layer, stored as a lower layer would be, and commits a
    /// template whose layers are the new one over `parent`'s. Blocking (a copy of everything
    /// the sandbox wrote). Fails with [`TemplateError::AlreadyExists`] if the name is taken,
    /// [`TemplateError::Busy`] while another operation on the name runs and
    /// [`TemplateError::LayerMissing`] if `parent`'s layers are gone; a failure leaves nothing.
    pub fn snapshot(
        &self,
        name: &TemplateName,
        upper: &Path,
        parent: &Template,
        resources: Resources,
        source: TemplateSource,
    ) -> Result<Template, TemplateError> {
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(TemplateError::Busy(name.clone()));
        };
        if self.get(name)?.is_some() {
            return Err(TemplateError::AlreadyExists(name.clone()));
        }
        let parent_lease = self.lease_layers(&parent.layers)?;
        let build = self.start_build(name)?;
        let started = std::time::Instant::now();
        let stats = copy_tree(
            upper,
            &build.rootfs(),
            CopyOptions {
                for_lower_layer: true,
            },
        )
        .map_err(TemplateError::io(format!(
            "cannot copy {} into a new layer",
            upper.display()
        )))?;
        tracing::info!(
            template = %name,
            files = stats.files,
            dirs = stats.dirs,
            bytes = stats.bytes,
            vanished = stats.vanished,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "copied a sandbox's writable layer"
        );
        let meta = TemplateMeta {
            name: name.clone(),
            resources,
            created_at: Utc::now(),
            source,
            config: parent.config.clone(),
        };
        let template = self.commit_layers(build, &meta, &parent_lease.ids)?;
        drop(parent_lease);
        Ok(template)
    }

    /// Moves every template of the older layout into a layer, finishing moves a crash
    /// interrupted. A template whose `template.json` cannot be parsed is left alone (and
    /// skipped by [`TemplateStore::list`]).
    pub(super) fn migrate(&self) -> Result<(), TemplateError> {
        for name in self.names()? {
            match self.migrate_one(&name) {
                Err(e @ TemplateError::Metadata { .. }) => {
                    tracing::warn!(template = %name, error = %e, "cannot read template, not moving it")
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn migrate_one(&self, name: &TemplateName) -> Result<(), TemplateError> {
        let dir = self.root.join(name.as_str());
        let meta_path = dir.join(META_FILE);
        match std::fs::remove_file(tmp_record_path(&meta_path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(template = %name, error = %e, "cannot remove a leftover temporary file")
            }
            _ => {}
        }
        let Some(mut record) = read_record(&meta_path)? else {
            return Ok(());
        };
        let legacy = dir.join(ROOTFS_DIR);
        let legacy_exists = std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_dir());
        if record.layers.is_empty() {
            if !legacy_exists {
                tracing::warn!(template = %name, "template has neither layers nor a rootfs");
                return Ok(());
            }
            // Step 1: name the layer (a crash after this is finished by the steps below).
            let id = self.new_layer_id()?;
            write_record(&meta_path, &record.meta, std::slice::from_ref(&id))?;
            tracing::info!(template = %name, layer = %id, "moving template into a layer");
            record.layers = vec![id];
        }
        let [id] = record.layers.as_slice() else {
            if legacy_exists {
                tracing::warn!(template = %name, "stray rootfs beside a template with several layers");
            }
            return Ok(());
        };
        if !is_layer_id(id) {
            return Err(TemplateError::Broken {
                name: name.clone(),
                reason: format!("invalid layer id {id:?}"),
            });
        }
        let layer = self.layer_path(id);
        // Step 2: the tree.
        if legacy_exists {
            if layer.exists() {
                tracing::warn!(template = %name, layer = %layer.display(), "both the old rootfs and its layer exist; leaving the old rootfs");
                return Ok(());
            }
            std::fs::rename(&legacy, &layer).map_err(TemplateError::io(format!(
                "cannot move {} to {}",
                legacy.display(),
                layer.display()
            )))?;
        }
        // Step 3: its id-shift marker (left behind if the tree moved but the marker did not).
        let (Some(old_marker), Some(new_marker)) = (
            paddock_sandbox::idmap::marker_path(&legacy),
            paddock_sandbox::idmap::marker_path(&layer),
        ) else {
            return Ok(());
        };
        if old_marker.exists() {
            if new_marker.exists() {
                std::fs::remove_file(&old_marker).map_err(TemplateError::io(format!(
                    "cannot remove {}",
                    old_marker.display()
                )))?;
            } else {
                move_marker(&legacy, &layer)?;
            }
        }
        Ok(())
    }

    /// Shifts every layer a template names into the sandboxes' id range unless its marker
    /// says it is already.
    pub(super) fn shift_layers(&self) -> Result<(), TemplateError> {
        let mut seen = HashSet::new();
        for template in self.list()? {
            for layer in template.layers {
                if layer.is_dir() && seen.insert(layer.clone()) {
                    shift(&layer)?;
                }
            }
        }
        Ok(())
    }
}

/// Bytes a tree takes on disk (allocated blocks, a hard-linked file counted once; directories
/// included; neither following symlinks nor entering other file systems).
pub fn layer_size(path: &Path) -> io::Result<u64> {
    let dev = std::fs::symlink_metadata(path)?.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && p != path => continue,
            Err(e) => return Err(e),
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else if meta.nlink() > 1 && !seen.insert(meta.ino()) {
            continue;
        }
        total += meta.blocks() * 512;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn layer_ids_and_markers() {
        assert!(is_layer_id("0123456789abcdef01234567"));
        assert!(!is_layer_id("0123456789ABCDEF01234567"));
        assert!(!is_layer_id("short"));
        assert!(!is_layer_id("../../../../etc/passwd00"));
        assert!(!is_layer_id(&"a".repeat(65)));
        assert_eq!(
            marker_id(".0123456789abcdef01234567.idmap"),
            Some("0123456789abcdef01234567")
        );
        assert_eq!(marker_id(".rootfs.idmap"), None);
        assert_eq!(marker_id("0123456789abcdef01234567"), None);
    }

    #[test]
    fn leases_count_per_layer_and_release_on_drop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(tmp.path()).expect("open");
        let (a, b) = ("a".repeat(24), "b".repeat(24));
        let one = store.lease_ids(vec![a.clone(), b.clone()]);
        let two = store.clone().lease_ids(vec![a.clone()]);
        assert_eq!(one.layers(), [store.layer_path(&a), store.layer_path(&b)]);
        drop(one);
        {
            let table = lock(&store.leases);
            assert!(table.is_leased(&a));
            assert!(!table.is_leased(&b));
        }
        drop(two);
        assert!(lock(&store.leases).counts.is_empty());
    }

    #[test]
    fn release_tells_whether_a_layer_is_leased_no_more() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(tmp.path()).expect("open");
        let (a, b) = ("a".repeat(24), "b".repeat(24));
        let one = store.lease_ids(vec![a.clone(), b.clone()]);
        let two = store.lease_ids(vec![a.clone(), b.clone()]);
        let three = store.lease_ids(vec![a.clone()]);
        assert!(!one.release(), "two and three still hold a and b");
        assert!(two.release(), "b is leased no more");
        assert!(three.release());
        assert!(lock(&store.leases).counts.is_empty());
        // A lease dropped without a collection leaves it to the next release.
        let four = store.lease_ids(vec![a.clone()]);
        let five = store.lease_ids(vec![a.clone()]);
        let short = store.lease_ids(vec![b.clone()]);
        drop(short);
        assert!(four.release(), "b's last lease ended, unseen");
        assert!(five.release());
        let six = store.lease_ids(vec![a.clone()]);
        let seven = store.lease_ids(vec![a.clone()]);
        assert!(!six.release());
        assert!(seven.release());
    }

    #[test]
    fn lease_layers_refuses_foreign_and_missing_layers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TemplateStore::open(tmp.path().join("t")).expect("open");
        let err = store
            .lease_layers(&[tmp.path().join("elsewhere")])
            .expect_err("foreign");
        assert!(matches!(err, TemplateError::NotALayer(_)), "{err:?}");
        let err = store
            .lease_layers(&[store.layers_dir().join("..").join("x".repeat(24))])
            .expect_err("not below .layers");
        assert!(matches!(err, TemplateError::NotALayer(_)), "{err:?}");
        let gone = store.layer_path(&"c".repeat(24));
        let err = store.lease_layers(&[gone]).expect_err("missing");
        assert!(matches!(err, TemplateError::LayerMissing(_)), "{err:?}");
        assert!(lock(&store.leases).counts.is_empty());
        let id = store.new_layer_id().expect("id");
        assert_eq!(id.len(), 24);
        assert!(is_layer_id(&id));
        std::fs::create_dir(store.layer_path(&id)).expect("mkdir");
        let lease = store.lease_layers(&[store.layer_path(&id)]).expect("lease");
        assert!(lock(&store.leases).is_leased(&id));
        drop(lease);
    }

    #[test]
    fn layer_size_counts_hard_links_once_and_holes_not_at_all() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).expect("mkdir");
        let empty = layer_size(&root).expect("size");
        let data = root.join("data");
        std::fs::write(&data, vec![1u8; 1 << 20]).expect("write");
        let with_data = layer_size(&root).expect("size");
        assert!(
            with_data - empty >= 1 << 20 && with_data - empty < (1 << 20) + 65536,
            "{with_data}"
        );
        std::fs::hard_link(&data, root.join("again")).expect("link");
        std::os::unix::fs::symlink("data", root.join("link")).expect("symlink");
        assert_eq!(layer_size(&root).expect("size"), with_data);
        let mut sparse = std::fs::File::create(root.join("sparse")).expect("create");
        sparse.seek(SeekFrom::Start(1 << 30)).expect("seek");
        sparse.write_all(b"x").expect("write");
        let total = layer_size(&root).expect("size");
        assert!(total - with_data < 1 << 20, "{total}");
    }
}
