//! Importing a root filesystem as a template, from
//!
//! - a rootfs tarball: `.tar`, `.tar.gz`/`.tgz` and `.tar.zst`, told apart by their magic
//!   bytes (a `docker export` of a container is a plain tar);
//! - a container image: `docker save` output or an OCI image layout packed as a tar (either
//!   possibly compressed), whose layers are applied in order onto one tree with their
//!   whiteouts ([`image`]).
//!
//! Entries are unpacked with permissions, ownership, xattrs, symlinks and hard links preserved;
//! an entry that would land outside the tree fails the import. Device nodes and fifos are
//! skipped (the runtime provides `/dev`). Afterwards the `user` account is ensured
//! ([`super::users`]).
//!
//! Importing onto an existing name — `base` included — is refused: delete the template first.
//! Importing `base` before it was ever built is allowed and replaces the debootstrap build.

pub mod image;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use paddock_domain::{Resources, TemplateName};
use tar::EntryType;

use super::{
    users, Progress, Template, TemplateError, TemplateMeta, TemplateSource, TemplateStore,
};

/// A supported (or recognised but unsupported) archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// Uncompressed tar.
    Tar,
    /// gzip-compressed tar.
    TarGz,
    /// zstd-compressed tar.
    TarZst,
}

impl ArchiveFormat {
    /// Short name, as recorded in `template.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarZst => "tar.zst",
        }
    }
}

/// Tells the format from the first bytes of a file (at least 262 are needed for plain tar);
/// `file_name` is a fallback for old tar files without the `ustar` magic.
pub fn detect_format(head: &[u8], file_name: &str) -> Result<ArchiveFormat, String> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(ArchiveFormat::TarGz);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(ArchiveFormat::TarZst);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Err(
            "xz-compressed archives are not supported; recompress with zstd or gzip".into(),
        );
    }
    if head.starts_with(b"BZh") {
        return Err(
            "bzip2-compressed archives are not supported; recompress with zstd or gzip".into(),
        );
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(ArchiveFormat::Tar);
    }
    if file_name.ends_with(".tar") && head.len() >= 512 {
        return Ok(ArchiveFormat::Tar);
    }
    Err("not a tar, tar.gz or tar.zst archive".into())
}

impl TemplateStore {
    /// Imports a rootfs tarball, `docker save` archive or OCI image layout tarball as template
    /// `name`. Fails with [`TemplateError::AlreadyExists`] if the name is taken,
    /// [`TemplateError::InvalidArchive`] for unknown formats, entries escaping the root, blobs
    /// not matching their digest or images for another platform, and
    /// [`TemplateError::NotARootfs`] if there is no `/etc/passwd`.
    pub async fn import(
        &self,
        name: &TemplateName,
        archive: &Path,
        progress: Progress<'_>,
    ) -> Result<Template, TemplateError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        if self.get(name)?.is_some() {
            return Err(TemplateError::AlreadyExists(name.clone()));
        }
        let archive = std::path::absolute(archive).map_err(TemplateError::io(format!(
            "cannot resolve {}",
            archive.display()
        )))?;
        let build = self.start_build(name)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = {
            let archive = archive.clone();
            let rootfs = build.rootfs();
            let dir = build.dir.clone();
            tokio::task::spawn_blocking(move || unpack_rootfs(&archive, &dir, &rootfs, &tx))
        };
        while let Some(line) = rx.recv().await {
            progress(&format!("[{name}] {line}"));
        }
        let format = task.await.map_err(|e| TemplateError::Io {
            context: "the unpack task failed".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let meta = TemplateMeta {
            name: name.clone(),
            resources: Resources::default(),
            created_at: Utc::now(),
            source: TemplateSource::Import { archive, format },
            config: Default::default(),
        };
        let template = self.commit(build, &meta)?;
        progress(&format!(
            "[{name}] template ready at {}",
            template.top_layer().display()
        ));
        Ok(template)
    }
}

/// Unpacks `archive` into `<build>/unpack`; for a rootfs tarball, finds the root of the tree
/// in it and moves it to `rootfs`, for a container image applies its layers onto `rootfs`.
/// Then ensures the `user` account and the directories the runtime needs. Returns the format
/// to record. Runs on a blocking thread.
fn unpack_rootfs(
    archive: &Path,
    build: &Path,
    rootfs: &Path,
    tx: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<String, TemplateError> {
    let say = |line: String| {
        let _ = tx.send(line);
    };
    let file = std::fs::File::open(archive).map_err(TemplateError::io(format!(
        "cannot open {}",
        archive.display()
    )))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .map_err(TemplateError::io(format!(
            "cannot read {}",
            archive.display()
        )))?
        .to_vec();
    let file_name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let format =
        detect_format(&head, file_name).map_err(|reason| TemplateError::InvalidArchive {
            path: archive.to_path_buf(),
            reason,
        })?;
    say(format!(
        "unpacking {} ({})",
        archive.display(),
        format.as_str()
    ));

    let decoded: Box<dyn Read> = match format {
        ArchiveFormat::Tar => Box::new(reader),
        ArchiveFormat::TarGz => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveFormat::TarZst => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(
                TemplateError::io(format!("cannot start zstd on {}", archive.display())),
            )?)
        }
    };
    let unpack_dir = build.join("unpack");
    std::fs::create_dir(&unpack_dir).map_err(TemplateError::io(format!(
        "cannot create {}",
        unpack_dir.display()
    )))?;
    let stats = unpack_entries(decoded, archive, &unpack_dir)?;
    say(format!(
        "unpacked {} entries ({} MiB){}",
        stats.entries,
        stats.bytes >> 20,
        if stats.skipped_special > 0 {
            format!(", skipped {} device nodes/fifos", stats.skipped_special)
        } else {
            String::new()
        }
    ));

    let recorded = match image::detect(&unpack_dir) {
        None => {
            let root = find_root(&unpack_dir).map_err(TemplateError::NotARootfs)?;
            if root != unpack_dir {
                say(format!(
                    "using {} of the archive as the root",
                    root.strip_prefix(&unpack_dir).unwrap_or(&root).display()
                ));
            }
            std::fs::rename(&root, rootfs).map_err(TemplateError::io(format!(
                "cannot move {} into place",
                root.display()
            )))?;
            format.as_str().to_string()
        }
        Some(kind) => {
            apply_image(&unpack_dir, kind, archive, rootfs, &say)?;
            kind.as_str().to_string()
        }
    };
    remove_unpack_dir(&unpack_dir)?;
    for change in users::ensure_user(rootfs)? {
        say(change);
    }
    // Mount points and directories the runtime and envd rely on.
    for (dir, mode) in [
        ("/usr/local/bin", 0o755),
        ("/run/paddock", 0o755),
        ("/tmp", 0o1777),
    ] {
        let path = users::resolve_in_root(rootfs, Path::new(dir))?;
        if !path.is_dir() {
            std::fs::create_dir_all(&path).map_err(TemplateError::io(format!(
                "cannot create {}",
                path.display()
            )))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(
                TemplateError::io(format!("cannot chmod {}", path.display())),
            )?;
        }
    }
    Ok(recorded)
}

/// Reads the image unpacked in `unpacked` and applies its layers, bottom first, onto a new
/// `rootfs` directory.
fn apply_image(
    unpacked: &Path,
    kind: image::ImageKind,
    archive: &Path,
    rootfs: &Path,
    say: &dyn Fn(String),
) -> Result<(), TemplateError> {
    let image = image::read_image(unpacked, kind, archive)?;
    say(format!(
        "{} image with {} layers",
        kind.as_str(),
        image.layers.len()
    ));
    let config = image.config.summary();
    tracing::info!(archive = %archive.display(), "{config}");
    say(config);
    std::fs::create_dir(rootfs).map_err(TemplateError::io(format!(
        "cannot create {}",
        rootfs.display()
    )))?;
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755)).map_err(
        TemplateError::io(format!("cannot chmod {}", rootfs.display())),
    )?;
    let count = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        let name = layer.digest.clone().unwrap_or_else(|| {
            layer
                .path
                .strip_prefix(unpacked)
                .unwrap_or(&layer.path)
                .display()
                .to_string()
        });
        let stats = image::apply_layer(layer, rootfs, archive)?;
        say(format!(
            "layer {}/{count} {name} ({}): {} entries ({} MiB), {} whiteouts{}",
            i + 1,
            layer.compression.as_str(),
            stats.entries,
            stats.bytes >> 20,
            stats.whiteouts,
            if stats.skipped_special > 0 {
                format!(", skipped {} device nodes/fifos", stats.skipped_special)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// Removes what is left of the unpacked archive (image blobs, a wrapper directory).
fn remove_unpack_dir(unpack_dir: &Path) -> Result<(), TemplateError> {
    match std::fs::remove_dir_all(unpack_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TemplateError::Io {
            context: format!("cannot remove {}", unpack_dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Counters of an unpack.
#[derive(Debug, Default)]
struct UnpackStats {
    entries: u64,
    bytes: u64,
    skipped_special: u64,
}

/// A tar reader set up to keep everything a root filesystem needs: permissions, owners,
/// times and xattrs, overwriting what is there.
pub(crate) fn rootfs_archive<R: Read>(reader: R) -> tar::Archive<R> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    archive
}

/// Unpacks every entry below `dst`, directories last (so read-only directories do not block
/// their children). Any entry that would land outside `dst` fails the whole unpack.
fn unpack_entries(
    reader: impl Read,
    archive_path: &Path,
    dst: &Path,
) -> Result<UnpackStats, TemplateError> {
    let mut archive = rootfs_archive(reader);
    let invalid = |reason: String| TemplateError::InvalidArchive {
        path: archive_path.to_path_buf(),
        reason,
    };
    let mut stats = UnpackStats::default();
    let mut directories = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("cannot read entries: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("cannot read entry: {e}")))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match entry.header().entry_type() {
            EntryType::Directory => {
                directories.push(entry);
                continue;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                stats.skipped_special += 1;
                continue;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            _ => {}
        }
        stats.entries += 1;
        stats.bytes += entry.header().size().unwrap_or(0);
        unpack_one(&mut entry, &path, archive_path, dst)?;
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        stats.entries += 1;
        let path = String::from_utf8_lossy(&dir.path_bytes()).into_owned();
        unpack_one(&mut dir, &path, archive_path, dst)?;
    }
    Ok(stats)
}

fn unpack_one<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &str,
    archive_path: &Path,
    dst: &Path,
) -> Result<(), TemplateError> {
    match entry.unpack_in(dst) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TemplateError::InvalidArchive {
            path: archive_path.to_path_buf(),
            reason: format!("entry {path:?} escapes the root"),
        }),
        Err(source) => Err(TemplateError::Unpack {
            path: archive_path.to_path_buf(),
            entry: path.to_string(),
            source,
        }),
    }
}

/// The directory of the unpacked tree that is the root filesystem: the tree itself, or its
/// only top-level directory when the archive wraps the rootfs in one (`rootfs/etc/passwd`).
fn find_root(unpacked: &Path) -> Result<PathBuf, String> {
    if unpacked.join("etc/passwd").symlink_metadata().is_ok() {
        return Ok(unpacked.to_path_buf());
    }
    let top: Vec<PathBuf> = std::fs::read_dir(unpacked)
        .map_err(|e| format!("cannot list the unpacked tree: {e}"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    if let [only] = top.as_slice() {
        if only.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false)
            && only.join("etc/passwd").symlink_metadata().is_ok()
        {
            return Ok(only.clone());
        }
    }
    Err("/etc/passwd is missing from the archive".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_head() -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path("etc/passwd").expect("path");
        h.set_size(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn detects_formats_by_magic() {
        assert_eq!(detect_format(&tar_head(), "x.bin"), Ok(ArchiveFormat::Tar));
        assert_eq!(
            detect_format(&[0x1f, 0x8b, 8, 0], "x.tar"),
            Ok(ArchiveFormat::TarGz)
        );
        assert_eq!(
            detect_format(&[0x28, 0xb5, 0x2f, 0xfd, 0], "x.tar.gz"),
            Ok(ArchiveFormat::TarZst)
        );
        assert!(
            detect_format(&[0xfd, b'7', b'z', b'X', b'Z', 0], "x.tar.xz")
                .expect_err("must fail")
                .contains("xz")
        );
        assert!(detect_format(b"BZh91AY", "x.tar.bz2")
            .expect_err("must fail")
            .contains("bzip2"));
        assert!(detect_format(b"hello world", "x.tar").is_err());
        let mut old = tar_head();
        old[257..262].copy_from_slice(b"\0\0\0\0\0");
        assert_eq!(detect_format(&old, "x.tar"), Ok(ArchiveFormat::Tar));
        assert!(detect_format(&old, "x.img").is_err());
    }

    #[test]
    fn finds_wrapped_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("rootfs/etc")).expect("mkdir");
        assert!(find_root(tmp.path()).is_err());
        std::fs::write(tmp.path().join("rootfs/etc/passwd"), "").expect("write");
        assert_eq!(find_root(tmp.path()), Ok(tmp.path().join("rootfs")));
    }

    #[test]
    fn refuses_escaping_entries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut data = Vec::new();
        {
            let mut b = tar::Builder::new(&mut data);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_size(1);
            h.set_mode(0o644);
            // `set_path` refuses `..`; write the raw name like a hostile archive would.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).expect("append");
            b.finish().expect("finish");
        }
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        let err = unpack_entries(&data[..], Path::new("/a.tar"), &dst).expect_err("must fail");
        assert!(err.to_string().contains("escapes the root"), "{err}");
        assert!(!tmp.path().join("escape").exists());
    }
}
