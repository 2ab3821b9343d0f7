//! Base images of template builds: what a recipe's `fromImage` reference names and the
//! template a build starting from it runs on. Paddock reaches no container registry, so it
//! provides only the images it can make itself ([`ImageRef`]):
//!
//! - `e2bdev/base` (E2B's default image): the `base` template ([`TemplateStore::ensure_base`]);
//! - `debian:<suite>`: Debian bootstrapped from the host's mirror ([`DEBIAN_PACKAGES`] over
//!   minbase, plus the `user` account), kept as hidden template `image-debian-<suite>`. An
//!   alias (`stable`, `latest`) is cached under the alias and, like a pulled docker tag, stays
//!   what it was until that template is deleted;
//! - an image or rootfs archive on this server (`/path.tar[.gz|.zst]`, `oci-archive:/path`,
//!   `docker-archive:/path`): imported ([`TemplateStore::import`]) as hidden template
//!   `image-archive-<stem>-<fingerprint>`, where the fingerprint hashes the file's path, size,
//!   mtime and inode, so a changed file is imported again (and its older import deleted).
//!
//! Anything else is refused with [`ImageRefError`]. This module does not build recipes
//! (the node's builder does) nor list or hide the `image-` templates.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use paddock_domain::TemplateName;
use paddock_node_contract::build::IMAGE_PREFIX;
use sha2::{Digest, Sha256};

use super::base::{DebianSpec, BASE_TEMPLATE};
use super::{Progress, Template, TemplateError, TemplateSource, TemplateStore};

/// Packages added to minbase for `debian:<suite>` images: what envd's commands and the SDKs'
/// helpers use (a login shell, `ps`, `ss`, TLS roots, `curl`, `sudo` for the `user` account).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "procps",
    "iproute2",
    "ca-certificates",
    "curl",
    "sudo",
];

/// Debian release codenames `debian:<tag>` may name, with their version numbers (the mirror
/// must still serve the release: archived ones such as buster are not on it).
const CODENAMES: &[(&str, &str)] = &[
    ("bullseye", "11"),
    ("bookworm", "12"),
    ("trixie", "13"),
    ("forky", "14"),
    ("duke", "15"),
];
/// Suite aliases the mirror serves and debootstrap takes, kept as they are.
const ALIASES: &[&str] = &["stable", "oldstable", "oldoldstable", "testing"];
/// Registry hosts that mean Docker Hub, as written before an image name.
const DOCKER_HUB: &[&str] = &["docker.io/", "index.docker.io/", "registry-1.docker.io/"];
/// Name prefix of imported archives' templates.
const ARCHIVE_PREFIX: &str = "archive-";
/// Longest part of an archive's file name kept in its template's name.
const MAX_STEM: usize = 24;

/// Why an image reference names nothing this node can provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The reference is empty.
    #[error("empty image reference")]
    Empty,
    /// An image that only a registry has.
    #[error(
        "image '{0}' is not available: Paddock reaches no container registry; build from a \
         template instead (fromTemplate, or FROM <template> such as base), from \
         debian:<suite> (debian:bookworm, debian:trixie, ...), or `docker save` the image on a \
         machine that has it, copy the archive to the server and give its absolute path \
         (/srv/images/python.tar)"
    )]
    Unavailable(String),
    /// `debian:<tag>` with a tag that is no suite.
    #[error(
        "'{reference}': unknown Debian suite '{tag}'; use a codename (bullseye, bookworm, \
         trixie, forky, sid), a version (11 to 15), stable, oldstable, oldoldstable, testing \
         or unstable, optionally with -slim"
    )]
    UnknownSuite {
        /// The reference.
        reference: String,
        /// Its tag.
        tag: String,
    },
    /// An archive given by a relative path.
    #[error(
        "image archive path '{0}' is not absolute; give the archive's absolute path on the server"
    )]
    RelativePath(String),
}

/// What an image reference names, as far as this node can provide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// E2B's default image (`e2bdev/base`): the `base` template.
    Base,
    /// A Debian suite bootstrapped from the host's mirror.
    Debian {
        /// The suite as debootstrap takes it: a codename or an alias (`stable`).
        suite: String,
    },
    /// An image or rootfs archive on this server.
    Archive {
        /// Its absolute path, as given.
        path: PathBuf,
    },
}

impl ImageRef {
    /// Parses a `fromImage` reference. Docker Hub spellings are accepted for the images
    /// Paddock can make (`docker.io/library/debian:12-slim` is `debian:bookworm`); archives
    /// are absolute paths, optionally after `oci-archive:` or `docker-archive:`.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageRefError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let path = ["oci-archive:", "docker-archive:"]
            .iter()
            .find_map(|p| reference.strip_prefix(p))
            .or_else(|| reference.starts_with('/').then_some(reference))
            .or_else(|| {
                (reference.starts_with("./") || reference.starts_with("../")).then_some(reference)
            });
        if let Some(path) = path {
            if !path.starts_with('/') {
                return Err(ImageRefError::RelativePath(path.to_string()));
            }
            return Ok(ImageRef::Archive { path: path.into() });
        }
        let unavailable = || ImageRefError::Unavailable(reference.to_string());
        if reference.contains('@') {
            // A digest names one exact image, which only a registry has.
            return Err(unavailable());
        }
        let (name, tag) = match reference.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (reference, None),
        };
        let name = DOCKER_HUB
            .iter()
            .find_map(|host| name.strip_prefix(host))
            .unwrap_or(name);
        let name = name.strip_prefix("library/").unwrap_or(name);
        match (name, tag) {
            ("e2bdev/base", None | Some("latest" | "default")) => Ok(ImageRef::Base),
            ("debian", tag) => debian_suite(tag.unwrap_or("latest"))
                .map(|suite| ImageRef::Debian { suite })
                .ok_or_else(|| ImageRefError::UnknownSuite {
                    reference: reference.to_string(),
                    tag: tag.unwrap_or_default().to_string(),
                }),
            _ => Err(unavailable()),
        }
    }

    /// The template that stands for the image: `base`, `image-debian-<suite>`, or
    /// `image-archive-<stem>-<fingerprint>` (which reads the archive's metadata, so it fails
    /// if the archive is missing).
    pub fn template_name(&self) -> Result<TemplateName, TemplateError> {
        match self {
            ImageRef::Base => Ok(parse_name(BASE_TEMPLATE)),
            ImageRef::Debian { suite } => Ok(parse_name(&format!("{IMAGE_PREFIX}debian-{suite}"))),
            ImageRef::Archive { path } => Ok(ArchiveId::of(path)?.name),
        }
    }
}

/// The hidden template name of the image `reference` (prefix `image-`, [`IMAGE_PREFIX`]; `base`
/// for `e2bdev/base`). For an archive, reads its metadata: the name changes with the file.
pub fn image_template_name(reference: &str) -> Result<TemplateName, TemplateError> {
    ImageRef::parse(reference)?.template_name()
}

impl TemplateStore {
    /// The template a build starting from image `reference` runs on, making it if needed
    /// (once; concurrent calls for one image build once): `base` is built by debootstrap if
    /// missing, a Debian suite is bootstrapped, an archive is imported (again when it changed
    /// since, deleting the older import). References no registry-free node can provide fail
    /// with [`TemplateError::Image`].
    pub async fn resolve_image(
        &self,
        reference: &str,
        progress: Progress<'_>,
    ) -> Result<Template, TemplateError> {
        let image = ImageRef::parse(reference)?;
        let template = match &image {
            ImageRef::Base => self.ensure_base(progress).await?,
            ImageRef::Debian { suite } => {
                let spec = DebianSpec {
                    suite,
                    packages: DEBIAN_PACKAGES,
                };
                self.ensure_debian(&image.template_name()?, &spec, progress)
                    .await?
            }
            ImageRef::Archive { path } => self.resolve_archive(path, progress).await?,
        };
        progress(&format!(
            "[image] {reference} is template {}",
            template.name
        ));
        Ok(template)
    }

    /// The template of the archive at `path`, importing it if this version of the file was
    /// not imported yet.
    async fn resolve_archive(
        &self,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<Template, TemplateError> {
        let id = ArchiveId::of(path)?;
        if let Some(t) = self.get(&id.name)? {
            return Ok(t);
        }
        let template = match self.import(&id.name, &id.path, progress).await {
            Ok(t) => t,
            // A concurrent call imported it while this one waited for the name's lock.
            Err(TemplateError::AlreadyExists(_)) => self
                .get(&id.name)?
                .ok_or_else(|| TemplateError::NotFound(id.name.clone()))?,
            Err(e) => return Err(e),
        };
        self.remove_older_imports(&id, progress);
        Ok(template)
    }

    /// Deletes the templates of earlier versions of the archive `id` names. Failures are
    /// logged: the new import is in place either way.
    fn remove_older_imports(&self, id: &ArchiveId, progress: Progress<'_>) {
        let prefix = format!("{IMAGE_PREFIX}{ARCHIVE_PREFIX}");
        let templates = match self.list() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list templates to remove older image imports");
                return;
            }
        };
        for t in templates {
            let same_archive =
                matches!(&t.source, TemplateSource::Import { archive, .. } if *archive == id.path);
            if t.name == id.name || !same_archive || !t.name.as_str().starts_with(&prefix) {
                continue;
            }
            match self.delete(&t.name) {
                Ok(_) => progress(&format!(
                    "[image] removed {}, the import of an earlier version of {}",
                    t.name,
                    id.path.display()
                )),
                Err(e) => {
                    tracing::warn!(template = %t.name, error = %e, "cannot remove an older image import")
                }
            }
        }
    }
}

/// An archive on the server and the template name of its current version.
#[derive(Debug)]
struct ArchiveId {
    /// The archive's canonical path.
    path: PathBuf,
    /// `image-archive-<stem>-<hash of path, size, mtime, device and inode>`.
    name: TemplateName,
}

impl ArchiveId {
    fn of(path: &Path) -> Result<ArchiveId, TemplateError> {
        let canonical = std::fs::canonicalize(path).map_err(TemplateError::io(format!(
            "cannot find image archive {}",
            path.display()
        )))?;
        let meta = std::fs::metadata(&canonical).map_err(TemplateError::io(format!(
            "cannot read image archive {}",
            canonical.display()
        )))?;
        if !meta.is_file() {
            return Err(TemplateError::InvalidArchive {
                path: canonical,
                reason: "not a regular file".into(),
            });
        }
        let mut h = Sha256::new();
        h.update(canonical.as_os_str().as_bytes());
        for n in [
            meta.len(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.dev(),
            meta.ino(),
        ] {
            h.update(b"\0");
            h.update(n.to_le_bytes());
        }
        let hash: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = parse_name(&format!(
            "{IMAGE_PREFIX}{ARCHIVE_PREFIX}{}-{hash}",
            archive_stem(&canonical)
        ));
        Ok(ArchiveId {
            path: canonical,
            name,
        })
    }
}

/// The part of an archive's file name its template's name keeps: without the archive
/// extensions, lowercase, characters a template name cannot hold replaced by `-`, at most
/// [`MAX_STEM`] bytes; `image` when nothing is left.
fn archive_stem(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut stem = file.as_str();
    while let Some(shorter) = [".gz", ".zst", ".tgz", ".tzst", ".tar", ".oci"]
        .iter()
        .find_map(|ext| stem.strip_suffix(ext))
    {
        stem = shorter;
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_STEM)
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if cleaned.is_empty() {
        "image".into()
    } else {
        cleaned.to_string()
    }
}

/// The suite `debian:<tag>` names: `latest` is `stable`, `unstable` is `sid`, versions map
/// to codenames (`12`, `12.5` → bookworm), `-slim` is the same suite.
fn debian_suite(tag: &str) -> Option<String> {
    let tag = tag.strip_suffix("-slim").unwrap_or(tag);
    let suite = match tag {
        "latest" => "stable",
        "unstable" | "sid" => "sid",
        t if ALIASES.contains(&t) => t,
        t => {
            let major = t.split_once('.').map_or(t, |(major, minor)| {
                if minor.bytes().all(|b| b.is_ascii_digit()) && !minor.is_empty() {
                    major
                } else {
                    t
                }
            });
            CODENAMES
                .iter()
                .find(|(name, version)| *name == t || *version == major)
                .map(|(name, _)| *name)?
        }
    };
    Some(suite.to_string())
}

/// A name this module builds from known-valid parts.
fn parse_name(raw: &str) -> TemplateName {
    TemplateName::parse(raw).expect("image template names are built from valid characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian(suite: &str) -> ImageRef {
        ImageRef::Debian {
            suite: suite.into(),
        }
    }

    #[test]
    fn e2b_base_is_the_base_template() {
        for r in [
            "e2bdev/base",
            "e2bdev/base:latest",
            "e2bdev/base:default",
            "docker.io/e2bdev/base",
            "index.docker.io/e2bdev/base:latest",
            " e2bdev/base ",
        ] {
            assert_eq!(ImageRef::parse(r), Ok(ImageRef::Base), "{r}");
        }
        assert_eq!(
            image_template_name("e2bdev/base").expect("name").as_str(),
            "base"
        );
        assert!(matches!(
            ImageRef::parse("e2bdev/base:v2"),
            Err(ImageRefError::Unavailable(_))
        ));
        assert!(matches!(
            ImageRef::parse("e2bdev/code-interpreter"),
            Err(ImageRefError::Unavailable(_))
        ));
    }

    #[test]
    fn debian_tags_map_to_suites() {
        for (r, suite) in [
            ("debian:bookworm", "bookworm"),
            ("debian:bookworm-slim", "bookworm"),
            ("debian:12", "bookworm"),
            ("debian:12-slim", "bookworm"),
            ("debian:12.5", "bookworm"),
            ("debian:13", "trixie"),
            ("debian:trixie-slim", "trixie"),
            ("debian:11", "bullseye"),
            ("debian:forky", "forky"),
            ("debian:sid", "sid"),
            ("debian:unstable-slim", "sid"),
            ("debian:stable", "stable"),
            ("debian:stable-slim", "stable"),
            ("debian:oldstable", "oldstable"),
            ("debian:testing", "testing"),
            ("debian", "stable"),
            ("debian:latest", "stable"),
            ("library/debian:12", "bookworm"),
            ("docker.io/library/debian:bookworm", "bookworm"),
            ("docker.io/debian:trixie", "trixie"),
        ] {
            assert_eq!(ImageRef::parse(r), Ok(debian(suite)), "{r}");
        }
        assert_eq!(
            image_template_name("debian:12-slim")
                .expect("name")
                .as_str(),
            "image-debian-bookworm"
        );
        assert_eq!(
            image_template_name("debian:stable").expect("name").as_str(),
            "image-debian-stable"
        );
    }

    #[test]
    fn unknown_debian_tags_are_refused() {
        for (r, tag) in [
            ("debian:buster", "buster"),
            ("debian:10", "10"),
            ("debian:bookworm-backports", "bookworm-backports"),
            ("debian:experimental", "experimental"),
            ("debian:12.x", "12.x"),
            ("debian:12.", "12."),
            ("debian:bookworm-20240101", "bookworm-20240101"),
        ] {
            assert_eq!(
                ImageRef::parse(r),
                Err(ImageRefError::UnknownSuite {
                    reference: r.into(),
                    tag: tag.into()
                }),
                "{r}"
            );
        }
        let msg = ImageRef::parse("debian:buster")
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("bookworm") && msg.contains("stable"), "{msg}");
    }

    #[test]
    fn registry_images_are_refused_with_what_to_use_instead() {
        for r in [
            "python:3",
            "ubuntu:22.04",
            "node:lts",
            "ghcr.io/org/app:1",
            "localhost:5000/debian:12",
            "quay.io/debian:12",
            "debian@sha256:0123456789abcdef",
            "debian:12@sha256:0123456789abcdef",
            "images/python.tar",
        ] {
            let err = ImageRef::parse(r).expect_err(r);
            assert_eq!(err, ImageRefError::Unavailable(r.into()));
            let msg = err.to_string();
            for hint in [
                "no container registry",
                "template",
                "debian:<suite>",
                "docker save",
                "absolute path",
            ] {
                assert!(msg.contains(hint), "{r}: {msg} lacks {hint}");
            }
        }
        assert_eq!(ImageRef::parse("  "), Err(ImageRefError::Empty));
        let err = image_template_name("python:3").expect_err("refused");
        assert!(matches!(err, TemplateError::Image(_)), "{err:?}");
    }

    #[test]
    fn archives_are_absolute_paths() {
        for (r, path) in [
            ("/srv/images/py.tar", "/srv/images/py.tar"),
            ("/srv/images/py.tar.zst", "/srv/images/py.tar.zst"),
            ("oci-archive:/srv/oci.tar", "/srv/oci.tar"),
            ("docker-archive:/srv/saved.tar.gz", "/srv/saved.tar.gz"),
        ] {
            assert_eq!(
                ImageRef::parse(r),
                Ok(ImageRef::Archive { path: path.into() }),
                "{r}"
            );
        }
        for (r, path) in [
            ("oci-archive:srv/oci.tar", "srv/oci.tar"),
            ("docker-archive:./x.tar", "./x.tar"),
            ("./x.tar", "./x.tar"),
            ("../x.tar", "../x.tar"),
        ] {
            assert_eq!(
                ImageRef::parse(r),
                Err(ImageRefError::RelativePath(path.into())),
                "{r}"
            );
        }
        let err = image_template_name("/paddock/no/such/archive.tar").expect_err("missing");
        assert!(
            err.to_string()
                .contains("cannot find image archive /paddock/no/such/archive.tar"),
            "{err}"
        );
    }

    #[test]
    fn archive_names_follow_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("My Python_3.12.tar.zst");
        std::fs::write(&file, b"one").expect("write");
        let first = image_template_name(&file.display().to_string()).expect("name");
        let raw = first.as_str();
        let hash = raw.rsplit('-').next().expect("hash");
        assert_eq!(raw, format!("image-archive-my-python_3.12-{hash}"), "{raw}");
        assert_eq!(hash.len(), 16);
        // The same file by another path (a symlink, `oci-archive:`) is the same image.
        let link = tmp.path().join("link.tar");
        std::os::unix::fs::symlink(&file, &link).expect("link");
        assert_eq!(
            image_template_name(&format!("oci-archive:{}", link.display())).expect("name"),
            first
        );
        // Changing the file changes the name.
        std::fs::write(&file, b"three").expect("write");
        let second = image_template_name(&file.display().to_string()).expect("name");
        assert_ne!(second, first);
        let dir_err = image_template_name(&tmp.path().display().to_string()).expect_err("dir");
        assert!(
            matches!(dir_err, TemplateError::InvalidArchive { .. }),
            "{dir_err:?}"
        );
    }

    #[test]
    fn archive_stems_are_valid_name_parts() {
        for (file, stem) in [
            ("/a/python.tar", "python"),
            ("/a/python.tar.gz", "python"),
            ("/a/python.tgz", "python"),
            ("/a/img.oci.tar.zst", "img"),
            ("/a/UPPER case.tar", "upper-case"),
            ("/a/.hidden.tar", "hidden"),
            ("/a/---.tar", "image"),
            ("/a/.tar", "image"),
            (
                "/a/averyveryverylongarchivenamethatgoesonandon.tar",
                "averyveryverylongarchive",
            ),
            ("/a/ünïcode.tar", "n-code"),
        ] {
            assert_eq!(archive_stem(Path::new(file)), stem, "{file}");
            assert!(TemplateName::parse(&format!("image-archive-{stem}-0123456789abcdef")).is_ok());
        }
    }
}
