//! The sandbox's file system view, built by its PID 1 inside its own (private) mount namespace
//! before exec: the overlay root, `/proc`, a minimal `/dev`, read-only `/sys`, envd's run
//! directory and binary, `/etc/hostname` and `/etc/hosts`, then `pivot_root`. Nothing here
//! touches the host's mount table: every function must run after `unshare(CLONE_NEWNS)` and
//! [`make_private`].

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A step of the setup that failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub(crate) struct SetupError {
    /// What was being done.
    pub step: String,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl SetupError {
    pub(crate) fn new(step: impl Into<String>, source: impl Into<io::Error>) -> Self {
        SetupError {
            step: step.into(),
            source: source.into(),
        }
    }
}

type Result<T> = std::result::Result<T, SetupError>;

/// Host device nodes bind-mounted into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Where things go in the new root.
#[derive(Debug)]
pub(crate) struct RootLayout<'a> {
    /// Template root file system (overlay lower layer).
    pub rootfs: &'a Path,
    /// The sandbox's state directory (`upper`, `work`, `root`, `run`).
    pub state_dir: &'a Path,
    /// envd on the host.
    pub envd_bin: &'a Path,
    /// Hostname of the sandbox.
    pub hostname: &'a str,
}

impl RootLayout<'_> {
    /// The overlay mount point, which becomes `/`.
    pub(crate) fn root(&self) -> PathBuf {
        self.state_dir.join("root")
    }
}

/// Whether `path` can be given to overlayfs as a mount option without escaping.
pub(crate) fn overlay_safe(path: &Path) -> bool {
    path.to_str().is_some_and(|s| !s.contains([',', ':', '\\']))
}

/// Makes every mount of the (new, unshared) namespace private, so nothing propagates back to
/// the host.
pub(crate) fn make_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| SetupError::new("making / private", e))
}

/// Mounts everything the sandbox sees under the overlay root.
pub(crate) fn build_root(layout: &RootLayout<'_>) -> Result<()> {
    let root = layout.root();
    mount_overlay(layout, &root)?;
    mount_fs(
        &root.join("proc"),
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_dev(&root.join("dev"))?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(&root.join("sys"), "sysfs", ro, None)?;
    let run = root.join(crate::SANDBOX_RUN_DIR.trim_start_matches('/'));
    mkdir(&run)?;
    bind(
        &layout.state_dir.join("run"),
        &run,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    let envd = root.join(crate::SANDBOX_ENVD_PATH.trim_start_matches('/'));
    if let Some(dir) = envd.parent() {
        mkdir(dir)?;
    }
    touch(&envd)?;
    bind(
        layout.envd_bin,
        &envd,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    write_etc(&root, layout.hostname)
}

fn mount_overlay(layout: &RootLayout<'_>, root: &Path) -> Result<()> {
    let upper = layout.state_dir.join("upper");
    let work = layout.state_dir.join("work");
    for p in [layout.rootfs, upper.as_path(), work.as_path()] {
        if !overlay_safe(p) {
            let err = io::Error::new(io::ErrorKind::InvalidInput, "path has ',', ':' or '\\'");
            return Err(SetupError::new(
                format!("overlay path {}", p.display()),
                err,
            ));
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        layout.rootfs.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| SetupError::new("mounting overlay root", e))
}

fn mount_dev(dev: &Path) -> Result<()> {
    mount_fs(
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        touch(&target)?;
        bind(&Path::new("/dev").join(name), &target, MsFlags::MS_NOSUID)?;
    }
    mount_fs(
        &dev.join("pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        &dev.join("shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| SetupError::new(format!("linking {}", path.display()), e))?;
    }
    Ok(())
}

fn write_etc(root: &Path, hostname: &str) -> Result<()> {
    let etc = root.join("etc");
    mkdir(&etc)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for (name, text) in [("hostname", format!("{hostname}\n")), ("hosts", hosts)] {
        let path = etc.join(name);
        // A symlink in the template must not redirect the write.
        if path.is_symlink() {
            std::fs::remove_file(&path)
                .map_err(|e| SetupError::new(format!("removing {}", path.display()), e))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| SetupError::new(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// Makes `root` the root of the mount namespace and detaches the old root.
pub(crate) fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| SetupError::new("entering new root", e))?;
    // With new_root == put_old the old root ends up stacked under the new one and can be
    // detached right away (no directory for it is needed inside the sandbox).
    nix::unistd::pivot_root(".", ".").map_err(|e| SetupError::new("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| SetupError::new("detaching old root", e))?;
    nix::unistd::chdir("/").map_err(|e| SetupError::new("entering /", e))
}

fn mount_fs(target: &Path, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mkdir(target)?;
    mount(Some(fstype), target, Some(fstype), flags, data)
        .map_err(|e| SetupError::new(format!("mounting {fstype} on {}", target.display()), e))
}

/// Bind-mounts `source` on `target`, then applies `flags` (e.g. read-only) with a remount,
/// which is the only way a bind mount takes them.
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<()> {
    let step = || format!("bind-mounting {} on {}", source.display(), target.display());
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| SetupError::new(step(), e))?;
    if !flags.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(|e| SetupError::new(format!("{} (remount)", step()), e))?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| SetupError::new(format!("creating {}", path.display()), e))
}

fn touch(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| SetupError::new(format!("creating {}", path.display()), e))
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent)
        .map(|p| p.dev() != meta.dev())
        .unwrap_or(false)
}

/// Detaches a mount left on the host at `path` (should never happen; a safety net before
/// deleting a state directory so the template below an overlay is never touched).
pub(crate) fn detach(path: &Path) -> io::Result<()> {
    umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_paths_must_not_need_escaping() {
        assert!(overlay_safe(Path::new(
            "/var/lib/paddock/templates/base/rootfs"
        )));
        assert!(!overlay_safe(Path::new("/tmp/a,b")));
        assert!(!overlay_safe(Path::new("/tmp/a:b")));
    }

    #[test]
    fn mount_points_are_recognised() {
        assert!(is_mount_point(Path::new("/proc")));
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(&tmp.path().join("missing")));
        std::fs::create_dir(tmp.path().join("d")).expect("mkdir");
        assert!(!is_mount_point(&tmp.path().join("d")));
    }
}
