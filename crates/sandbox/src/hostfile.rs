//! Host-side file access to a sandbox's state directory, under the rule docs/security.md states:
//! the host never follows a link or trusts a file type it did not check. Every file the node, the
//! shim or the API opens under `<data>/sandboxes/<id>/` goes through here: opened with
//! `O_NOFOLLOW` (a symlink fails with `ELOOP`) and `O_NONBLOCK` (a FIFO cannot block the opener),
//! checked with `fstat` to be a regular file, and read only up to a bound. Nothing a sandbox can
//! write lives in that directory any more (its `/run/paddock` is a tmpfs inside the sandbox),
//! so these checks are a second wall, not the first.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the host writes into a state directory: the access token, the
/// environment and envd's log are for root only.
pub const PRIVATE_MODE: u32 = 0o600;

fn not_regular(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a regular file", path.display()),
    )
}

/// Checks that an open descriptor is a regular file.
fn check_regular(file: &File, path: &Path) -> io::Result<()> {
    if file.metadata()?.file_type().is_file() {
        Ok(())
    } else {
        Err(not_regular(path))
    }
}

/// How long [`read_tail`] waits for an append in progress (the shim appends to `envd.log`
/// under an exclusive lock, and a pause may freeze it mid-append: the read then goes on).
const APPEND_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Opens an existing regular file with a single link for reading, without following a
/// symlink in its last component and without blocking on a FIFO.
pub fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(not_regular(path));
    }
    Ok(file)
}

/// Reads a whole regular file of at most `max` bytes (larger is an `InvalidData` error, never
/// a partial read taken for the whole).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_read(path)?;
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// The last `max` bytes of a regular file and whether anything came before them (read under a
/// shared lock, waited for at most [`APPEND_LOCK_WAIT`]); `None` when it does not exist.
pub fn read_tail(path: &Path, max: u64) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut file = match open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let _lock = crate::namespace::FlockGuard::shared_within(&file, APPEND_LOCK_WAIT);
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(Some((bytes, start > 0)))
}

/// Opens (creating it, mode 0600) a log file for appending, without following a symlink, and
/// checks it is a regular file owned by this process's user with no other access bits
/// (tightening the mode of one left by an older version).
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    check_regular(&file, path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not {me}",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o777 != PRIVATE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))?;
    }
    // Appends must not block either; the descriptor is a regular file, so clearing
    // O_NONBLOCK changes nothing but is tidy for whoever inherits it.
    clear_nonblock(&file)?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor this function borrows; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces `path` atomically with `data`, mode 0600: written to a fresh temporary file beside
/// it (`O_EXCL|O_NOFOLLOW`, so nothing planted there is followed) and renamed over it. A symlink
/// at `path` is replaced, never written through.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates a host-only directory (mode 0700; an existing one is tightened to it) whose last
/// component is not a symlink.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a directory", path.display()),
                ));
            }
            if meta.mode() & 0o777 != 0o700 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            create_private_dir(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "secret").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = read_bounded(&link, 100).expect_err("symlink followed");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = open_append(&link).expect_err("symlink followed for append");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "secret");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
        // SAFETY: mkfifo reads a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would block forever without O_NONBLOCK (no writer).
        let err = read_bounded(&fifo, 100).expect_err("fifo read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_tail(dir.path(), 100).expect_err("dir read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, vec![b'x'; 1000]).expect("write");
        assert_eq!(read_bounded(&f, 1000).expect("fits").len(), 1000);
        assert!(read_bounded(&f, 999).is_err());
        let (tail, partial) = read_tail(&f, 10).expect("tail").expect("exists");
        assert_eq!((tail.len(), partial), (10, true));
        assert!(read_tail(&dir.path().join("none"), 10)
            .expect("missing")
            .is_none());
    }

    #[test]
    fn write_private_replaces_a_planted_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host file").expect("write");
        let path = dir.path().join("config.json");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write_private(&path, b"{}").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "host file");
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, PRIVATE_MODE);
    }

    #[test]
    fn append_tightens_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("envd.log");
        std::fs::write(&log, "old\n").expect("write");
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut f = open_append(&log).expect("open");
        f.write_all(b"new\n").expect("append");
        let meta = std::fs::metadata(&log).expect("stat");
        assert_eq!(meta.mode() & 0o777, PRIVATE_MODE);
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "old\nnew\n");
    }
}
