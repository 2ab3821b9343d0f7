//! The user-id mapping of sandboxes: every sandbox runs in its own user namespace in which ids
//! `0..size` are host ids `base..base + size`, so root inside a sandbox is an unprivileged,
//! otherwise unused host uid. All sandboxes of a node share one range (as Docker's
//! `userns-remap` does); why that is safe, and what a per-sandbox range would add, is written
//! down in docs/security.md.
//!
//! Template root file systems are stored already shifted into the range ([`shift_tree`]), so a
//! sandbox sees its files owned by `root`, `user`, … without any per-create work; a marker file
//! beside the tree (`.<tree name>.idmap`, see [`marker_path`]) records the range it was shifted
//! to.

use crate::xattr::{get_xattr, set_xattr};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// File capabilities xattr (cleared by the kernel on chown, so it is re-written).
const CAP_XATTR: &std::ffi::CStr = c"security.capability";
/// `VFS_CAP_REVISION_2` / `_3` and the effective flag (linux/capability.h).
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;

/// A contiguous range of host ids that ids `0..size` of a sandbox map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    /// Host uid (and gid) of sandbox id 0.
    pub base: u32,
    /// Number of ids mapped (sandbox ids `0..size`).
    pub size: u32,
}

impl IdMap {
    /// The default range: host ids 2 100 000 000 – 2 100 065 535, far above login accounts,
    /// `/etc/subuid` ranges and the ranges SSSD assigns to directory users, and below 2^31 so
    /// no tool misreads them as negative.
    pub const DEFAULT: IdMap = IdMap {
        base: 2_100_000_000,
        size: 65_536,
    };

    /// The host id of sandbox id `id` (ids outside the range become sandbox `nobody`).
    pub fn to_host(&self, id: u32) -> u32 {
        let id = if id < self.size { id } else { NOBODY };
        self.base + id
    }

    /// Whether `host` lies in the range.
    pub fn contains(&self, host: u32) -> bool {
        host >= self.base && host - self.base < self.size
    }

    /// The content of `/proc/<pid>/uid_map` and `gid_map` for this range.
    pub fn proc_map(&self) -> String {
        format!("0 {} {}\n", self.base, self.size)
    }

    /// The marker text for this range.
    fn marker(&self) -> String {
        format!("{} {}\n", self.base, self.size)
    }
}

/// The sandbox's `nobody` (what ids outside the range are mapped to).
const NOBODY: u32 = 65_534;

/// What [`shift_tree`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShiftStats {
    /// Entries whose owner was changed.
    pub shifted: u64,
    /// Entries already in the range (hard links seen twice, or a resumed shift).
    pub skipped: u64,
    /// Entries whose uid or gid was outside `0..size` and became `nobody`.
    pub clamped: u64,
}

/// Whether the tree at `root` is marked as shifted into `map`.
pub fn is_shifted(root: &Path, map: &IdMap) -> bool {
    marker_path(root)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|text| text == map.marker())
}

/// Shifts the owner of every entry under `root` (inclusive, not following symlinks, not
/// crossing into other file systems) from sandbox ids to host ids of `map`, keeping set-id
/// bits and re-writing file capabilities for the range's root, then writes the marker. Entries
/// already in the range are left alone, so a shift interrupted half-way can simply be run
/// again, and a hard link is shifted once.
pub fn shift_tree(root: &Path, map: &IdMap) -> io::Result<ShiftStats> {
    if is_shifted(root, map) {
        return Ok(ShiftStats::default());
    }
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut stats = ShiftStats::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| annotate(e, "inspecting", &path))?;
        if meta.is_dir() && meta.dev() == dev {
            for entry in std::fs::read_dir(&path).map_err(|e| annotate(e, "listing", &path))? {
                stack.push(entry.map_err(|e| annotate(e, "listing", &path))?.path());
            }
        }
        shift_one(&path, &meta, map, &mut stats)?;
    }
    let marker = marker_path(root).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the tree's root has no parent")
    })?;
    std::fs::write(&marker, map.marker()).map_err(|e| annotate(e, "writing", &marker))?;
    Ok(stats)
}

fn shift_one(
    path: &Path,
    meta: &std::fs::Metadata,
    map: &IdMap,
    stats: &mut ShiftStats,
) -> io::Result<()> {
    let (uid, gid) = (meta.uid(), meta.gid());
    if map.contains(uid) && map.contains(gid) {
        stats.skipped += 1;
        return Ok(());
    }
    if uid >= map.size || gid >= map.size {
        stats.clamped += 1;
        tracing::warn!(path = %path.display(), uid, gid, "id outside the sandbox range, shown as nobody");
    }
    let is_link = meta.file_type().is_symlink();
    let caps = if is_link {
        None
    } else {
        get_xattr(path, CAP_XATTR).map_err(|e| annotate(e, "reading capabilities of", path))?
    };
    std::os::unix::fs::lchown(path, Some(map.to_host(uid)), Some(map.to_host(gid)))
        .map_err(|e| annotate(e, "changing the owner of", path))?;
    if !is_link {
        // chown clears set-user-ID and set-group-ID bits (and file capabilities).
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o6000 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| annotate(e, "restoring the mode of", path))?;
        }
        if let Some(caps) = caps {
            if let Some(v3) = caps_for_root(&caps, map.base) {
                set_xattr(path, CAP_XATTR, &v3)
                    .map_err(|e| annotate(e, "restoring capabilities of", path))?;
            }
        }
    }
    stats.shifted += 1;
    Ok(())
}

/// Re-encodes a `security.capability` value as revision 3 owned by host uid `root` (the
/// sandbox's root), which is the only form the kernel honours inside the user namespace.
/// `None` for a value it cannot parse (then the capabilities are dropped, never widened).
fn caps_for_root(raw: &[u8], root: u32) -> Option<Vec<u8>> {
    if raw.len() < 20 {
        return None;
    }
    let magic = u32::from_le_bytes(raw[0..4].try_into().ok()?);
    let rev = magic & VFS_CAP_REVISION_MASK;
    if rev != VFS_CAP_REVISION_2 && rev != VFS_CAP_REVISION_3 {
        return None;
    }
    let flags = magic & !VFS_CAP_REVISION_MASK;
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&(VFS_CAP_REVISION_3 | flags).to_le_bytes());
    out.extend_from_slice(&raw[4..20]);
    out.extend_from_slice(&root.to_le_bytes());
    Some(out)
}

/// The marker of the tree at `root`: `.<name>.idmap` in its parent directory (`None` for `/`).
pub fn marker_path(root: &Path) -> Option<std::path::PathBuf> {
    let name = root.file_name()?.to_string_lossy();
    Some(root.parent()?.join(format!(".{name}.idmap")))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const MAP: IdMap = IdMap {
        base: 3_000_000,
        size: 65_536,
    };

    #[test]
    fn host_ids_and_proc_map() {
        assert_eq!(MAP.to_host(0), 3_000_000);
        assert_eq!(MAP.to_host(1000), 3_001_000);
        assert_eq!(MAP.to_host(70_000), 3_000_000 + NOBODY);
        assert!(MAP.contains(3_000_000) && MAP.contains(3_065_535));
        assert!(!MAP.contains(2_999_999) && !MAP.contains(3_065_536));
        assert_eq!(MAP.proc_map(), "0 3000000 65536\n");
        let d = IdMap::DEFAULT;
        assert!(d.base.checked_add(d.size).is_some_and(|end| end < 1 << 31));
    }

    #[test]
    fn caps_are_rewritten_for_the_range_root() {
        // v2, effective, cap_net_raw (bit 13) permitted.
        let mut v2 = (VFS_CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        v2.extend_from_slice(&(1u32 << 13).to_le_bytes());
        v2.extend_from_slice(&[0; 12]);
        let v3 = caps_for_root(&v2, 42).expect("v3");
        assert_eq!(v3.len(), 24);
        assert_eq!(&v3[0..4], &(VFS_CAP_REVISION_3 | 1).to_le_bytes());
        assert_eq!(&v3[4..20], &v2[4..20]);
        assert_eq!(&v3[20..24], &42u32.to_le_bytes());
        assert_eq!(caps_for_root(&[1, 2, 3], 42), None);
        let mut bad = v2.clone();
        bad[3] = 0x09;
        assert_eq!(caps_for_root(&bad, 42), None);
    }

    #[test]
    fn shift_keeps_setid_bits_links_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("home/user")).expect("mkdir");
        let sudo = root.join("sudo");
        std::fs::write(&sudo, "x").expect("write");
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        std::os::unix::fs::lchown(root.join("home/user"), Some(1000), Some(1000)).expect("chown");
        std::fs::hard_link(&sudo, root.join("sudo-link")).expect("link");
        symlink("/etc/passwd", root.join("link")).expect("symlink");
        std::os::unix::fs::lchown(root.join("link"), Some(70_000), Some(5)).expect("chown");
        // Another file system below (a mount) is not crossed: simulate with nothing mounted.

        let stats = shift_tree(&root, &MAP).expect("shift");
        assert!(is_shifted(&root, &MAP));
        // root, home, home/user, sudo (once: its hard link is skipped), link.
        assert_eq!(stats.shifted, 5, "{stats:?}");
        assert_eq!(stats.skipped, 1, "{stats:?}");
        assert_eq!(stats.clamped, 1, "{stats:?}");
        let meta = |p: &Path| std::fs::symlink_metadata(p).expect("stat");
        assert_eq!(meta(&root).uid(), MAP.base);
        assert_eq!(meta(&root.join("home/user")).uid(), MAP.base + 1000);
        assert_eq!(meta(&root.join("home/user")).gid(), MAP.base + 1000);
        assert_eq!(meta(&sudo).uid(), MAP.base);
        assert_eq!(meta(&sudo).permissions().mode() & 0o7777, 0o4755);
        assert_eq!(meta(&root.join("link")).uid(), MAP.base + NOBODY);
        assert_eq!(meta(&root.join("link")).gid(), MAP.base + 5);
        // A second run is a no-op (the marker is there); without it nothing is shifted twice.
        assert_eq!(
            shift_tree(&root, &MAP).expect("again"),
            ShiftStats::default()
        );
        assert_eq!(marker_path(&root), Some(tmp.path().join(".rootfs.idmap")));
        std::fs::remove_file(tmp.path().join(".rootfs.idmap")).expect("rm marker");
        let again = shift_tree(&root, &MAP).expect("again");
        assert_eq!(again.shifted, 0, "{again:?}");
        assert_eq!(meta(&root.join("home/user")).uid(), MAP.base + 1000);
        // A different range is not "shifted".
        let other = IdMap { base: 5, ..MAP };
        assert!(!is_shifted(&root, &other));
    }

    #[test]
    fn file_capabilities_survive_the_shift() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("rootfs");
        std::fs::create_dir(&root).expect("mkdir");
        let ping = root.join("ping");
        std::fs::write(&ping, "x").expect("write");
        let mut v2 = (VFS_CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        v2.extend_from_slice(&(1u32 << 13).to_le_bytes());
        v2.extend_from_slice(&[0; 12]);
        if set_xattr(&ping, CAP_XATTR, &v2).is_err() {
            eprintln!("skipping: this file system takes no security xattrs");
            return;
        }
        shift_tree(&root, &MAP).expect("shift");
        let caps = get_xattr(&ping, CAP_XATTR)
            .expect("read")
            .expect("caps kept");
        assert_eq!(&caps[4..8], &(1u32 << 13).to_le_bytes());
        assert_eq!(caps.len(), 24);
        assert_eq!(&caps[20..24], &MAP.base.to_le_bytes());
    }
}
