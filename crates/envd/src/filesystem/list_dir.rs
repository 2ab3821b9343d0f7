//! `ListDir`: lists a directory to a depth (0 means 1), in Go `filepath.WalkDir` order (sorted,
//! pre-order). A symlinked directory is followed at the top but symlinked subdirectories are not
//! descended; entries that vanish mid-walk are skipped. Paths are reported under the requested
//! path, not the symlink-resolved one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::connect::{Code, ConnectError};
use crate::filesystem::entry::{entry_info, OwnerNames};
use crate::filesystem::messages::{EntryInfo, ListDirRequest, ListDirResponse};
use crate::filesystem::Caller;
use crate::state::EnvdState;
use crate::users::UserDb;

/// The `ListDir` operation.
pub fn list_dir(
    state: &EnvdState,
    caller: &Caller,
    req: ListDirRequest,
) -> Result<ListDirResponse, ConnectError> {
    let requested = caller.resolve(&req.path)?;
    let entries = list(&state.users, &requested, req.depth.max(1))?;
    Ok(ListDirResponse { entries })
}

/// Lists `requested` (absolute, clean) down to `depth` levels.
pub fn list(users: &UserDb, requested: &Path, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let resolved = resolve_dir(requested)?;
    let mut walk = Walk {
        names: OwnerNames::new(users),
        root: resolved,
        requested,
        depth,
        out: Vec::new(),
    };
    walk.dir(Path::new(""), 1)?;
    Ok(walk.out)
}

/// Follows symlinks of the requested directory and checks that it is one.
fn resolve_dir(requested: &Path) -> Result<PathBuf, ConnectError> {
    let resolved = fs::canonicalize(requested).map_err(|e| match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => {
            ConnectError::not_found(format!("path not found: {}", requested.display()))
        }
        (_, Some(libc::ELOOP)) => ConnectError::new(
            Code::FailedPrecondition,
            format!("cyclic symlink or chain too long: {}", requested.display()),
        ),
        (_, Some(libc::ENOTDIR)) => {
            ConnectError::invalid(format!("path is not a directory: {}", requested.display()))
        }
        _ => ConnectError::internal(format!("error resolving path {}: {e}", requested.display())),
    })?;
    let meta = fs::metadata(&resolved).map_err(|e| {
        ConnectError::internal(format!(
            "error getting file info of {}: {e}",
            resolved.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(ConnectError::invalid(format!(
            "path is not a directory: {}",
            requested.display()
        )));
    }
    Ok(resolved)
}

struct Walk<'a> {
    names: OwnerNames<'a>,
    root: PathBuf,
    requested: &'a Path,
    depth: u32,
    out: Vec<EntryInfo>,
}

impl Walk<'_> {
    /// Lists `root/rel`, whose children sit at `level`.
    fn dir(&mut self, rel: &Path, level: u32) -> Result<(), ConnectError> {
        let dir = self.root.join(rel);
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound && level > 1 => return Ok(()),
            Err(e) => {
                return Err(ConnectError::internal(format!(
                    "error reading directory {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut children = Vec::new();
        for item in read {
            match item {
                Ok(item) => {
                    let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    children.push((item.file_name(), is_dir));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ConnectError::internal(format!(
                        "error reading directory {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
        children.sort();
        for (name, is_dir) in children {
            let child_rel = rel.join(&name);
            let actual = self.root.join(&child_rel);
            let mut info = match entry_info(&mut self.names, &actual) {
                Ok(info) => info,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ConnectError::internal(format!(
                        "error getting file info of {}: {e}",
                        actual.display()
                    )))
                }
            };
            info.path = self
                .requested
                .join(&child_rel)
                .to_string_lossy()
                .into_owned();
            self.out.push(info);
            if is_dir && level < self.depth {
                self.dir(&child_rel, level + 1)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn users() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n",
        )
        .expect("passwd");
        fs::write(dir.path().join("group"), "root:x:0:\n").expect("group");
        let db = UserDb::at(dir.path());
        (dir, db)
    }

    fn paths(entries: &[EntryInfo], base: &Path) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                Path::new(&e.path)
                    .strip_prefix(base)
                    .expect("under base")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn walks_to_depth_in_sorted_preorder() {
        let (_d, db) = users();
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::create_dir_all(root.join("b/c/d")).expect("mkdir");
        fs::write(root.join("a.txt"), "a").expect("write");
        fs::write(root.join("b/c/d/deep.txt"), "x").expect("write");
        fs::write(root.join("b/z.txt"), "z").expect("write");
        symlink(root.join("b"), root.join("link")).expect("symlink");

        assert_eq!(
            paths(&list(&db, root, 1).expect("depth 1"), root),
            ["a.txt", "b", "link"]
        );
        assert_eq!(
            paths(&list(&db, root, 2).expect("depth 2"), root),
            ["a.txt", "b", "b/c", "b/z.txt", "link"]
        );
        assert_eq!(
            paths(&list(&db, root, 9).expect("deep"), root),
            [
                "a.txt",
                "b",
                "b/c",
                "b/c/d",
                "b/c/d/deep.txt",
                "b/z.txt",
                "link"
            ],
            "symlinked subdirectories are not descended"
        );
    }

    #[test]
    fn follows_a_symlinked_top_directory_and_reports_requested_paths() {
        let (_d, db) = users();
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(tmp.path().join("real")).expect("mkdir");
        fs::write(tmp.path().join("real/f"), "f").expect("write");
        let link = tmp.path().join("alias");
        symlink("real", &link).expect("symlink");
        let entries = list(&db, &link, 1).expect("list");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, link.join("f").to_string_lossy());
    }

    #[test]
    fn errors_map_to_codes() {
        let (_d, db) = users();
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("file"), "x").expect("write");
        symlink("loop2", tmp.path().join("loop1")).expect("symlink");
        symlink("loop1", tmp.path().join("loop2")).expect("symlink");
        let code = |p: &str| list(&db, &tmp.path().join(p), 1).expect_err("fails").code;
        assert_eq!(code("missing"), Code::NotFound);
        assert_eq!(code("file"), Code::InvalidArgument);
        assert_eq!(code("loop1"), Code::FailedPrecondition);
    }
}
