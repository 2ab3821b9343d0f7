//! Container images as import sources: `docker save` archives and OCI image layouts, already
//! unpacked (by the importer) into a directory. This module owns reading their metadata —
//! `manifest.json` of `docker save`; `oci-layout`, `index.json` and the manifest blob of an OCI
//! layout, descending one nested index to the manifest of the host's platform — verifying
//! every OCI blob against its sha256 digest, and applying the image's layers in order onto one
//! root filesystem tree with OCI whiteout semantics:
//!
//! - `.wh.NAME` removes `NAME` (file or whole directory) as lower layers left it;
//! - `.wh..wh..opq` in a directory removes everything lower layers put in that directory,
//!   keeping what the same layer adds;
//! - an entry replacing one of another type (a directory over a file, a file over a
//!   directory) replaces it.
//!
//! Entries are unpacked like a plain rootfs tarball (see the parent module): owners, modes,
//! xattrs and hard links kept, device nodes skipped, and an entry that would land outside the
//! tree — through `..` or a symlink pointing out of it — fails the import. Paths the archive
//! names (layer tars, blobs) must stay inside the unpacked archive, symlinks included.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{detect_format, unpack_one, ArchiveFormat};
use crate::TemplateError;

/// Prefix of a whiteout entry's name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON_BYTES: u64 = 16 << 20;
/// How deep nested image indexes are followed (the top index plus one nested one).
const MAX_INDEX_DEPTH: usize = 2;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The image formats recognised in an unpacked archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `docker save` output: `manifest.json` naming layer tars and a config file.
    DockerSave,
    /// An OCI image layout: `oci-layout`, `index.json` and `blobs/`. Docker 25 and later save
    /// in this layout (with a `manifest.json` as well); such archives count as OCI.
    Oci,
}

impl ImageKind {
    /// Short name, as recorded in `template.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::DockerSave => "docker-save",
            ImageKind::Oci => "oci",
        }
    }
}

/// Tells whether an unpacked archive is a container image rather than a root filesystem.
pub fn detect(unpacked: &Path) -> Option<ImageKind> {
    let exists = |name: &str| unpacked.join(name).symlink_metadata().is_ok();
    if exists("oci-layout") && exists("index.json") {
        Some(ImageKind::Oci)
    } else if exists("manifest.json") && !exists("etc/passwd") {
        Some(ImageKind::DockerSave)
    } else {
        None
    }
}

/// The runtime settings of an image's config that a template may want to honour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `os` of the image (`linux`).
    pub os: Option<String>,
    /// `architecture` of the image (`amd64`).
    pub architecture: Option<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// `User`, if set.
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// One line describing the settings, for build logs.
    pub fn summary(&self) -> String {
        format!(
            "image config: entrypoint {:?}, cmd {:?}, workdir {:?}, user {:?}, env {:?}",
            self.entrypoint,
            self.cmd,
            self.working_dir.as_deref().unwrap_or(""),
            self.user.as_deref().unwrap_or(""),
            self.env
        )
    }
}

/// One layer of an image, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayer {
    /// The layer tar inside the unpacked archive.
    pub path: PathBuf,
    /// How it is compressed.
    pub compression: ArchiveFormat,
    /// `sha256:<hex>` the blob must hash to, when the format records it.
    pub digest: Option<String>,
    /// Its size in bytes, when the format records it.
    pub size: Option<u64>,
}

/// An image read from an unpacked archive: its layers, bottom first, and its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The format.
    pub kind: ImageKind,
    /// The layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// The runtime settings.
    pub config: ImageConfig,
}

/// Counters of one applied layer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of file data unpacked.
    pub bytes: u64,
    /// Whiteouts applied (opaque markers included).
    pub whiteouts: u64,
    /// Device nodes and fifos skipped.
    pub skipped_special: u64,
}

/// An OCI content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn describe(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// An image index (`index.json`, or a nested index blob) or an image manifest: which one is
/// told by the fields present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexOrManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The image config blob (only the parts kept).
#[derive(Debug, Default, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    config: Option<RuntimeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

impl From<ConfigBlob> for ImageConfig {
    fn from(blob: ConfigBlob) -> Self {
        let rc = blob.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            os: blob.os,
            architecture: blob.architecture,
            env: rc.env.unwrap_or_default(),
            working_dir: non_empty(rc.working_dir),
            user: non_empty(rc.user),
            entrypoint: rc.entrypoint.unwrap_or_default(),
            cmd: rc.cmd.unwrap_or_default(),
        }
    }
}

/// The architecture name images use for this host (`amd64` on x86-64).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Reads the image in `unpacked` (an archive unpacked by the importer; `archive` names it in
/// errors): its layers and config, every OCI blob read here verified against its digest.
pub fn read_image(
    unpacked: &Path,
    kind: ImageKind,
    archive: &Path,
) -> Result<Image, TemplateError> {
    let invalid = |reason: String| TemplateError::InvalidArchive {
        path: archive.to_path_buf(),
        reason,
    };
    let canon = unpacked.canonicalize().map_err(TemplateError::io(format!(
        "cannot resolve {}",
        unpacked.display()
    )))?;
    let image = match kind {
        ImageKind::Oci => read_oci(&canon),
        ImageKind::DockerSave => read_docker_save(&canon),
    }
    .map_err(invalid)?;
    if let Some(os) = image.config.os.as_deref() {
        if os != "linux" {
            return Err(invalid(format!("the image is for {os}, not linux")));
        }
    }
    if let Some(arch) = image.config.architecture.as_deref() {
        if arch != host_architecture() {
            return Err(invalid(format!(
                "the image is for {arch}; this host runs {}",
                host_architecture()
            )));
        }
    }
    Ok(image)
}

fn read_oci(root: &Path) -> Result<Image, String> {
    let index_path = contained(root, Path::new("index.json"))?;
    let top: IndexOrManifest = parse_json(&read_limited(&index_path)?, "index.json")?;
    let mut manifest = None;
    let mut current = top;
    for depth in 0..MAX_INDEX_DEPTH {
        let Some(manifests) = current.manifests.as_deref() else {
            return Err(if depth == 0 {
                "index.json lists no manifests".into()
            } else {
                "a nested index lists no manifests".into()
            });
        };
        let chosen = choose_manifest(manifests)?.clone();
        let bytes = read_blob(root, &chosen)?;
        let doc: IndexOrManifest = parse_json(&bytes, &chosen.digest)?;
        let is_index = match chosen.media_type.as_deref().or(doc.media_type.as_deref()) {
            Some(MT_OCI_INDEX | MT_DOCKER_LIST) => true,
            Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(format!(
                    "{} has media type {other}, which is not an image manifest or index",
                    chosen.digest
                ))
            }
            None => doc.manifests.is_some() && doc.layers.is_none(),
        };
        if !is_index {
            manifest = Some((chosen, doc));
            break;
        }
        current = doc;
    }
    let Some((chosen, manifest)) = manifest else {
        return Err(format!(
            "image indexes nest deeper than {MAX_INDEX_DEPTH} levels"
        ));
    };
    let config_desc = manifest
        .config
        .ok_or_else(|| format!("manifest {} has no config", chosen.digest))?;
    let config: ConfigBlob = parse_json(&read_blob(root, &config_desc)?, &config_desc.digest)?;
    let mut layers = Vec::new();
    for desc in manifest
        .layers
        .ok_or_else(|| format!("manifest {} has no layers", chosen.digest))?
    {
        let media_type = desc.media_type.as_deref().unwrap_or_default();
        let compression = layer_compression(media_type).ok_or_else(|| {
            format!(
                "layer {} has media type {media_type:?}, which is not a filesystem layer \
                 Paddock can apply",
                desc.digest
            )
        })?;
        layers.push(ImageLayer {
            path: blob_path(root, &desc.digest)?,
            compression,
            digest: Some(desc.digest),
            size: Some(desc.size),
        });
    }
    Ok(Image {
        kind: ImageKind::Oci,
        layers,
        config: config.into(),
    })
}

/// The compression of a layer by its media type; `None` for media types that are not
/// filesystem layers.
fn layer_compression(media_type: &str) -> Option<ArchiveFormat> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(ArchiveFormat::Tar),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(ArchiveFormat::TarGz),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(ArchiveFormat::TarZst),
        _ => None,
    }
}

/// Picks the manifest for this host among an index's descriptors: the only image manifest,
/// or the one for `linux/<host arch>` when there are several. Attestation manifests
/// (platform `unknown/unknown`) do not count.
fn choose_manifest(manifests: &[Descriptor]) -> Result<&Descriptor, String> {
    let arch = host_architecture();
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            let attestation = d
                .annotations
                .get("vnd.docker.reference.type")
                .is_some_and(|t| t == "attestation-manifest");
            let unknown = d.platform.as_ref().is_some_and(|p| p.os == "unknown");
            !attestation && !unknown
        })
        .collect();
    let matches = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    };
    match candidates.as_slice() {
        [] => Err("the index lists no image manifests".into()),
        [only] if only.platform.is_none() || matches(only) => Ok(only),
        [only] => Err(format!(
            "the image is for {}; this host runs linux/{arch}",
            only.platform
                .as_ref()
                .map(Platform::describe)
                .unwrap_or_default()
        )),
        several => {
            if let Some(found) = several.iter().find(|d| matches(d)) {
                return Ok(found);
            }
            let platforms: Vec<String> = several
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map(Platform::describe)
                        .unwrap_or_else(|| "no platform".into())
                })
                .collect();
            Err(format!(
                "the index lists {} manifests and none is for linux/{arch} ({}); \
                 save a single image for this platform",
                several.len(),
                platforms.join(", ")
            ))
        }
    }
}

fn read_docker_save(root: &Path) -> Result<Image, String> {
    let manifest_path = contained(root, Path::new("manifest.json"))?;
    let entries: Vec<DockerSaveEntry> =
        parse_json(&read_limited(&manifest_path)?, "manifest.json")?;
    let entry = match entries.as_slice() {
        [only] => only,
        [] => return Err("manifest.json lists no images".into()),
        several => {
            let tags: Vec<String> = several
                .iter()
                .map(|e| {
                    e.repo_tags
                        .as_ref()
                        .and_then(|t| t.first().cloned())
                        .unwrap_or_else(|| e.config.clone())
                })
                .collect();
            return Err(format!(
                "manifest.json lists {} images ({}); save just one",
                several.len(),
                tags.join(", ")
            ));
        }
    };
    let config_path = contained(root, Path::new(&entry.config))?;
    let config_bytes = read_limited(&config_path)?;
    // The config's name is its digest (`<hex>.json`, or `blobs/sha256/<hex>` since Docker 25).
    if let Some(digest) = digest_from_name(&entry.config) {
        verify(&config_bytes, &digest, None, &entry.config)?;
    }
    let config: ConfigBlob = parse_json(&config_bytes, &entry.config)?;
    let mut layers = Vec::new();
    for name in &entry.layers {
        let path = contained(root, Path::new(name))?;
        let mut head = Vec::with_capacity(512);
        File::open(&path)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .map_err(|e| format!("cannot read layer {name}: {e}"))?;
        // An empty layer is a tar of zero blocks: plain tar whatever its name.
        let compression = detect_format(&head, "layer.tar")
            .map_err(|reason| format!("layer {name}: {reason}"))?;
        // Layer tars are not named by their digest, except in Docker 25's `blobs/sha256/`.
        let digest = name
            .starts_with("blobs/")
            .then(|| digest_from_name(name))
            .flatten();
        layers.push(ImageLayer {
            path,
            compression,
            digest,
            size: None,
        });
    }
    Ok(Image {
        kind: ImageKind::DockerSave,
        layers,
        config: config.into(),
    })
}

/// `sha256:<hex>` when a file name is a digest: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_from_name(name: &str) -> Option<String> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    is_sha256_hex(hex).then(|| format!("sha256:{hex}"))
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The path of a blob in an OCI layout, checked to be a sha256 digest inside the layout.
fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| is_sha256_hex(hex))
        .ok_or_else(|| format!("unsupported or malformed digest {digest:?} (need sha256)"))?;
    contained(root, &Path::new("blobs/sha256").join(hex))
}

/// `root/name` with symlinks resolved, refused unless it is a regular file inside `root`
/// (`root` is canonical). A hostile archive could otherwise point a layer at a host file.
fn contained(root: &Path, name: &Path) -> Result<PathBuf, String> {
    if name.is_absolute() || name.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{} points outside the archive", name.display()));
    }
    let path = root
        .join(name)
        .canonicalize()
        .map_err(|e| format!("{} is missing from the archive: {e}", name.display()))?;
    if !path.starts_with(root) {
        return Err(format!("{} points outside the archive", name.display()));
    }
    if !path.is_file() {
        return Err(format!("{} is not a file", name.display()));
    }
    Ok(path)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(format!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_JSON_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// Reads a JSON blob of an OCI layout and checks it against its descriptor.
fn read_blob(root: &Path, desc: &Descriptor) -> Result<Vec<u8>, String> {
    let bytes = read_limited(&blob_path(root, &desc.digest)?)?;
    verify(&bytes, &desc.digest, Some(desc.size), &desc.digest)?;
    Ok(bytes)
}

fn verify(bytes: &[u8], digest: &str, size: Option<u64>, what: &str) -> Result<(), String> {
    let got = format!("sha256:{}", hex_lower(&Sha256::digest(bytes)));
    if got != digest {
        return Err(digest_mismatch(what, digest, &got));
    }
    if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(format!(
            "{what} is {} bytes, its descriptor says {size}",
            bytes.len()
        ));
    }
    Ok(())
}

fn digest_mismatch(what: &str, want: &str, got: &str) -> String {
    format!("digest mismatch: {what} hashes to {got}, not {want}")
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid: {e}"))
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Applies `layer` onto `rootfs` (see the module docs). The blob's digest and size, when
/// known, are checked over all of its bytes; a mismatch is reported in preference to any
/// unpack error it may have caused.
pub fn apply_layer(
    layer: &ImageLayer,
    rootfs: &Path,
    archive: &Path,
) -> Result<LayerStats, TemplateError> {
    let invalid = |reason: String| TemplateError::InvalidArchive {
        path: archive.to_path_buf(),
        reason,
    };
    let file = File::open(&layer.path).map_err(TemplateError::io(format!(
        "cannot open layer {}",
        layer.path.display()
    )))?;
    let mut hashing = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let applied = (|| {
        let decoded: Box<dyn Read + '_> = match layer.compression {
            ArchiveFormat::Tar => Box::new(&mut hashing),
            ArchiveFormat::TarGz => Box::new(flate2::read::MultiGzDecoder::new(&mut hashing)),
            ArchiveFormat::TarZst => {
                Box::new(zstd::stream::read::Decoder::new(&mut hashing).map_err(
                    TemplateError::io(format!("cannot start zstd on {}", layer.path.display())),
                )?)
            }
        };
        apply_entries(decoded, rootfs, archive)
    })();
    if let Some(want) = &layer.digest {
        // The tar reader stops at the end-of-archive blocks; hash what follows too.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(TemplateError::io(format!(
            "cannot read layer {}",
            layer.path.display()
        )))?;
        let got = format!("sha256:{}", hex_lower(&hashing.hasher.finalize()));
        if &got != want {
            return Err(invalid(digest_mismatch(
                &format!("layer {want}"),
                want,
                &got,
            )));
        }
        if let Some(size) = layer.size.filter(|s| *s != hashing.bytes) {
            return Err(invalid(format!(
                "layer {want} is {} bytes, its descriptor says {size}",
                hashing.bytes
            )));
        }
    }
    applied
}

/// A tar entry's path relative to the root: `.`, `/` and empty components dropped; `None`
/// if it has a `..` component.
pub(crate) fn relative_path(path: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(rel)
}

/// Unpacks one layer's entries onto `rootfs`, applying its whiteouts as they come (they
/// hide what lower layers left, never what this layer already wrote). Directories are
/// unpacked last, so their modes and times survive their children and the whiteouts.
fn apply_entries(
    reader: impl Read,
    rootfs: &Path,
    archive_path: &Path,
) -> Result<LayerStats, TemplateError> {
    let mut archive = super::rootfs_archive(reader);
    let invalid = |reason: String| TemplateError::InvalidArchive {
        path: archive_path.to_path_buf(),
        reason,
    };
    let canon_root = rootfs.canonicalize().map_err(TemplateError::io(format!(
        "cannot resolve {}",
        rootfs.display()
    )))?;
    let mut stats = LayerStats::default();
    // Paths this layer wrote, and their parents: whiteouts leave them alone.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut directories = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("cannot read layer entries: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("cannot read layer entry: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| invalid(format!("invalid path {raw:?}: {e}")))?
            .into_owned();
        let rel = relative_path(&path)
            .ok_or_else(|| invalid(format!("entry {raw:?} escapes the root")))?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself: its mode and owner are the importer's.
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            stats.whiteouts += 1;
            if name == OPAQUE_MARKER {
                whiteout(&canon_root, &parent, None, &written, archive_path)?;
            } else if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.` names are aufs metadata (hard link dirs): nothing to do.
                stats.whiteouts -= 1;
            } else {
                let hidden = OsStr::from_bytes(hidden);
                whiteout(&canon_root, &parent, Some(hidden), &written, archive_path)?;
            }
            continue;
        }
        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                stats.skipped_special += 1;
                continue;
            }
            _ => {}
        }
        let is_dir = kind == EntryType::Directory;
        replace_other_type(&canon_root, &parent, &name, is_dir)?;
        for ancestor in rel.ancestors() {
            if ancestor.as_os_str().is_empty() || !written.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        if is_dir {
            directories.push(entry);
            continue;
        }
        stats.entries += 1;
        stats.bytes += entry.header().size().unwrap_or(0);
        unpack_one(&mut entry, &raw, archive_path, rootfs)?;
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        stats.entries += 1;
        let raw = String::from_utf8_lossy(&dir.path_bytes()).into_owned();
        unpack_one(&mut dir, &raw, archive_path, rootfs)?;
    }
    Ok(stats)
}

/// Resolves `rel` (a directory of the tree) to a host path; `None` if it does not exist.
/// Fails if symlinks take it outside the tree.
fn resolve_dir(
    canon_root: &Path,
    rel: &Path,
    archive_path: &Path,
) -> Result<Option<PathBuf>, TemplateError> {
    let path = canon_root.join(rel);
    let canon = match path.canonicalize() {
        Ok(canon) => canon,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(TemplateError::Io {
                context: format!("cannot resolve {}", path.display()),
                source,
            })
        }
    };
    if !canon.starts_with(canon_root) {
        return Err(TemplateError::InvalidArchive {
            path: archive_path.to_path_buf(),
            reason: format!("{} leads outside the root through a symlink", rel.display()),
        });
    }
    Ok(canon.is_dir().then_some(canon))
}

/// Applies a whiteout in directory `dir`: removes `name` there, or with `None` (an opaque
/// marker) everything in it, except what this layer wrote (`written`).
fn whiteout(
    canon_root: &Path,
    dir: &Path,
    name: Option<&OsStr>,
    written: &HashSet<PathBuf>,
    archive_path: &Path,
) -> Result<(), TemplateError> {
    let Some(host_dir) = resolve_dir(canon_root, dir, archive_path)? else {
        return Ok(());
    };
    match name {
        Some(name) => {
            if written.contains(&dir.join(name)) {
                return Ok(());
            }
            remove_any(&host_dir.join(name))
        }
        None => clear_lower(&host_dir, dir, written),
    }
}

/// Removes everything under `host_dir` (the tree's `rel`) that is not in `written`, keeping
/// written directories but clearing what lower layers left in them.
fn clear_lower(
    host_dir: &Path,
    rel: &Path,
    written: &HashSet<PathBuf>,
) -> Result<(), TemplateError> {
    let children = std::fs::read_dir(host_dir).map_err(TemplateError::io(format!(
        "cannot list {}",
        host_dir.display()
    )))?;
    for child in children {
        let child = child.map_err(TemplateError::io(format!(
            "cannot list {}",
            host_dir.display()
        )))?;
        let child_rel = rel.join(child.file_name());
        let path = child.path();
        if !written.contains(&child_rel) {
            remove_any(&path)?;
        } else if child.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            clear_lower(&path, &child_rel, written)?;
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; a missing path is fine.
fn remove_any(path: &Path) -> Result<(), TemplateError> {
    let removed = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TemplateError::Io {
            context: format!("cannot remove {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Clears the way for an entry `name` in directory `parent`: a directory entry replaces a
/// non-directory, any other entry replaces whatever is there (tar does not unlink a
/// directory, nor anything before a hard link). Directories stay for directory entries, so
/// what lower layers put in them remains. A parent outside the tree is left for the unpack
/// to refuse.
fn replace_other_type(
    canon_root: &Path,
    parent: &Path,
    name: &OsString,
    is_dir: bool,
) -> Result<(), TemplateError> {
    let host_parent = match canon_root.join(parent).canonicalize() {
        Ok(p) if p.starts_with(canon_root) => p,
        _ => return Ok(()),
    };
    let target = host_parent.join(name);
    match target.symlink_metadata() {
        Ok(m) if m.is_dir() && is_dir => Ok(()),
        Ok(_) => remove_any(&target),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(digest: &str, platform: Option<(&str, &str)>) -> Descriptor {
        Descriptor {
            media_type: Some(MT_OCI_MANIFEST.into()),
            digest: digest.into(),
            size: 1,
            platform: platform.map(|(os, architecture)| Platform {
                architecture: architecture.into(),
                os: os.into(),
                variant: None,
            }),
            annotations: Default::default(),
        }
    }

    #[test]
    fn chooses_the_host_platform() {
        let arch = host_architecture();
        let list = [
            desc("a", Some(("linux", "s390x"))),
            desc("b", Some(("linux", arch))),
            desc("c", Some(("unknown", "unknown"))),
        ];
        assert_eq!(choose_manifest(&list).expect("found").digest, "b");
        let single = [desc("x", None), desc("att", Some(("unknown", "unknown")))];
        assert_eq!(choose_manifest(&single).expect("single").digest, "x");
        let err = choose_manifest(&[desc("a", Some(("linux", "s390x")))]).expect_err("foreign");
        assert!(err.contains("linux/s390x"), "{err}");
        let err = choose_manifest(&[desc("a", None), desc("b", None)]).expect_err("ambiguous");
        assert!(err.contains("2 manifests"), "{err}");
        assert!(choose_manifest(&[]).is_err());
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(ArchiveFormat::TarZst)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.config.v1+json"),
            None
        );
    }

    #[test]
    fn blob_paths_stay_inside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("canon");
        let hex = "a".repeat(64);
        assert!(blob_path(&root, "sha512:abc").is_err());
        assert!(blob_path(&root, "sha256:../../etc/passwd").is_err());
        std::fs::create_dir_all(root.join("blobs/sha256")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/hostname", root.join("blobs/sha256").join(&hex))
            .expect("symlink");
        let err = blob_path(&root, &format!("sha256:{hex}")).expect_err("outside");
        assert!(err.contains("outside"), "{err}");
        assert!(contained(&root, Path::new("../x")).is_err());
        assert_eq!(
            digest_from_name(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_from_name("abc.json"), None);
    }

    #[test]
    fn verifies_digest_and_size() {
        let d = format!("sha256:{}", hex_lower(&Sha256::digest(b"hello")));
        assert!(verify(b"hello", &d, Some(5), "x").is_ok());
        assert!(verify(b"hellO", &d, Some(5), "x")
            .expect_err("bad digest")
            .contains("digest mismatch"));
        assert!(verify(b"hello", &d, Some(6), "x").is_err());
    }

    #[test]
    fn whiteouts_keep_what_the_layer_wrote() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("canon");
        for d in ["d/sub", "d/kept"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in ["d/old", "d/sub/old", "d/kept/new", "gone"] {
            std::fs::write(root.join(f), "x").expect("write");
        }
        let written: HashSet<PathBuf> = ["d", "d/kept", "d/kept/new"]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        whiteout(&root, Path::new("d"), None, &written, Path::new("/a")).expect("opaque");
        assert!(root.join("d/kept/new").exists());
        assert!(!root.join("d/old").exists() && !root.join("d/sub").exists());
        whiteout(
            &root,
            Path::new(""),
            Some(OsStr::new("gone")),
            &written,
            Path::new("/a"),
        )
        .expect("whiteout");
        assert!(!root.join("gone").exists());
        // Missing targets are fine.
        whiteout(&root, Path::new("nope"), None, &written, Path::new("/a")).expect("missing");
        std::os::unix::fs::symlink("/", root.join("out")).expect("symlink");
        assert!(whiteout(
            &root,
            Path::new("out"),
            Some(OsStr::new("etc")),
            &written,
            Path::new("/a")
        )
        .is_err());
    }
}
