//! Building [`EntryInfo`] from the filesystem (spec 3.5): `lstat` facts, a symlink's target type
//! and mode, Go-style permission strings, owner and group names, and `user.e2b.*` metadata.
//! Also owns reading and replacing those metadata extended attributes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::filesystem::messages::{EntryInfo, FileType};
use crate::users::{clean, UserDb};

/// Prefix of the extended attributes that carry E2B file metadata.
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Caches uid/gid → name lookups for the duration of one request (a `ListDir` of a large
/// directory would otherwise re-read `/etc/passwd` per entry).
pub struct OwnerNames<'a> {
    db: &'a UserDb,
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl<'a> OwnerNames<'a> {
    /// An empty cache over `db`.
    pub fn new(db: &'a UserDb) -> Self {
        OwnerNames {
            db,
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| self.db.user_name(uid))
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| self.db.group_name(gid))
            .clone()
    }
}

/// Describes `path` (not following a final symlink for the entry itself). The `path` field is
/// `path` as given; callers that list through a symlinked directory overwrite it.
pub fn entry_info(names: &mut OwnerNames<'_>, path: &Path) -> io::Result<EntryInfo> {
    let meta = fs::symlink_metadata(path)?;
    let is_symlink = meta.file_type().is_symlink();
    let (file_type, mode, symlink_target) = if is_symlink {
        match fs::canonicalize(path).and_then(|t| fs::metadata(&t).map(|m| (t, m))) {
            Ok((target, tmeta)) => (
                file_type_of(&tmeta),
                tmeta.permissions().mode() & 0o777,
                Some(target),
            ),
            Err(_) => (FileType::Unspecified, 0, Some(raw_link_target(path)?)),
        }
    } else {
        (file_type_of(&meta), meta.permissions().mode() & 0o777, None)
    };
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => "/".to_string(),
    };
    Ok(EntryInfo {
        name,
        file_type,
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode,
        permissions: go_mode_string(meta.mode()),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: meta.modified().ok().map(rfc3339),
        symlink_target: symlink_target.map(|t| t.to_string_lossy().into_owned()),
        metadata: read_metadata(path),
        is_symlink,
    })
}

/// The absolute, lexically cleaned target of a (broken) symlink.
fn raw_link_target(link: &Path) -> io::Result<PathBuf> {
    let target = fs::read_link(link)?;
    let joined = match link.parent() {
        Some(parent) if target.is_relative() => parent.join(&target),
        _ => target,
    };
    Ok(clean(&joined))
}

fn file_type_of(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_file() {
        FileType::File
    } else if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// A timestamp as protobuf JSON writes it: RFC 3339 UTC with 0, 3, 6 or 9 fractional digits.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Formats a Unix `st_mode` the way Go's `os.FileMode.String()` does: one letter per set type
/// bit in the order `dalTLDpSugct?` (`-` when none), then `rwxrwxrwx`.
pub fn go_mode_string(st_mode: u32) -> String {
    let fmt = st_mode & libc::S_IFMT;
    let mut out = String::with_capacity(12);
    if fmt == libc::S_IFDIR {
        out.push('d');
    }
    if fmt == libc::S_IFLNK {
        out.push('L');
    }
    if fmt == libc::S_IFBLK || fmt == libc::S_IFCHR {
        out.push('D');
    }
    if fmt == libc::S_IFIFO {
        out.push('p');
    }
    if fmt == libc::S_IFSOCK {
        out.push('S');
    }
    if st_mode & libc::S_ISUID != 0 {
        out.push('u');
    }
    if st_mode & libc::S_ISGID != 0 {
        out.push('g');
    }
    if fmt == libc::S_IFCHR {
        out.push('c');
    }
    if st_mode & libc::S_ISVTX != 0 {
        out.push('t');
    }
    if out.is_empty() {
        out.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        out.push(if st_mode & (1 << (8 - i)) != 0 {
            c
        } else {
            '-'
        });
    }
    out
}

/// The `user.e2b.*` attributes of `path` with the prefix stripped; empty when the filesystem
/// has none or does not support extended attributes.
pub fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        let Some(key) = name
            .to_str()
            .and_then(|n| n.strip_prefix(METADATA_XATTR_PREFIX))
        else {
            continue;
        };
        if let Ok(Some(value)) = xattr::get(path, &name) {
            out.insert(
                key.to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }
    out
}

/// Replaces the `user.e2b.*` attribute set of `path` with `metadata` (an empty map clears it).
pub fn replace_metadata(path: &Path, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    match xattr::list(path) {
        Ok(names) => {
            for name in names {
                let stale = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(METADATA_XATTR_PREFIX))
                    .is_some_and(|key| !metadata.contains_key(key));
                if stale {
                    xattr::remove(path, &name)?;
                }
            }
        }
        // Nothing to clear on a filesystem without xattrs; setting will report the error.
        Err(e) if metadata.is_empty() && is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    for (key, value) in metadata {
        xattr::set(
            path,
            format!("{METADATA_XATTR_PREFIX}{key}"),
            value.as_bytes(),
        )?;
    }
    Ok(())
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("group"), "root:x:0:\n").expect("group");
        let db = UserDb::at(dir.path());
        (dir, db)
    }

    #[test]
    fn mode_strings_match_go() {
        assert_eq!(go_mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(go_mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(go_mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(
            go_mode_string(libc::S_IFDIR | libc::S_ISVTX | 0o777),
            "dtrwxrwxrwx"
        );
        assert_eq!(
            go_mode_string(libc::S_IFREG | libc::S_ISUID | 0o755),
            "urwxr-xr-x"
        );
        assert_eq!(go_mode_string(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(go_mode_string(libc::S_IFIFO | 0o600), "prw-------");
        assert_eq!(go_mode_string(libc::S_IFSOCK | 0o755), "Srwxr-xr-x");
    }

    #[test]
    fn timestamps_use_minimal_fraction_groups() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn describes_files_dirs_and_symlinks() {
        let (_d, db) = db();
        let mut names = OwnerNames::new(&db);
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("a.txt");
        std::fs::write(&file, "hello").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = entry_info(&mut names, &file).expect("entry");
        assert_eq!(
            (e.name.as_str(), e.file_type, e.size, e.mode),
            ("a.txt", FileType::File, 5, 0o640)
        );
        assert_eq!(e.permissions, "-rw-r-----");
        assert_eq!(e.path, file.to_string_lossy());
        assert!(!e.is_symlink && e.symlink_target.is_none());
        assert!(e.modified_time.as_deref().is_some_and(|t| t.ends_with('Z')));

        let link = tmp.path().join("dir-link");
        std::fs::create_dir(tmp.path().join("dir")).expect("mkdir");
        symlink("dir", &link).expect("symlink");
        let e = entry_info(&mut names, &link).expect("link entry");
        assert_eq!(e.file_type, FileType::Directory);
        assert!(e.is_symlink);
        assert!(e.permissions.starts_with('L'));
        let canon = std::fs::canonicalize(tmp.path().join("dir")).expect("canon");
        assert_eq!(
            e.symlink_target.as_deref(),
            Some(canon.to_string_lossy().as_ref())
        );

        let broken = tmp.path().join("broken");
        symlink("missing", &broken).expect("symlink");
        let e = entry_info(&mut names, &broken).expect("broken entry");
        assert_eq!(e.file_type, FileType::Unspecified);
        assert_eq!(
            e.symlink_target,
            Some(tmp.path().join("missing").to_string_lossy().into_owned())
        );
    }

    #[test]
    fn metadata_is_replaced_as_a_set() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("m");
        std::fs::write(&file, "x").expect("write");
        let mut md = BTreeMap::new();
        md.insert("a".to_string(), "1".to_string());
        md.insert("b".to_string(), "2".to_string());
        replace_metadata(&file, &md).expect("set");
        assert_eq!(read_metadata(&file), md);
        md.remove("a");
        replace_metadata(&file, &md).expect("replace");
        assert_eq!(read_metadata(&file), md);
        replace_metadata(&file, &BTreeMap::new()).expect("clear");
        assert!(read_metadata(&file).is_empty());
    }
}
