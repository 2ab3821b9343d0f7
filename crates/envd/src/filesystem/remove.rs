//! `Remove`: deletes a file, symlink or whole directory tree; a missing path is not an error.

use std::fs;
use std::io;
use std::path::Path;

use crate::connect::ConnectError;
use crate::filesystem::messages::{Empty, PathRequest};
use crate::filesystem::Caller;
use crate::state::EnvdState;

/// The `Remove` operation.
pub fn remove(
    _state: &EnvdState,
    caller: &Caller,
    req: PathRequest,
) -> Result<Empty, ConnectError> {
    let path = caller.resolve(&req.path)?;
    remove_all(&path)
        .map_err(|e| ConnectError::internal(format!("error removing {}: {e}", path.display())))?;
    Ok(Empty {})
}

/// Removes `path` like Go's `os.RemoveAll`: recursive for directories, the link itself for
/// symlinks, success when nothing is there (also when it vanishes concurrently).
pub fn remove_all(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_trees_links_and_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tree = tmp.path().join("a/b/c");
        fs::create_dir_all(&tree).expect("mkdir");
        fs::write(tree.join("f"), "x").expect("write");
        let outside = tmp.path().join("keep");
        fs::create_dir(&outside).expect("mkdir keep");
        fs::write(outside.join("k"), "k").expect("write keep");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");

        remove_all(&link).expect("remove link");
        assert!(
            outside.join("k").exists(),
            "removing a link must not touch its target"
        );
        remove_all(&tmp.path().join("a")).expect("remove tree");
        assert!(!tmp.path().join("a").exists());
        remove_all(&tmp.path().join("missing")).expect("missing is fine");
        remove_all(&outside.join("k")).expect("file");
        assert!(!outside.join("k").exists());
    }
}
