//! Kernel feature checks: root, kernel version, namespaces, overlayfs, loop devices, seccomp. Namespace and
//! mount tests run in spawned `unshare` subprocesses.

use std::path::{Path, PathBuf};

use super::{find_program, run_command, Check};

/// Oldest kernel the node can work on at all.
const MIN_KERNEL: (u32, u32) = (4, 18);
/// Oldest kernel without a warning.
const GOOD_KERNEL: (u32, u32) = (5, 10);

/// Whether the doctor runs as root (the namespace driver needs it).
pub fn root() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_uid(&status) {
        Some(0) => Check::ok("root", "running as root (euid 0)"),
        Some(uid) => Check::fail(
            "root",
            format!("running as euid {uid}; the namespace driver needs root"),
            "run paddock as root (sudo paddock ...)",
        ),
        None => Check::fail(
            "root",
            "cannot read the effective uid from /proc/self/status",
            "mount /proc (mount -t proc proc /proc)",
        ),
    }
}

/// The effective uid from the text of `/proc/<pid>/status` (`Uid: real effective saved fs`).
pub fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

/// The running kernel's version.
pub fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    kernel_check(release)
}

/// [`kernel`] for a given release string.
pub fn kernel_check(release: &str) -> Check {
    let upgrade = format!(
        "upgrade to Linux {}.{} or newer (Paddock is tested on 6.x)",
        GOOD_KERNEL.0, GOOD_KERNEL.1
    );
    match parse_kernel_version(release) {
        Some((major, minor, _)) if (major, minor) >= GOOD_KERNEL => {
            Check::ok("kernel", format!("Linux {release}"))
        }
        Some((major, minor, _)) if (major, minor) >= MIN_KERNEL => Check::warn(
            "kernel",
            format!(
                "Linux {release} is older than {}.{}",
                GOOD_KERNEL.0, GOOD_KERNEL.1
            ),
            upgrade,
        ),
        Some(_) => Check::fail(
            "kernel",
            format!(
                "Linux {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            upgrade,
        ),
        None => Check::warn(
            "kernel",
            format!("cannot parse kernel release '{release}'"),
            "check /proc/sys/kernel/osrelease",
        ),
    }
}

/// `(major, minor, patch)` from a release such as `6.18.0-1-amd64` or `5.4`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let numeric: &str = release
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = numeric.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// One namespace kind: display name, `/proc/self/ns` entry, `unshare` flags.
const NAMESPACES: [(&str, &str, &[&str]); 6] = [
    ("user", "user", &["--user"]),
    ("pid", "pid", &["--pid", "--fork"]),
    ("mount", "mnt", &["--mount"]),
    ("net", "net", &["--net"]),
    ("uts", "uts", &["--uts"]),
    ("ipc", "ipc", &["--ipc"]),
];

/// One check per namespace kind: the `/proc/self/ns` entry exists and `unshare --<ns> true`
/// works in a subprocess. User namespaces only warn: the driver does not use them yet.
pub fn namespaces() -> Vec<Check> {
    let unshare = find_program("unshare");
    NAMESPACES
        .iter()
        .map(|(name, entry, flags)| {
            namespace(
                name,
                &Path::new("/proc/self/ns").join(entry),
                flags,
                unshare.as_deref(),
            )
        })
        .collect()
}

fn namespace(name: &str, entry: &Path, flags: &[&str], unshare: Option<&Path>) -> Check {
    let label = format!("namespace: {name}");
    let bad = |detail: String, fix: String| {
        if name == "user" {
            Check::warn(&label, detail, fix)
        } else {
            Check::fail(&label, detail, fix)
        }
    };
    let config = format!("a kernel built with CONFIG_{}_NS", name.to_uppercase());
    if !entry.exists() {
        return bad(
            format!("{} is missing", entry.display()),
            format!("boot {config}"),
        );
    }
    let Some(unshare) = unshare else {
        return bad(
            format!(
                "{} exists but unshare(1) is missing, so it was not tried",
                entry.display()
            ),
            "apt-get install util-linux".into(),
        );
    };
    let mut args: Vec<&str> = flags.to_vec();
    args.push("true");
    let out = run_command(unshare, &args);
    if out.success {
        Check::ok(&label, format!("unshare {} works", flags.join(" ")))
    } else {
        bad(
            format!("unshare {} failed: {}", flags.join(" "), out.stderr),
            format!(
                "run as root with {config}; in a container, give it CAP_SYS_ADMIN and no seccomp/AppArmor profile that blocks unshare"
            ),
        )
    }
}

/// `user.max_user_namespaces` must be above 0 for user namespaces (a warning only).
pub fn user_namespace_limit() -> Check {
    let name = "user.max_user_namespaces";
    match std::fs::read_to_string("/proc/sys/user/max_user_namespaces") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) if n > 0 => Check::ok(name, format!("{n}")),
            Ok(_) => Check::warn(
                name,
                "0: user namespaces are disabled",
                "sysctl -w user.max_user_namespaces=15000",
            ),
            Err(_) => Check::warn(
                name,
                format!("unreadable value '{}'", text.trim()),
                "check the sysctl",
            ),
        },
        Err(e) => Check::warn(
            name,
            format!("/proc/sys/user/max_user_namespaces: {e}"),
            "boot a kernel built with CONFIG_USER_NS",
        ),
    }
}

/// overlayfs is known to the kernel and an overlay mount works in a throwaway mount namespace
/// (lower, upper and work dirs in a temp dir that is removed afterwards).
pub fn overlayfs() -> Check {
    let name = "overlayfs";
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|t| filesystems_contains(&t, "overlay"))
        .unwrap_or(false);
    let Some(unshare) = find_program("unshare") else {
        return Check::fail(
            name,
            format!("in /proc/filesystems: {listed}; unshare(1) is missing, so no mount was tried"),
            "apt-get install util-linux",
        );
    };
    let base = std::env::temp_dir().join(format!(
        "paddock-doctor-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let result = overlay_mount_test(&unshare, &base);
    let _ = std::fs::remove_dir_all(&base);
    match result {
        Ok(()) => Check::ok(
            name,
            "an overlay mount works (lower visible, writes land in upper)",
        ),
        Err(why) => Check::fail(
            name,
            format!("in /proc/filesystems: {listed}; overlay mount failed: {why}"),
            "modprobe overlay (or boot a kernel with CONFIG_OVERLAY_FS); run as root",
        ),
    }
}

fn overlay_mount_test(unshare: &Path, base: &Path) -> Result<(), String> {
    let dirs: Vec<PathBuf> = ["lower", "upper", "work", "merged"]
        .iter()
        .map(|d| base.join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    std::fs::write(dirs[0].join("from-lower"), b"x").map_err(|e| format!("writing lower: {e}"))?;
    let script = "mount -t overlay overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" \"$4\" \
                  && test -f \"$4/from-lower\" && echo x > \"$4/written\"; rc=$?; umount \"$4\" 2>/dev/null; exit $rc";
    let path_strs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut args = vec!["--mount", "sh", "-c", script, "sh"];
    args.extend(path_strs.iter().map(String::as_str));
    let out = run_command(unshare, &args);
    if !out.success {
        return Err(out.stderr);
    }
    if !dirs[1].join("written").is_file() {
        return Err("a file written through the overlay did not appear in the upper dir".into());
    }
    Ok(())
}

/// Whether the text of `/proc/filesystems` lists `fstype`.
pub fn filesystems_contains(text: &str, fstype: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(fstype))
}

/// Seccomp is in the kernel (`Seccomp:` in `/proc/self/status`) and user notification is in
/// `/proc/sys/kernel/seccomp/actions_avail`.
pub fn seccomp() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok();
    seccomp_check(&status, actions.as_deref())
}

/// [`seccomp`] over the text of `/proc/self/status` and of `actions_avail` (if readable).
pub fn seccomp_check(status: &str, actions_avail: Option<&str>) -> Check {
    let name = "seccomp";
    let kernel_fix = "boot a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER";
    let Some(mode) = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
    else {
        return Check::fail(name, "no Seccomp field in /proc/self/status", kernel_fix);
    };
    let mode = match mode {
        "0" => "this process is unfiltered",
        "1" => "this process is in strict mode",
        "2" => "this process already runs under a filter (container?)",
        _ => "unknown mode",
    };
    let Some(actions) = actions_avail else {
        return Check::fail(
            name,
            format!("{mode}; /proc/sys/kernel/seccomp/actions_avail is missing"),
            kernel_fix,
        );
    };
    if actions.split_whitespace().any(|a| a == "user_notif") {
        Check::ok(name, format!("filters with user notification ({mode})"))
    } else {
        Check::warn(
            name,
            format!(
                "no user_notif in actions_avail ({}); {mode}",
                actions.trim()
            ),
            "upgrade to Linux 5.0 or newer for seccomp user notification",
        )
    }
}

/// Per-sandbox disks (the quota on the writable layer): loop devices, ext4 and `mkfs.ext4`.
pub fn loop_devices() -> Check {
    let control = Path::new(paddock_sandbox::namespace::disk::LOOP_CONTROL);
    let ext4 = std::fs::read_to_string("/proc/filesystems")
        .map(|t| filesystems_contains(&t, "ext4"))
        .unwrap_or(false);
    loop_devices_check(control.exists(), ext4, find_program("mkfs.ext4"))
}

/// Grades [`loop_devices`] from what was found.
pub fn loop_devices_check(control: bool, ext4: bool, mkfs: Option<PathBuf>) -> Check {
    let name = "disk quota (loop devices)";
    if !control {
        return Check::fail(
            name,
            format!(
                "{} is missing: sandboxes cannot get their own disk",
                paddock_sandbox::namespace::disk::LOOP_CONTROL
            ),
            "modprobe loop (in a container: pass /dev/loop-control and /dev/loop* through)",
        );
    }
    if !ext4 {
        return Check::fail(
            name,
            "the kernel has no ext4",
            "modprobe ext4 (or boot a kernel with CONFIG_EXT4_FS)",
        );
    }
    match mkfs {
        Some(p) => Check::ok(
            name,
            format!("loop devices, ext4 and {} are available", p.display()),
        ),
        None => Check::fail(name, "mkfs.ext4 is missing", "apt-get install e2fsprogs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn loop_device_grading() {
        let mkfs = Some(PathBuf::from("/sbin/mkfs.ext4"));
        assert_eq!(
            loop_devices_check(true, true, mkfs.clone()).status,
            Status::Ok
        );
        let no_loop = loop_devices_check(false, true, mkfs.clone());
        assert_eq!(no_loop.status, Status::Fail);
        assert!(
            no_loop.detail.contains("/dev/loop-control"),
            "{}",
            no_loop.detail
        );
        assert_eq!(loop_devices_check(true, false, mkfs).status, Status::Fail);
        assert_eq!(loop_devices_check(true, true, None).status, Status::Fail);
    }

    #[test]
    fn kernel_versions_parse_and_grade() {
        assert_eq!(parse_kernel_version("6.18.0-1-amd64"), Some((6, 18, 0)));
        assert_eq!(parse_kernel_version("5.4"), Some((5, 4, 0)));
        assert_eq!(
            parse_kernel_version("5.15.153.1-microsoft-standard-WSL2"),
            Some((5, 15, 153))
        );
        assert_eq!(parse_kernel_version("6.1.0+"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert_eq!(parse_kernel_version(""), None);
        assert_eq!(kernel_check("6.18.0").status, Status::Ok);
        assert_eq!(kernel_check("5.10.0-28-amd64").status, Status::Ok);
        assert_eq!(kernel_check("4.19.0").status, Status::Warn);
        assert_eq!(kernel_check("3.10.0-1160.el7").status, Status::Fail);
        assert_eq!(kernel_check("weird").status, Status::Warn);
    }

    #[test]
    fn uid_and_filesystems_parse() {
        let status = "Name:\tcat\nUid:\t1000\t0\t1000\t1000\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
        let fs = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert!(filesystems_contains(fs, "overlay"));
        assert!(filesystems_contains(fs, "ext4"));
        assert!(!filesystems_contains(fs, "xfs"));
    }

    #[test]
    fn seccomp_grading() {
        let acts = "kill_process kill_thread trap errno user_notif trace log allow";
        assert_eq!(
            seccomp_check("Seccomp:\t0\n", Some(acts)).status,
            Status::Ok
        );
        let warn = seccomp_check("Seccomp:\t2\n", Some("kill_process errno allow"));
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.detail.contains("under a filter"), "{}", warn.detail);
        assert_eq!(seccomp_check("Name:\tx\n", Some(acts)).status, Status::Fail);
        assert_eq!(seccomp_check("Seccomp:\t0\n", None).status, Status::Fail);
    }
}
