//! A build's COPY archives across the link. In one process the node reads them where the
//! control plane stored them (`BuildRequest::files_dir`); a remote node cannot, so before a
//! build the client asks which archives the node lacks (`MissingBuildFiles`) and sends those
//! (`PutBuildFile`), and the node's service points the build at its own copies.
//!
//! The node keeps them under its build-files root, one directory per namespace (the control
//! plane's `files_dir`, which is per team: the SHA-256 of its text names the directory), so one
//! team's upload never stands in for another's archive of the same hash. An archive is written
//! to a temporary file, checked to be exactly the size announced (at most
//! [`MAX_BUILD_FILE_BYTES`]), synced and renamed into place, so a cut transfer leaves nothing a
//! build would read. Hashes must be 64 lowercase hex digits (they become file names).
//!
//! They are a cache: asking whether one is missing marks it used (its modification time), and
//! [`BuildFiles::sweep`] removes those not used for [`BUILD_FILES_KEPT`] (the node role runs it
//! every hour); a build that needs one again sends it again.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The largest COPY archive a node takes (the control plane's own upload limit).
pub const MAX_BUILD_FILE_BYTES: u64 = 10 << 30;

/// How long a node keeps a COPY archive no build asked for.
pub const BUILD_FILES_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Whether `hash` can name a COPY archive.
pub fn is_files_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A node's copies of COPY archives.
#[derive(Debug, Clone)]
pub struct BuildFiles {
    root: PathBuf,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildFileError {
    /// The hash cannot name an archive.
    #[error("invalid files hash {0:?} (64 lowercase hex digits)")]
    BadHash(String),
    /// Larger than announced or than the limit, or shorter than announced.
    #[error("{0}")]
    Size(String),
    /// Writing it failed.
    #[error("cannot store a build file: {0}")]
    Io(#[from] io::Error),
}

impl BuildFiles {
    /// Copies kept below `root` (made on first use, mode 0700).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BuildFiles { root: root.into() }
    }

    /// The directory of `namespace`'s archives.
    pub fn dir(&self, namespace: &str) -> PathBuf {
        let digest = Sha256::digest(namespace.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join(name)
    }

    /// Of `hashes`, those not stored for `namespace`.
    pub async fn missing(
        &self,
        namespace: &str,
        hashes: &[String],
    ) -> Result<Vec<String>, BuildFileError> {
        let dir = self.dir(namespace);
        let mut out = Vec::new();
        for h in hashes {
            if !is_files_hash(h) {
                return Err(BuildFileError::BadHash(h.clone()));
            }
            let present = tokio::fs::symlink_metadata(dir.join(h))
                .await
                .map(|m| m.is_file())
                .unwrap_or(false);
            if !present {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            } else if touch(dir.join(h)).await.is_err() {
                // Gone meanwhile (swept): send it again.
                out.push(h.clone());
            }
        }
        Ok(out)
    }

    /// Removes the archives (and leftovers of cut transfers) not used for `unused`, and the
    /// namespaces left empty; answers how many files went.
    pub async fn sweep(&self, unused: std::time::Duration) -> Result<usize, BuildFileError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sweep(&root, unused))
            .await
            .map_err(|e| BuildFileError::Io(io::Error::other(e)))?
    }

    /// Stores archive `hash` of `namespace` from `chunks`, which must hold exactly `size` bytes.
    pub async fn put(
        &self,
        namespace: &str,
        hash: &str,
        size: u64,
        mut chunks: impl futures::Stream<Item = Result<bytes::Bytes, BuildFileError>> + Unpin,
    ) -> Result<(), BuildFileError> {
        use futures::StreamExt;
        if !is_files_hash(hash) {
            return Err(BuildFileError::BadHash(hash.to_string()));
        }
        if size > MAX_BUILD_FILE_BYTES {
            return Err(BuildFileError::Size(format!(
                "{size} bytes is more than the limit of {MAX_BUILD_FILE_BYTES}"
            )));
        }
        let dir = self.dir(namespace);
        create_private_dir(&self.root).await?;
        create_private_dir(&dir).await?;
        let tmp = dir.join(format!(".incoming-{hash}-{}", std::process::id()));
        let tmp = unique(&tmp);
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .await?;
            let mut written = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                written += chunk.len() as u64;
                if written > size {
                    return Err(BuildFileError::Size(format!(
                        "more than the {size} bytes announced"
                    )));
                }
                file.write_all(&chunk).await?;
            }
            if written != size {
                return Err(BuildFileError::Size(format!(
                    "{written} bytes of the {size} announced"
                )));
            }
            file.sync_all().await?;
            tokio::fs::rename(&tmp, dir.join(hash)).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// Marks archive `path` used now (its modification time), without following a link.
async fn touch(path: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?
            .set_modified(std::time::SystemTime::now())
    })
    .await
    .map_err(io::Error::other)?
}

fn sweep(root: &Path, unused: std::time::Duration) -> Result<usize, BuildFileError> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(unused)
        .unwrap_or(std::time::UNIX_EPOCH);
    let namespaces = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    for ns in namespaces {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(ns.path())? {
            let f = f?;
            let meta = f.metadata()?;
            if meta.is_file() && meta.modified()? < cutoff {
                std::fs::remove_file(f.path())?;
                removed += 1;
            }
        }
        // Only when empty (a transfer may have started meanwhile: then it is not).
        let _ = std::fs::remove_dir(ns.path());
    }
    Ok(removed)
}

fn unique(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!("-{n}"));
    PathBuf::from(s)
}

async fn create_private_dir(dir: &Path) -> io::Result<()> {
    match tokio::fs::DirBuilder::new().mode(0o700).create(dir).await {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, BuildFileError>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn archives_are_kept_per_namespace_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = BuildFiles::new(tmp.path().join("build-files"));
        let h = "ab".repeat(32);
        assert_eq!(
            files
                .missing("/teams/a", std::slice::from_ref(&h))
                .await
                .expect("q"),
            vec![h.clone()]
        );
        files
            .put("/teams/a", &h, 6, chunks(&[b"abc", b"def"]))
            .await
            .expect("put");
        assert!(files
            .missing("/teams/a", std::slice::from_ref(&h))
            .await
            .expect("q")
            .is_empty());
        assert_eq!(
            std::fs::read(files.dir("/teams/a").join(&h)).expect("read"),
            b"abcdef"
        );
        // Another namespace has its own.
        assert_eq!(
            files
                .missing("/teams/b", std::slice::from_ref(&h))
                .await
                .expect("q"),
            vec![h.clone()]
        );
        // Short, long, a bad hash: refused, nothing left.
        let g = "cd".repeat(32);
        assert!(matches!(
            files.put("/teams/b", &g, 7, chunks(&[b"abc"])).await,
            Err(BuildFileError::Size(_))
        ));
        assert!(matches!(
            files.put("/teams/b", &g, 2, chunks(&[b"abc"])).await,
            Err(BuildFileError::Size(_))
        ));
        assert!(matches!(
            files
                .put("/teams/b", "../../etc/passwd", 1, chunks(&[b"x"]))
                .await,
            Err(BuildFileError::BadHash(_))
        ));
        assert!(matches!(
            files.missing("/teams/b", &["../x".to_string()]).await,
            Err(BuildFileError::BadHash(_))
        ));
        let left: Vec<_> = std::fs::read_dir(files.dir("/teams/b"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn archives_no_build_asked_for_are_swept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = BuildFiles::new(tmp.path().join("build-files"));
        assert_eq!(files.sweep(BUILD_FILES_KEPT).await.expect("empty"), 0);
        let (old, used, fresh) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
        for h in [&old, &used, &fresh] {
            files.put("/t", h, 1, chunks(&[b"x"])).await.expect("put");
        }
        files
            .put("/u", &old, 1, chunks(&[b"y"]))
            .await
            .expect("put");
        let long_ago = std::time::SystemTime::now() - 2 * BUILD_FILES_KEPT;
        for (ns, h) in [("/t", &old), ("/t", &used), ("/u", &old)] {
            std::fs::File::options()
                .write(true)
                .open(files.dir(ns).join(h))
                .expect("open")
                .set_modified(long_ago)
                .expect("age");
        }
        // Asked for by a build: used now.
        assert!(files
            .missing("/t", std::slice::from_ref(&used))
            .await
            .expect("q")
            .is_empty());
        assert_eq!(files.sweep(BUILD_FILES_KEPT).await.expect("sweep"), 2);
        let left = |ns: &str, h: &str| files.dir(ns).join(h).exists();
        assert!(!left("/t", &old) && left("/t", &used) && left("/t", &fresh));
        assert!(!files.dir("/u").exists(), "an emptied namespace goes");
        // A swept archive is missing again, so the next build sends it.
        assert_eq!(
            files
                .missing("/t", std::slice::from_ref(&old))
                .await
                .expect("q"),
            vec![old]
        );
    }
}
