//! Users and paths inside the sandbox (spec 3.2). Users are read from the sandbox's own
//! `/etc/passwd` and `/etc/group` (never through NSS: envd is linked statically). Path rules:
//! empty → default workdir or home; `~`/`~/x` → home; relative → joined to the home; then cleaned.

use std::path::{Component, Path, PathBuf};

use base64::Engine;
use http::HeaderMap;

/// A user account of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
    /// Supplementary group ids (including the primary group).
    pub groups: Vec<u32>,
}

/// User or path resolution failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// No such user in `/etc/passwd`.
    #[error("user {0:?} does not exist in the sandbox")]
    UnknownUser(String),
    /// `~other` paths are not supported.
    #[error("path {0:?} refers to another user's home (~user paths are not supported)")]
    OtherHome(String),
    /// The passwd database could not be read.
    #[error("cannot read the user database: {0}")]
    Database(String),
}

/// Where the user database lives; `/etc` in a sandbox, a temp dir in tests.
#[derive(Debug, Clone)]
pub struct UserDb {
    etc: PathBuf,
}

impl Default for UserDb {
    fn default() -> Self {
        UserDb {
            etc: PathBuf::from("/etc"),
        }
    }
}

impl UserDb {
    /// A database rooted at another `etc` directory.
    pub fn at(etc: impl Into<PathBuf>) -> Self {
        UserDb { etc: etc.into() }
    }

    /// Looks a user up by name (numeric names are accepted as uids).
    pub fn lookup(&self, name: &str) -> Result<User, UserError> {
        let passwd = std::fs::read_to_string(self.etc.join("passwd"))
            .map_err(|e| UserError::Database(e.to_string()))?;
        let numeric: Option<u32> = name.parse().ok();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                continue;
            }
            let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
                continue;
            };
            if f[0] == name || numeric == Some(uid) {
                let groups = self.groups_of(f[0], gid);
                return Ok(User {
                    name: f[0].to_string(),
                    uid,
                    gid,
                    home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
                    shell: f[6].to_string(),
                    groups,
                });
            }
        }
        Err(UserError::UnknownUser(name.to_string()))
    }

    /// Name of a uid, or the number as a string.
    pub fn user_name(&self, uid: u32) -> String {
        name_of(&self.etc.join("passwd"), uid)
    }

    /// Name of a gid, or the number as a string.
    pub fn group_name(&self, gid: u32) -> String {
        name_of(&self.etc.join("group"), gid)
    }

    fn groups_of(&self, user: &str, primary: u32) -> Vec<u32> {
        let mut out = vec![primary];
        if let Ok(group) = std::fs::read_to_string(self.etc.join("group")) {
            for line in group.lines() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 {
                    continue;
                }
                if f[3].split(',').any(|m| m == user) {
                    if let Ok(gid) = f[2].parse::<u32>() {
                        if !out.contains(&gid) {
                            out.push(gid);
                        }
                    }
                }
            }
        }
        out
    }
}

fn name_of(file: &Path, id: u32) -> String {
    if let Ok(text) = std::fs::read_to_string(file) {
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 3 && f[2].parse::<u32>().ok() == Some(id) {
                return f[0].to_string();
            }
        }
    }
    id.to_string()
}

/// The user named by an RPC's `Authorization: Basic base64("<user>:")` header, if any.
pub fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split(':').next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_string())
}

/// Resolves a client path for `user` (spec 3.2) to a clean absolute path.
pub fn resolve_path(
    path: &str,
    user: &User,
    default_workdir: Option<&str>,
) -> Result<PathBuf, UserError> {
    let joined = if path.is_empty() {
        match default_workdir {
            Some(w) if !w.is_empty() => PathBuf::from(w),
            _ => user.home.clone(),
        }
    } else if path == "~" {
        user.home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if path.starts_with('~') {
        return Err(UserError::OtherHome(path.to_string()));
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        user.home.join(path)
    };
    Ok(clean(&joined))
}

/// Lexically cleans an absolute path (`.`, `..`, duplicate slashes), never escaping `/`.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("group"),
            "root:x:0:\nuser:x:1000:\nsudo:x:27:user\n",
        )
        .expect("group");
        let db = UserDb::at(dir.path());
        (dir, db)
    }

    #[test]
    fn looks_up_users_and_groups() {
        let (_d, db) = db();
        let u = db.lookup("user").expect("user");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 27]);
        assert_eq!(db.lookup("0").expect("root").name, "root");
        assert_eq!(
            db.lookup("nobody"),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(db.user_name(1000), "user");
        assert_eq!(db.group_name(4242), "4242");
    }

    #[test]
    fn resolves_paths_per_spec() {
        let (_d, db) = db();
        let u = db.lookup("user").expect("user");
        assert_eq!(
            resolve_path("", &u, None).expect("home"),
            PathBuf::from("/home/user")
        );
        assert_eq!(
            resolve_path("", &u, Some("/work")).expect("wd"),
            PathBuf::from("/work")
        );
        assert_eq!(
            resolve_path("~/a/../b", &u, None).expect("tilde"),
            PathBuf::from("/home/user/b")
        );
        assert_eq!(
            resolve_path("x/y", &u, Some("/work")).expect("rel"),
            PathBuf::from("/home/user/x/y")
        );
        assert_eq!(
            resolve_path("/../../etc", &u, None).expect("abs"),
            PathBuf::from("/etc")
        );
        assert!(resolve_path("~root/x", &u, None).is_err());
    }

    #[test]
    fn parses_basic_auth() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic cm9vdDo="),
        );
        assert_eq!(basic_auth_user(&h).as_deref(), Some("root"));
        assert_eq!(basic_auth_user(&HeaderMap::new()), None);
    }
}
