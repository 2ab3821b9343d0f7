//! The `user` account (uid/gid 1000, home `/home/user`) every template must have, added to an
//! imported root filesystem by editing its `/etc/passwd`, `/etc/group` (and the shadow files
//! when they exist) directly: the rootfs may have no `useradd`, and nothing of it is executed.
//!
//! Paths inside the rootfs are resolved as a chroot would ([`resolve_in_root`]), so a symlink
//! such as `/etc/passwd -> /host/file` can never make the build write outside the tree.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::TemplateError;

/// Name of the default sandbox account.
pub const USER_NAME: &str = "user";
/// Its uid and gid.
pub const USER_ID: u32 = 1000;
/// Its home directory.
pub const USER_HOME: &str = "/home/user";

/// The line `/etc/passwd` gets when the account is missing.
pub fn passwd_line() -> String {
    format!("{USER_NAME}:x:{USER_ID}:{USER_ID}:Sandbox user:{USER_HOME}:/bin/bash")
}

/// The line `/etc/group` gets when the group is missing.
pub fn group_line() -> String {
    format!("{USER_NAME}:x:{USER_ID}:")
}

/// Whether a colon-separated database (passwd, group, shadow) has an entry named `name`.
pub fn has_entry(db: &str, name: &str) -> bool {
    db.lines().any(|l| l.split(':').next() == Some(name))
}

/// The uid of `name` in a passwd database, if it has one.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// The names owning a numeric id (third field) in a passwd or group database.
pub fn names_with_id(db: &str, id: u32) -> Vec<String> {
    db.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
        })
        .collect()
}

/// Appends `line` to a database text, adding the missing final newline first.
pub fn append_line(db: &str, line: &str) -> String {
    let mut out = db.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// Resolves an absolute path inside `root` the way the kernel would after `chroot(root)`:
/// symlinks are followed (absolute targets restart at `root`), `..` stops at `root`. The
/// result is a host path under `root`; missing trailing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, TemplateError> {
    const MAX_LINKS: usize = 40;
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| c.as_os_str().into())
        .collect();
    let mut current = root.to_path_buf();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            None | Some(Component::RootDir | Component::CurDir | Component::Prefix(_)) => {}
            Some(Component::ParentDir) => {
                if current != root {
                    current.pop();
                }
            }
            Some(Component::Normal(name)) => {
                let next = current.join(name);
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(TemplateError::NotARootfs(format!(
                                "too many levels of symbolic links at {}",
                                path.display()
                            )));
                        }
                        let target = std::fs::read_link(&next).map_err(TemplateError::io(
                            format!("cannot read link {}", next.display()),
                        ))?;
                        if target.is_absolute() {
                            current = root.to_path_buf();
                        }
                        pending.extend(target.components().rev().map(|c| c.as_os_str().into()));
                    }
                    _ => current = next,
                }
            }
        }
    }
    Ok(current)
}

/// Makes sure `rootfs` has the `user` account, group and home. Returns one line per change
/// made, for progress output. Fails if `/etc/passwd` is missing.
pub fn ensure_user(rootfs: &Path) -> Result<Vec<String>, TemplateError> {
    let mut changes = Vec::new();
    let passwd_path = resolve_in_root(rootfs, Path::new("/etc/passwd"))?;
    if !passwd_path.is_file() {
        return Err(TemplateError::NotARootfs("/etc/passwd is missing".into()));
    }
    let passwd = read(&passwd_path)?;
    match uid_of(&passwd, USER_NAME) {
        Some(USER_ID) => {}
        Some(other) => changes.push(format!(
            "account '{USER_NAME}' exists with uid {other} (not {USER_ID}); left as it is"
        )),
        None => {
            let owners = names_with_id(&passwd, USER_ID);
            write(&passwd_path, &append_line(&passwd, &passwd_line()))?;
            changes.push(if owners.is_empty() {
                format!("added account '{USER_NAME}' (uid {USER_ID}) to /etc/passwd")
            } else {
                format!(
                    "added account '{USER_NAME}' to /etc/passwd, sharing uid {USER_ID} with {}",
                    owners.join(", ")
                )
            });
        }
    }

    let group_path = resolve_in_root(rootfs, Path::new("/etc/group"))?;
    let group = if group_path.exists() {
        read(&group_path)?
    } else {
        String::new()
    };
    if !has_entry(&group, USER_NAME) {
        write(&group_path, &append_line(&group, &group_line()))?;
        changes.push(format!(
            "added group '{USER_NAME}' (gid {USER_ID}) to /etc/group"
        ));
    }

    // Shadow files only when the image uses them; a locked password (`*`): login is not needed.
    let shadow_path = resolve_in_root(rootfs, Path::new("/etc/shadow"))?;
    if shadow_path.is_file() {
        let shadow = read(&shadow_path)?;
        if !has_entry(&shadow, USER_NAME) {
            let days = chrono::Utc::now().timestamp() / 86_400;
            write(
                &shadow_path,
                &append_line(&shadow, &format!("{USER_NAME}:*:{days}:0:99999:7:::")),
            )?;
            changes.push("added the account to /etc/shadow".into());
        }
    }
    let gshadow_path = resolve_in_root(rootfs, Path::new("/etc/gshadow"))?;
    if gshadow_path.is_file() {
        let gshadow = read(&gshadow_path)?;
        if !has_entry(&gshadow, USER_NAME) {
            write(
                &gshadow_path,
                &append_line(&gshadow, &format!("{USER_NAME}:!::")),
            )?;
        }
    }

    let home = resolve_in_root(rootfs, Path::new(USER_HOME))?;
    if !home.is_dir() {
        std::fs::create_dir_all(&home).map_err(TemplateError::io(format!(
            "cannot create {}",
            home.display()
        )))?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).map_err(
            TemplateError::io(format!("cannot chmod {}", home.display())),
        )?;
        std::os::unix::fs::lchown(&home, Some(USER_ID), Some(USER_ID)).map_err(
            TemplateError::io(format!("cannot chown {}", home.display())),
        )?;
        changes.push(format!("created {USER_HOME} owned by {USER_ID}:{USER_ID}"));
    }
    Ok(changes)
}

fn read(path: &Path) -> Result<String, TemplateError> {
    let raw = std::fs::read(path)
        .map_err(TemplateError::io(format!("cannot read {}", path.display())))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Rewrites a file in place, keeping its mode and owner (it was already inside the rootfs).
fn write(path: &Path, content: &str) -> Result<(), TemplateError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(TemplateError::io(format!(
            "cannot write {}",
            path.display()
        )))?;
    f.write_all(content.as_bytes())
        .map_err(TemplateError::io(format!(
            "cannot write {}",
            path.display()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash";

    #[test]
    fn database_queries() {
        assert!(has_entry(PASSWD, "root"));
        assert!(!has_entry(PASSWD, "user"));
        assert!(!has_entry(PASSWD, "roo"));
        assert_eq!(uid_of(PASSWD, "ubuntu"), Some(1000));
        assert_eq!(uid_of(PASSWD, "user"), None);
        assert_eq!(names_with_id(PASSWD, 1000), vec!["ubuntu".to_string()]);
    }

    #[test]
    fn append_adds_missing_newline() {
        assert_eq!(append_line("a:x:1:", "b"), "a:x:1:\nb\n");
        assert_eq!(append_line("a\n", "b"), "a\nb\n");
        assert_eq!(append_line("", "b"), "b\n");
    }

    #[test]
    fn resolve_stays_inside_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("real/etc")).expect("mkdir");
        std::os::unix::fs::symlink("/real/etc", root.join("etc")).expect("link");
        std::os::unix::fs::symlink("../../../../outside", root.join("real/etc/passwd"))
            .expect("link");
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/group")).expect("resolve"),
            root.join("real/etc/group")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/passwd")).expect("resolve"),
            root.join("outside")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("link");
        assert!(resolve_in_root(root, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn ensure_user_patches_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        assert!(matches!(
            ensure_user(root),
            Err(TemplateError::NotARootfs(_))
        ));
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/passwd"), PASSWD).expect("write");
        std::fs::write(root.join("etc/shadow"), "root:*:1:0:99999:7:::\n").expect("write");
        let changes = ensure_user(root).expect("ensure");
        assert!(
            changes
                .iter()
                .any(|c| c.contains("sharing uid 1000 with ubuntu")),
            "{changes:?}"
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("read");
        assert!(passwd.ends_with("\nuser:x:1000:1000:Sandbox user:/home/user:/bin/bash\n"));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/group")).expect("read"),
            "user:x:1000:\n"
        );
        assert!(std::fs::read_to_string(root.join("etc/shadow"))
            .expect("read")
            .contains("\nuser:*:"));
        assert!(root.join("home/user").is_dir());
        assert!(ensure_user(root).expect("second run").is_empty());
    }
}
