//! The files the trust machinery keeps: each is written atomically (a temporary file beside the
//! target, created with its final mode, synced, renamed over the target, then the directory
//! synced), so a crash leaves the old file or the new one, never half of one. Secrets (keys,
//! tokens) are read back only from regular files opened without following a symlink, owned by
//! this process's user and closed to group and others; public files only from regular files not
//! reached through a symlink. Every read is bounded.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Mode of files holding a secret (private keys, join tokens).
pub const SECRET_MODE: u32 = 0o600;
/// Mode of files anyone on the host may read (certificates).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of a data directory this crate creates.
const DIR_MODE: u32 = 0o700;
/// Largest file read back: PEM files here are a few kilobytes.
const MAX_BYTES: u64 = 64 * 1024;

/// Why a file could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A system call on the file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`reading`, `writing`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The path is a symbolic link; these files are never followed through one.
    #[error("{0} is a symbolic link")]
    Symlink(PathBuf),
    /// The path is a directory, FIFO, socket or device.
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    /// A secret file that group or others may access.
    #[error("{path} has mode {mode:o}: a secret must not be open to group or others (chmod 600)")]
    OpenToOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file owned by another user.
    #[error("{path} is owned by uid {owner}, not by this process's user {euid}")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The file is larger than any file this crate writes.
    #[error("{0} is larger than {MAX_BYTES} bytes")]
    TooLarge(PathBuf),
    /// The file is not text.
    #[error("{0} is not UTF-8 text")]
    NotText(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("creating directory", dir))
}

/// Writes `contents` to `path` atomically with exactly `mode` (whatever the umask).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    let written = (|| {
        // create_new is O_EXCL: it never follows a symlink planted at the temporary name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        // The umask may have taken bits off; the mode is part of the contract.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &tmp))?;
        file.write_all(contents).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        // rename replaces a symlink at `path` itself; it never writes through it.
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Whether `path` exists (as anything, a dangling symlink included).
pub fn exists(path: &Path) -> Result<bool, FileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

/// Reads a secret this crate wrote: a regular file, not through a symlink, owned by this user,
/// mode 0600 or stricter.
pub fn read_secret(path: &Path) -> Result<String, FileError> {
    read_checked(path, Policy::Secret)
}

/// Reads a public file this crate wrote: a regular file, not through a symlink.
pub fn read_public(path: &Path) -> Result<String, FileError> {
    read_checked(path, Policy::Public)
}

/// Reads a file an operator supplied: a regular file, possibly reached through symlinks.
pub fn read_supplied(path: &Path) -> Result<String, FileError> {
    read_checked(path, Policy::Supplied)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Secret,
    Public,
    Supplied,
}

fn read_checked(path: &Path, policy: Policy) -> Result<String, FileError> {
    // O_NOFOLLOW: a symlink fails with ELOOP instead of being followed. O_NONBLOCK: opening a
    // FIFO returns at once (and is then refused as not regular) instead of waiting for a writer.
    let nofollow = if policy == Policy::Supplied {
        0
    } else {
        libc::O_NOFOLLOW
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FileError::Symlink(path.to_owned())
            } else {
                io_err("opening", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(path.to_owned()));
    }
    if policy == Policy::Secret {
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(FileError::OpenToOthers {
                path: path.to_owned(),
                mode,
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(FileError::WrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                euid,
            });
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(FileError::TooLarge(path.to_owned()));
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotText(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").mode() & 0o7777
    }

    #[test]
    fn writes_with_the_exact_mode_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_atomic(&path, b"one", SECRET_MODE).expect("write");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&path, b"two", PUBLIC_MODE).expect("rewrite");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(fs::read_to_string(&path).expect("read"), "two");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").expect("victim");
        let path = dir.path().join("key");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write_atomic(&path, b"secret", SECRET_MODE).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep");
        assert!(fs::symlink_metadata(&path).expect("meta").is_file());
    }

    #[test]
    fn refuses_secrets_that_are_links_not_files_or_open_to_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        write_atomic(&real, b"secret", SECRET_MODE).expect("write");
        assert_eq!(read_secret(&real).expect("read"), "secret");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(read_secret(&link), Err(FileError::Symlink(_))));
        assert!(matches!(read_public(&link), Err(FileError::Symlink(_))));
        assert_eq!(read_supplied(&link).expect("supplied"), "secret");

        assert!(matches!(
            read_secret(dir.path()),
            Err(FileError::NotRegular(_))
        ));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(matches!(read_secret(&fifo), Err(FileError::NotRegular(_))));

        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&real, Permissions::from_mode(mode)).expect("chmod");
            assert!(
                matches!(read_secret(&real), Err(FileError::OpenToOthers { .. })),
                "mode {mode:o} accepted"
            );
        }
        // A public file may be read by anyone.
        assert_eq!(read_public(&real).expect("public"), "secret");
    }

    #[test]
    fn refuses_oversized_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        write_atomic(&path, &vec![b'a'; MAX_BYTES as usize + 1], SECRET_MODE).expect("write");
        assert!(matches!(read_secret(&path), Err(FileError::TooLarge(_))));
    }
}
