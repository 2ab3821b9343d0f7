//! Host checks outside the kernel core: nftables, IP forwarding, veth, the data dir (free space,
//! filesystem type), debootstrap and the envd binary.

use std::path::{Path, PathBuf};

use super::{find_program, run_command, Check};

const GIB: u64 = 1024 * 1024 * 1024;
/// Below this much free space in the data dir: warning.
pub const WARN_FREE_BYTES: u64 = 5 * GIB;
/// Below this much free space in the data dir: failure.
pub const FAIL_FREE_BYTES: u64 = GIB;

/// `nft` is installed and `nft list tables` works (sandbox networking will need it).
pub fn nftables() -> Check {
    let name = "nftables";
    let Some(nft) = find_program("nft") else {
        return Check::warn(
            name,
            "nft is not installed; sandbox networking features will need it",
            "apt-get install nftables",
        );
    };
    let out = run_command(&nft, &["list", "tables"]);
    if out.success {
        Check::ok(name, format!("{} list tables works", nft.display()))
    } else {
        Check::warn(
            name,
            format!("nft list tables failed: {}", out.stderr),
            "run as root on a kernel with CONFIG_NF_TABLES (modprobe nf_tables)",
        )
    }
}

/// `net.ipv4.ip_forward` is 1 (sandboxes reaching the network will need it).
pub fn ip_forward() -> Check {
    let name = "net.ipv4.ip_forward";
    let fix = "sysctl -w net.ipv4.ip_forward=1 (persist it in /etc/sysctl.d/99-paddock.conf)";
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => Check::ok(name, "1"),
        Ok(v) => Check::warn(
            name,
            format!("{}: sandboxes will not reach outside networks", v.trim()),
            fix,
        ),
        Err(e) => Check::warn(name, format!("/proc/sys/net/ipv4/ip_forward: {e}"), fix),
    }
}

/// A veth pair can be created (in a throwaway network namespace, so the host sees nothing).
pub fn veth() -> Check {
    let name = "veth";
    let loaded = Path::new("/sys/module/veth").exists();
    let fix = "modprobe veth (kernel CONFIG_VETH)";
    let (Some(unshare), Some(ip)) = (find_program("unshare"), find_program("ip")) else {
        return if loaded {
            Check::warn(
                name,
                "the veth module is loaded but ip(8) or unshare(1) is missing, so no pair was made",
                "apt-get install iproute2 util-linux",
            )
        } else {
            Check::warn(name, "ip(8) or unshare(1) missing and veth not loaded", fix)
        };
    };
    let ip = ip.display().to_string();
    let out = run_command(
        &unshare,
        &[
            "--net", &ip, "link", "add", "pdk0", "type", "veth", "peer", "name", "pdk1",
        ],
    );
    if out.success {
        Check::ok(name, "a veth pair can be created in a network namespace")
    } else {
        Check::warn(
            name,
            format!("ip link add type veth failed: {}", out.stderr),
            fix,
        )
    }
}

/// Free space and filesystem type of the data dir (or, when it does not exist yet, of the
/// nearest existing parent, which is where it would be created). Creates nothing.
pub fn data_dir(dir: &Path) -> Vec<Check> {
    let Some(existing) = nearest_existing(dir) else {
        let detail = format!("no existing parent of {}", dir.display());
        return vec![
            Check::fail(
                "data dir space",
                detail.clone(),
                "pass an absolute --data-dir",
            ),
            Check::fail("data dir filesystem", detail, "pass an absolute --data-dir"),
        ];
    };
    let shown = if existing == dir {
        dir.display().to_string()
    } else {
        format!(
            "{} (not created yet; measured at {})",
            dir.display(),
            existing.display()
        )
    };
    let space = match nix::sys::statvfs::statvfs(&existing) {
        Ok(s) => space_check(
            &shown,
            s.blocks_available().saturating_mul(s.fragment_size()),
        ),
        Err(e) => Check::fail(
            "data dir space",
            format!("statvfs {}: {e}", existing.display()),
            "pass a readable --data-dir",
        ),
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let fstype = fstype_for(&mountinfo, &existing);
    vec![space, fs_check(&shown, fstype.as_deref())]
}

/// The first of `dir` and its ancestors that exists, canonicalised.
fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| p.canonicalize().ok())
}

/// Grades `free` bytes in the data dir.
pub fn space_check(dir: &str, free: u64) -> Check {
    let name = "data dir space";
    let gib = free as f64 / GIB as f64;
    let detail = format!("{gib:.1} GiB free in {dir}");
    let fix = "free space or point --data-dir at a larger filesystem";
    if free < FAIL_FREE_BYTES {
        Check::fail(
            name,
            detail,
            format!("{fix} (needs at least 1 GiB, 5 GiB recommended)"),
        )
    } else if free < WARN_FREE_BYTES {
        Check::warn(name, detail, format!("{fix} (5 GiB recommended)"))
    } else {
        Check::ok(name, detail)
    }
}

/// Grades the filesystem type of the data dir: sandboxes' writable layers are overlay upper
/// dirs there, which overlayfs itself cannot hold.
pub fn fs_check(dir: &str, fstype: Option<&str>) -> Check {
    let name = "data dir filesystem";
    let fix = "put --data-dir on ext4, xfs, btrfs or tmpfs (e.g. a mounted volume)";
    match fstype {
        Some("overlay") | Some("aufs") => Check::fail(
            name,
            format!(
                "{dir} is on {}, which cannot be an overlay upper dir",
                fstype.unwrap_or("")
            ),
            fix,
        ),
        Some(t @ ("ext4" | "ext3" | "xfs" | "btrfs" | "tmpfs" | "f2fs" | "zfs")) => {
            Check::ok(name, format!("{dir} is on {t}"))
        }
        Some(t) => Check::warn(
            name,
            format!("{dir} is on {t}, untested as an overlay upper dir (needs xattrs and d_type)"),
            fix,
        ),
        None => Check::warn(name, format!("cannot find the filesystem of {dir}"), fix),
    }
}

/// The filesystem type of the mount that holds the absolute path `path`, from the text of
/// `/proc/self/mountinfo` (the longest matching mount point; the last one when stacked).
pub fn fstype_for(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(mount_point), Some(fstype)) = (
            left.split_whitespace().nth(4),
            right.split_whitespace().next(),
        ) else {
            continue;
        };
        let mount_point = PathBuf::from(super::cgroups::unescape(mount_point));
        if path.starts_with(&mount_point) {
            let depth = mount_point.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fstype.to_string()));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// debootstrap is installed (it builds the `base` template).
pub fn debootstrap() -> Check {
    match find_program("debootstrap") {
        Some(p) => Check::ok("debootstrap", p.display().to_string()),
        None => Check::warn(
            "debootstrap",
            "not installed: the base template cannot be built (imported templates still work)",
            "apt-get install debootstrap",
        ),
    }
}

/// Where `paddock serve` looks for envd next to `exe`, most preferred first: the static build
/// `<exe dir>/../<arch>-unknown-linux-gnu/<profile>/paddock-envd`, then `<exe dir>/paddock-envd`.
pub fn envd_candidates(exe: &Path) -> Vec<PathBuf> {
    sandbox_binary_candidates(exe, "paddock-envd")
}

/// Where a binary that runs inside sandboxes (`paddock-envd`, `paddock-interpreter`) is looked
/// for next to `exe`, most preferred first: the static build
/// `<exe dir>/../<arch>-unknown-linux-gnu/<profile>/<name>`, then `<exe dir>/<name>`.
pub fn sandbox_binary_candidates(exe: &Path, name: &str) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let profile = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    vec![
        dir.join(format!("../{}-unknown-linux-gnu", std::env::consts::ARCH))
            .join(profile)
            .join(name),
        dir.join(name),
    ]
}

/// The envd binary exists: `flag` if given, else the first of [`envd_candidates`].
pub fn envd(flag: Option<&Path>, exe: Option<&Path>) -> Check {
    let name = "envd";
    let fix = "build it with scripts/setup.sh, or pass --envd-bin / set PADDOCK_ENVD_BIN";
    if let Some(p) = flag {
        return if p.is_file() {
            Check::ok(name, p.display().to_string())
        } else {
            Check::fail(name, format!("{} does not exist", p.display()), fix)
        };
    }
    let candidates = exe.map(envd_candidates).unwrap_or_default();
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Check::ok(name, p.display().to_string()),
        None if candidates.is_empty() => {
            Check::fail(name, "the paddock binary's location is unknown", fix)
        }
        None => Check::fail(
            name,
            format!(
                "not found at {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn space_thresholds() {
        assert_eq!(space_check("/d", 10 * GIB).status, Status::Ok);
        assert_eq!(space_check("/d", 5 * GIB).status, Status::Ok);
        assert_eq!(space_check("/d", 5 * GIB - 1).status, Status::Warn);
        assert_eq!(space_check("/d", GIB).status, Status::Warn);
        let fail = space_check("/d", GIB - 1);
        assert_eq!(fail.status, Status::Fail);
        assert!(
            fail.detail.starts_with("1.0 GiB free in /d"),
            "{}",
            fail.detail
        );
    }

    #[test]
    fn filesystem_types() {
        assert_eq!(fs_check("/d", Some("ext4")).status, Status::Ok);
        assert_eq!(fs_check("/d", Some("tmpfs")).status, Status::Ok);
        assert_eq!(fs_check("/d", Some("overlay")).status, Status::Fail);
        assert_eq!(fs_check("/d", Some("nfs4")).status, Status::Warn);
        assert_eq!(fs_check("/d", None).status, Status::Warn);
    }

    #[test]
    fn fstype_picks_the_deepest_mount() {
        let mi = "\
25 1 0:22 / / rw - overlay overlay rw,lowerdir=/a
26 25 8:1 / /var/lib rw - ext4 /dev/sda1 rw
27 25 0:30 / /var/lib/pad\\040dock rw - tmpfs tmpfs rw
28 26 0:31 / /var/lib rw - xfs /dev/sdb rw
";
        assert_eq!(
            fstype_for(mi, Path::new("/usr/bin")).as_deref(),
            Some("overlay")
        );
        assert_eq!(
            fstype_for(mi, Path::new("/var/lib/x")).as_deref(),
            Some("xfs")
        );
        assert_eq!(
            fstype_for(mi, Path::new("/var/lib/pad dock/t")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fstype_for(mi, Path::new("/var/library")).as_deref(),
            Some("overlay")
        );
        assert_eq!(fstype_for("", Path::new("/")), None);
    }

    #[test]
    fn data_dir_measures_the_nearest_parent_and_creates_nothing() {
        let tmp =
            std::env::temp_dir().join(format!("paddock-doctor-absent-{}", std::process::id()));
        let checks = data_dir(&tmp.join("a/b"));
        assert_eq!(checks.len(), 2);
        assert!(
            checks[0].detail.contains("not created yet"),
            "{}",
            checks[0].detail
        );
        assert!(!tmp.exists());
    }

    #[test]
    fn envd_lookup_follows_serve() {
        let exe = Path::new("/w/target/release/paddock");
        let c = envd_candidates(exe);
        assert_eq!(
            c[0],
            PathBuf::from(format!(
                "/w/target/release/../{}-unknown-linux-gnu/release/paddock-envd",
                std::env::consts::ARCH
            ))
        );
        assert_eq!(c[1], PathBuf::from("/w/target/release/paddock-envd"));

        let dir = std::env::temp_dir().join(format!("paddock-doctor-envd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("paddock-envd"), b"").expect("write");
        let found = envd(None, Some(&dir.join("paddock")));
        assert_eq!(found.status, Status::Ok, "{found:?}");
        assert_eq!(envd(Some(&dir.join("nope")), None).status, Status::Fail);
        assert_eq!(
            envd(Some(&dir.join("paddock-envd")), None).status,
            Status::Ok
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(envd(None, Some(&dir.join("paddock"))).status, Status::Fail);
        assert_eq!(envd(None, None).status, Status::Fail);
    }
}
