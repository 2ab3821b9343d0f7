//! `MakeDir`: creates a directory and its missing parents, all owned by the acting user. An
//! existing directory is `already_exists` (the SDK turns that into `false`); an existing
//! non-directory is `invalid_argument`. Also owns [`ensure_dirs`], which `Move` and `/files`
//! use to create parents.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{lchown, DirBuilderExt};
use std::path::{Path, PathBuf};

use crate::connect::{Code, ConnectError};
use crate::filesystem::messages::{EntryResponse, PathRequest};
use crate::filesystem::stat::describe;
use crate::filesystem::Caller;
use crate::state::EnvdState;

/// The `MakeDir` operation.
pub fn make_dir(
    state: &EnvdState,
    caller: &Caller,
    req: PathRequest,
) -> Result<EntryResponse, ConnectError> {
    let path = caller.resolve(&req.path)?;
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(ConnectError::new(
                Code::AlreadyExists,
                format!("directory already exists: {}", path.display()),
            ))
        }
        Ok(_) => {
            return Err(ConnectError::invalid(format!(
                "path already exists but it is not a directory: {}",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ConnectError::internal(format!(
                "error getting file info of {}: {e}",
                path.display()
            )))
        }
    }
    ensure_dirs(&path, caller.user.uid, caller.user.gid).map_err(|e| dir_error(&path, e))?;
    Ok(EntryResponse {
        entry: describe(&state.users, &path)?,
    })
}

/// Maps a directory-creation failure: a file in the way is the caller's mistake.
pub fn dir_error(path: &Path, e: io::Error) -> ConnectError {
    if e.raw_os_error() == Some(libc::ENOTDIR) {
        ConnectError::invalid(format!("a parent of {} is not a directory", path.display()))
    } else {
        ConnectError::internal(format!("error creating directory {}: {e}", path.display()))
    }
}

/// Creates `dir` and every missing ancestor with mode 0755, chowning each directory it creates
/// (and only those) to `uid:gid`. Existing directories (or symlinks to them) are left alone; an
/// existing non-directory on the way fails with `ENOTDIR`.
pub fn ensure_dirs(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut current = PathBuf::new();
    for component in dir.components() {
        current.push(component);
        match fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match DirBuilder::new().mode(0o755).create(&current) {
            Ok(()) => lchown(&current, Some(uid), Some(gid))?,
            // Lost a race with a concurrent creator: fine if it made a directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && current.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ensure_dirs_creates_and_chowns_only_new_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let target = tmp.path().join("a/b/c");
        ensure_dirs(&target, me.0, me.1).expect("create");
        assert!(target.is_dir());
        let meta = fs::metadata(tmp.path().join("a")).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), me);
        ensure_dirs(&target, me.0, me.1).expect("idempotent");

        fs::write(tmp.path().join("file"), "x").expect("write");
        let err =
            ensure_dirs(&tmp.path().join("file/sub"), me.0, me.1).expect_err("file in the way");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    }
}
