//! Layers between nodes: how a template built on one node starts on another. A layer travels
//! as one uncompressed tar stream in a canonical form, and its content address is the SHA-256
//! of that stream (`sha256:<64 hex>`), so the same files give the same digest on every node.
//!
//! The canonical form ([`TemplateStore::export_layer`]): entries in byte order of their paths,
//! depth first, the layer's root first (as `./`); owners as sandbox ids (`0..65536`, host ids
//! of the id range shifted back), modes with set-id bits, modification times in seconds, no
//! user or group names; regular files, directories, symbolic links, hard links (to the first
//! path of the inode), and overlayfs whiteouts as character devices 0:0. Extended attributes
//! travel as PAX `SCHILY.xattr.*` records, sorted, and only those a lower layer needs:
//! `security.capability`, `trusted.overlay.opaque`, `trusted.overlay.redirect` and `user.*`.
//! Other device nodes, fifos and sockets are left out (a sandbox gets its own `/dev`).
//!
//! A digest is computed once per layer and kept beside it (`.layers/.<id>.digest`: the digest
//! and the stream's length); a layer that arrives from another node is stored under its
//! digest's hex digits as id.
//!
//! Receiving ([`TemplateStore::import_layer`]) is careful with what it is given, though it
//! comes from a node of the same cluster (a snapshot's files were written by a sandbox):
//! entries unpack into a build directory (its own, host-only), none may land outside it (no
//! `..`, no path through a symbolic link), extended attributes outside the list above refuse
//! the layer, the stream must hash to the digest asked for (checked before the layer is kept),
//! and owners are shifted into this node's id range as for any import. Only then is the tree
//! renamed into `.layers/`, leased until a template names it ([`TemplateStore::install`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use paddock_domain::TemplateName;
use paddock_sandbox::idmap::IdMap;
use paddock_sandbox::xattr::{get_xattr, list_xattrs};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::{move_marker, shift, LayerLease, Template, TemplateError, TemplateMeta, TemplateStore};

/// The prefix of a layer digest.
pub const DIGEST_PREFIX: &str = "sha256:";
/// The extended attributes a layer keeps when it travels (exact names).
const KEPT_XATTRS: &[&str] = &[
    "security.capability",
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
];
/// Extended attribute namespaces a layer keeps when it travels.
const KEPT_XATTR_PREFIXES: &[&str] = &["user."];
/// The PAX record prefix of an extended attribute.
const PAX_XATTR: &str = "SCHILY.xattr.";
/// A sandbox's `nobody`: what an owner outside the id range travels as.
const NOBODY: u32 = 65_534;
/// The name build directories of incoming layers are made under.
const INCOMING: &str = "incoming";

/// One layer of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigest {
    /// `sha256:<64 hex>` of the layer's canonical stream.
    pub digest: String,
    /// The stream's length in bytes.
    pub size: u64,
}

/// What a node needs to have a template another node has: its metadata and its layers' digests,
/// top first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The template's metadata (`template.json` without the local layer ids).
    pub meta: TemplateMeta,
    /// Its layers, top first.
    pub layers: Vec<LayerDigest>,
}

/// Whether `digest` is a well-formed layer digest.
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix(DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn bad_digest(digest: &str) -> TemplateError {
    TemplateError::Transfer {
        digest: digest.to_string(),
        reason: "not a layer digest (sha256:<64 lowercase hex digits>)".into(),
    }
}

/// Whether an extended attribute may travel with a layer.
fn xattr_kept(name: &str) -> bool {
    KEPT_XATTRS.contains(&name) || KEPT_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The file of layer `id`'s digest.
fn digest_file(layers_dir: &Path, id: &str) -> PathBuf {
    layers_dir.join(format!(".{id}.digest"))
}

/// The layer id in a digest file's name (`.<id>.digest`).
pub(super) fn digest_file_id(file_name: &str) -> Option<&str> {
    let id = file_name.strip_prefix('.')?.strip_suffix(".digest")?;
    super::layers::is_layer_id(id).then_some(id)
}

/// Reads a digest file: `sha256:<hex> <size>`.
fn read_digest_file(path: &Path) -> Option<LayerDigest> {
    let text = std::fs::read_to_string(path).ok()?;
    let (digest, size) = text.trim().split_once(' ')?;
    if !is_digest(digest) {
        return None;
    }
    Some(LayerDigest {
        digest: digest.to_string(),
        size: size.parse().ok()?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what it reads.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What writing a layer's stream left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Entries written.
    pub entries: u64,
    /// Device nodes (other than whiteouts), fifos and sockets left out.
    pub skipped_special: u64,
    /// Extended attributes left out (not in the kept list).
    pub xattrs_dropped: u64,
}

/// Writes the canonical stream of the tree at `root` (see the module docs).
pub fn write_layer(root: &Path, out: impl Write) -> io::Result<ExportStats> {
    let mut writer = LayerWriter {
        builder: tar::Builder::new(out),
        links: HashMap::new(),
        stats: ExportStats::default(),
        map: IdMap::DEFAULT,
        dev: std::fs::symlink_metadata(root)?.dev(),
    };
    writer.builder.follow_symlinks(false);
    writer.entry(root, Path::new("."))?;
    writer.builder.into_inner()?.flush()?;
    Ok(writer.stats)
}

struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
    /// `(dev, ino)` of files with more than one link → the first path written.
    links: HashMap<(u64, u64), PathBuf>,
    stats: ExportStats,
    map: IdMap,
    dev: u64,
}

impl<W: Write> LayerWriter<W> {
    fn id(&self, host: u32) -> u32 {
        if self.map.contains(host) {
            host - self.map.base
        } else {
            NOBODY
        }
    }

    fn header(&self, meta: &std::fs::Metadata, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(self.id(meta.uid())));
        h.set_gid(u64::from(self.id(meta.gid())));
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        h.set_size(0);
        h
    }

    fn xattrs(&mut self, path: &Path) -> io::Result<()> {
        let mut records = Vec::new();
        for name in list_xattrs(path)? {
            let text = name.to_string_lossy().into_owned();
            if !xattr_kept(&text) {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            if let Some(value) = get_xattr(path, &name)? {
                records.push((format!("{PAX_XATTR}{text}"), value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        records.sort();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    fn entry(&mut self, path: &Path, rel: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        if ft.is_dir() {
            self.xattrs(path).map_err(annotate)?;
            let mut h = self.header(&meta, EntryType::Directory);
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(annotate)?;
            self.stats.entries += 1;
            if meta.dev() != self.dev {
                return Ok(());
            }
            let mut names: Vec<_> = std::fs::read_dir(path)
                .map_err(annotate)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(annotate)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let child_rel = if rel == Path::new(".") {
                    PathBuf::from(&name)
                } else {
                    rel.join(&name)
                };
                self.entry(&path.join(&name), &child_rel)?;
            }
            return Ok(());
        }
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlayfs whiteout.
            self.xattrs(path).map_err(annotate)?;
            let mut h = self.header(&meta, EntryType::Char);
            h.set_device_major(0)?;
            h.set_device_minor(0)?;
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(annotate)?;
            self.stats.entries += 1;
            return Ok(());
        }
        if !(ft.is_file() || ft.is_symlink()) {
            self.stats.skipped_special += 1;
            return Ok(());
        }
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                let mut h = self.header(&meta, EntryType::Link);
                self.builder
                    .append_link(&mut h, rel, &first)
                    .map_err(annotate)?;
                self.stats.entries += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        self.xattrs(path).map_err(annotate)?;
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(annotate)?;
            let mut h = self.header(&meta, EntryType::Symlink);
            self.builder
                .append_link(&mut h, rel, &target)
                .map_err(annotate)?;
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(path)
                .map_err(annotate)?;
            let now = file.metadata().map_err(annotate)?;
            if !now.is_file() || now.len() != meta.len() || now.ino() != meta.ino() {
                return Err(annotate(io::Error::other(
                    "the file changed while it was read",
                )));
            }
            let mut h = self.header(&meta, EntryType::Regular);
            h.set_size(meta.len());
            // Exactly the size in the header, even if the file grew meanwhile.
            self.builder
                .append_data(
                    &mut h,
                    rel,
                    BufReader::with_capacity(1 << 20, file).take(meta.len()),
                )
                .map_err(annotate)?;
        }
        self.stats.entries += 1;
        Ok(())
    }
}

/// What receiving a layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportStats {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of the stream.
    pub bytes: u64,
    /// Device nodes, fifos (other than whiteouts) left out.
    pub skipped_special: u64,
}

/// Unpacks a layer stream into the (new, empty, host-only) directory `dst`. Returns the stream's
/// digest (over all of its bytes) and counters; fails on anything that would land outside
/// `dst` or carries an extended attribute a layer does not keep.
fn read_layer(input: impl Read, dst: &Path) -> Result<(String, ImportStats), String> {
    let mut hashing = HashingReader {
        inner: input,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut stats = ImportStats::default();
    let canon_root = dst
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dst.display()))?;
    {
        let mut archive = super::import::rootfs_archive(&mut hashing);
        let mut directories = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| format!("cannot read the stream: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("cannot read an entry: {e}"))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                continue;
            }
            let xattrs = entry_xattrs(&mut entry, &raw)?;
            let path = entry
                .path()
                .map_err(|e| format!("invalid path {raw:?}: {e}"))?
                .into_owned();
            let rel = super::import::image::relative_path(&path)
                .ok_or_else(|| format!("entry {raw:?} escapes the root"))?;
            match kind {
                EntryType::Directory => {
                    let mtime = entry.header().mtime().unwrap_or(0);
                    directories.push((entry, rel, xattrs, mtime));
                    continue;
                }
                EntryType::Char
                    if entry.header().device_major().ok().flatten() == Some(0)
                        && entry.header().device_minor().ok().flatten() == Some(0) =>
                {
                    whiteout(&canon_root, &rel, entry.header())?;
                    stats.entries += 1;
                    continue;
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    stats.skipped_special += 1;
                    continue;
                }
                EntryType::Regular
                | EntryType::Link
                | EntryType::Symlink
                | EntryType::Continuous => {}
                other => {
                    return Err(format!(
                        "entry {raw:?} has a type layers do not use ({other:?})"
                    ))
                }
            }
            if rel.as_os_str().is_empty() {
                return Err(format!("entry {raw:?} would replace the layer's root"));
            }
            unpack(&mut entry, &raw, dst)?;
            stats.entries += 1;
        }
        // Deepest first, so a read-only directory does not block its children and the
        // directories' times survive what was written into them.
        directories.sort_by(|a, b| b.1.cmp(&a.1));
        for (mut dir, rel, xattrs, mtime) in directories {
            let raw = String::from_utf8_lossy(&dir.path_bytes()).into_owned();
            let path = canon_root.join(&rel);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                return Err(format!("directory {raw:?} would replace another entry"));
            }
            if rel.as_os_str().is_empty() {
                // The layer's root: its mode and owner (the archive reader leaves it alone).
                let h = dir.header();
                let id = |v: io::Result<u64>| {
                    v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(NOBODY)
                };
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(
                        h.mode().unwrap_or(0o755) & 0o7777,
                    ),
                )
                .map_err(|e| format!("cannot set the mode of the layer's root: {e}"))?;
                std::os::unix::fs::lchown(&path, Some(id(h.uid())), Some(id(h.gid())))
                    .map_err(|e| format!("cannot own the layer's root: {e}"))?;
            } else {
                unpack(&mut dir, &raw, dst)?;
            }
            // The archive reader sets neither the extended attributes nor the time of a
            // directory.
            finish_dir(&path, &raw, &xattrs, mtime)?;
            stats.entries += 1;
        }
    }
    // The reader stops at the end-of-archive blocks; the digest covers what follows too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| format!("cannot read the stream: {e}"))?;
    stats.bytes = hashing.bytes;
    Ok((
        format!("{DIGEST_PREFIX}{}", hex(&hashing.hasher.finalize())),
        stats,
    ))
}

/// The extended attributes an entry carries (its PAX `SCHILY.xattr.*` records); an attribute
/// layers do not keep refuses the stream.
fn entry_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: &str,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let Some(extensions) = entry
        .pax_extensions()
        .map_err(|e| format!("entry {raw:?}: cannot read its PAX records: {e}"))?
    else {
        return Ok(out);
    };
    for ext in extensions {
        let ext = ext.map_err(|e| format!("entry {raw:?}: bad PAX record: {e}"))?;
        let key = ext
            .key()
            .map_err(|_| format!("entry {raw:?}: bad PAX key"))?;
        if let Some(name) = key.strip_prefix(PAX_XATTR) {
            if !xattr_kept(name) {
                return Err(format!(
                    "entry {raw:?} carries extended attribute {name:?}, which layers do not keep"
                ));
            }
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// Sets a directory's extended attributes and modification time (not following a link: the
/// caller checked it is a directory).
fn finish_dir(
    path: &Path,
    raw: &str,
    xattrs: &[(String, Vec<u8>)],
    mtime: u64,
) -> Result<(), String> {
    for (name, value) in xattrs {
        let key = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| format!("entry {raw:?}: bad xattr name"))?;
        paddock_sandbox::xattr::set_xattr(path, &key, value)
            .map_err(|e| format!("entry {raw:?}: cannot set {name}: {e}"))?;
    }
    set_mtime(path, mtime).map_err(|e| format!("entry {raw:?}: cannot set its time: {e}"))
}

/// Sets the access and modification times of `path` (not following a link) to `mtime`.
fn set_mtime(path: &Path, mtime: u64) -> nix::Result<()> {
    let t = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
}

fn unpack<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &str, dst: &Path) -> Result<(), String> {
    match entry.unpack_in(dst) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("entry {raw:?} escapes the root")),
        Err(e) => Err(format!("cannot unpack {raw:?}: {e}")),
    }
}

/// Makes an overlayfs whiteout (a character device 0:0) at `rel` below `root`, whose parent
/// must be a directory inside `root` reached without a symbolic link.
fn whiteout(root: &Path, rel: &Path, header: &Header) -> Result<(), String> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(format!("whiteout {} has no name", rel.display()));
    };
    let dir = root.join(parent);
    let canon = dir
        .canonicalize()
        .map_err(|e| format!("whiteout {}: its directory: {e}", rel.display()))?;
    if canon != dir || !canon.starts_with(root) || !canon.is_dir() {
        return Err(format!(
            "whiteout {} is not in a directory of the layer",
            rel.display()
        ));
    }
    let path = canon.join(name);
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o000),
        0,
    )
    .map_err(|e| format!("cannot make whiteout {}: {e}", rel.display()))?;
    let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(NOBODY);
    std::os::unix::fs::lchown(&path, Some(id(header.uid())), Some(id(header.gid())))
        .map_err(|e| format!("cannot own whiteout {}: {e}", rel.display()))?;
    // Its time too, like every other entry's: the layer a node keeps must stream to the same
    // digest when that node sends it on (a whiteout made in a later second would not).
    set_mtime(&path, header.mtime().unwrap_or(0))
        .map_err(|e| format!("cannot set the time of whiteout {}: {e}", rel.display()))?;
    Ok(())
}

impl TemplateStore {
    /// The digest of layer `id` (computed once: it reads the whole layer).
    pub fn layer_digest(&self, id: &str) -> Result<LayerDigest, TemplateError> {
        let layers_dir = self.layers_dir();
        let file = digest_file(&layers_dir, id);
        if let Some(d) = read_digest_file(&file) {
            return Ok(d);
        }
        let layer = self.layer_path(id);
        if !layer.is_dir() {
            return Err(TemplateError::LayerMissing(layer));
        }
        let started = std::time::Instant::now();
        let mut out = Hashing {
            inner: io::sink(),
            hasher: Sha256::new(),
            bytes: 0,
        };
        write_layer(&layer, &mut out).map_err(TemplateError::io(format!(
            "cannot read layer {}",
            layer.display()
        )))?;
        let digest = LayerDigest {
            digest: format!("{DIGEST_PREFIX}{}", hex(&out.hasher.finalize())),
            size: out.bytes,
        };
        write_digest_file(&file, &digest)?;
        tracing::info!(
            layer = id,
            digest = %digest.digest,
            bytes = digest.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layer digest computed"
        );
        Ok(digest)
    }

    /// The id of this store's layer with `digest`, if it has one.
    pub fn find_layer(&self, digest: &str) -> Result<Option<String>, TemplateError> {
        Ok(self
            .find_layers(std::slice::from_ref(&digest.to_string()))?
            .remove(digest))
    }

    /// The ids of this store's layers with `digests` (those it has), reading the digest files
    /// once for all of them.
    fn find_layers(&self, digests: &[String]) -> Result<HashMap<String, String>, TemplateError> {
        let mut found = HashMap::new();
        let mut wanted = Vec::new();
        for digest in digests {
            if !is_digest(digest) {
                return Err(bad_digest(digest));
            }
            // A layer received from another node is named by its digest.
            let named = &digest[DIGEST_PREFIX.len()..];
            if self.layer_path(named).is_dir() {
                found.insert(digest.clone(), named.to_string());
            } else {
                wanted.push(digest);
            }
        }
        if wanted.is_empty() {
            return Ok(found);
        }
        let dir = self.layers_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(TemplateError::io(format!("cannot list {}", dir.display())))?;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(id) = file_name.to_str().and_then(digest_file_id) else {
                continue;
            };
            let Some(d) = read_digest_file(&entry.path()) else {
                continue;
            };
            if wanted.contains(&&d.digest) && self.layer_path(id).is_dir() {
                found.insert(d.digest, id.to_string());
            }
        }
        Ok(found)
    }

    /// What another node needs to have template `name`: its metadata and its layers' digests
    /// (computed the first time, which reads the layers). `None` if there is no such template.
    pub fn manifest(&self, name: &TemplateName) -> Result<Option<Manifest>, TemplateError> {
        let Some((template, lease)) = self.lease(name)? else {
            return Ok(None);
        };
        let mut layers = Vec::with_capacity(template.layers.len());
        for layer in &template.layers {
            let id = layer
                .file_name()
                .and_then(OsStr::to_str)
                .ok_or_else(|| TemplateError::NotALayer(layer.clone()))?;
            layers.push(self.layer_digest(id)?);
        }
        drop(lease);
        Ok(Some(Manifest {
            meta: TemplateMeta {
                name: template.name,
                resources: template.resources,
                created_at: template.created_at,
                source: template.source,
                config: template.config,
            },
            layers,
        }))
    }

    /// Of `digests`, those this store has no layer of.
    pub fn missing_layers(&self, digests: &[String]) -> Result<Vec<String>, TemplateError> {
        let found = self.find_layers(digests)?;
        let mut missing = Vec::new();
        for d in digests {
            if !found.contains_key(d) && !missing.contains(d) {
                missing.push(d.clone());
            }
        }
        Ok(missing)
    }

    /// Writes the canonical stream of the layer with `digest` to `out` (blocking). Fails with
    /// [`TemplateError::UnknownLayer`] when this store has no such layer.
    pub fn export_layer(
        &self,
        digest: &str,
        out: impl Write,
    ) -> Result<ExportStats, TemplateError> {
        let id = self
            .find_layer(digest)?
            .ok_or_else(|| TemplateError::UnknownLayer(digest.to_string()))?;
        let lease = self.lease_ids(vec![id.clone()]);
        let layer = self.layer_path(&id);
        if !layer.is_dir() {
            return Err(TemplateError::LayerMissing(layer));
        }
        let stats = write_layer(&layer, out).map_err(TemplateError::io(format!(
            "cannot send layer {}",
            layer.display()
        )))?;
        drop(lease);
        Ok(stats)
    }

    /// Receives the layer with `digest` from `input` (blocking): unpacks it into a build
    /// directory, checks that the stream hashes to `digest`, shifts its owners into the id
    /// range and keeps it under its digest. Returns a lease that keeps it until a template
    /// names it ([`TemplateStore::install`]). A layer the store has already is not unpacked
    /// again (the stream is read and dropped).
    pub fn import_layer(
        &self,
        digest: &str,
        mut input: impl Read,
    ) -> Result<(LayerLease, ImportStats), TemplateError> {
        if !is_digest(digest) {
            return Err(bad_digest(digest));
        }
        if let Some(id) = self.find_layer(digest)? {
            let lease = self.lease_ids(vec![id]);
            io::copy(&mut input, &mut io::sink())
                .map_err(TemplateError::io("cannot read a layer"))?;
            return Ok((lease, ImportStats::default()));
        }
        let incoming = TemplateName::parse(INCOMING).expect("a valid template name");
        let build = self.start_build(&incoming)?;
        let rootfs = build.rootfs();
        std::fs::create_dir(&rootfs).map_err(TemplateError::io(format!(
            "cannot create {}",
            rootfs.display()
        )))?;
        let transfer = |reason: String| TemplateError::Transfer {
            digest: digest.to_string(),
            reason,
        };
        let (got, stats) = read_layer(&mut input, &rootfs).map_err(transfer)?;
        if got != digest {
            return Err(transfer(format!("the stream's digest is {got}")));
        }
        shift(&rootfs)?;
        let id = digest[DIGEST_PREFIX.len()..].to_string();
        let lease = self.lease_ids(vec![id.clone()]);
        let layers_dir = self.layers_dir();
        write_digest_file(
            &digest_file(&layers_dir, &id),
            &LayerDigest {
                digest: digest.to_string(),
                size: stats.bytes,
            },
        )?;
        let layer = self.layer_path(&id);
        match std::fs::rename(&rootfs, &layer) {
            Ok(()) => move_marker(&rootfs, &layer)?,
            // Received meanwhile by another call: keep that one.
            Err(_) if layer.is_dir() => {}
            Err(e) => {
                return Err(TemplateError::Io {
                    context: format!("cannot move {} to {}", rootfs.display(), layer.display()),
                    source: e,
                })
            }
        }
        drop(build);
        tracing::info!(layer = %id, entries = stats.entries, bytes = stats.bytes, "layer received");
        Ok((lease, stats))
    }

    /// Makes `meta.name` a template over the layers with `digests` (top first), which the store
    /// must have ([`TemplateStore::import_layer`]), replacing a template of that name.
    pub fn install(
        &self,
        meta: &TemplateMeta,
        digests: &[String],
    ) -> Result<Template, TemplateError> {
        let found = self.find_layers(digests)?;
        let mut layers = Vec::with_capacity(digests.len());
        for d in digests {
            let id = found
                .get(d)
                .ok_or_else(|| TemplateError::UnknownLayer(d.clone()))?;
            layers.push(self.layer_path(id));
        }
        self.publish(&layers, meta)
    }
}

fn write_digest_file(path: &Path, digest: &LayerDigest) -> Result<(), TemplateError> {
    let tmp = path.with_extension("digest.tmp");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {}", digest.digest, digest.size)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(TemplateError::io(format!(
        "cannot write {}",
        path.display()
    )))
}

/// Removes layer `id`'s digest file (the layer is gone).
pub(super) fn remove_digest_file(layers_dir: &Path, id: &str) {
    match std::fs::remove_file(digest_file(layers_dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(layer = id, error = %e, "cannot remove a layer's digest file")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
