//! The sandbox's file system view, built by its PID 1 inside its own (private) mount namespace
//! before exec: the overlay root, `/proc` with its sensitive parts masked or read-only, a
//! minimal `/dev`, read-only `/sys`, envd's run directory (a small read-only tmpfs of the
//! sandbox's own: no host directory is shared) and binary, the sandbox's own boot id, then
//! `pivot_root`, and after it `/etc/hostname` and `/etc/hosts`. Nothing here touches the host's
//! mount table: every function must run after `unshare(CLONE_NEWNS)` and [`make_private`].
//! Mount options name no host path (the overlay's layers are given as `/proc/self/fd/N`), so
//! `/proc/self/mountinfo` in the sandbox does not reveal the host's data or template directories.
//!
//! Before `pivot_root` paths resolve on the host, so a symlink in the template (`etc ->
//! /proc/1/root/etc`) would redirect mounts and writes out of the sandbox: [`build_root`]
//! refuses a template in which any existing component of a path it mounts on is a symlink.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use paddock_envd_proto::boot;

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

/// `/proc` files hidden behind `/dev/null` (kernel memory, keyrings, timers, the kernel log,
/// SysRq), as runc masks them. Missing ones (kernel config) are skipped.
pub(crate) const MASKED_PROC_FILES: [&str; 8] = [
    "cmdline",
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "kmsg",
    "sysrq-trigger",
    "latency_stats",
];
/// Directories hidden behind an empty read-only tmpfs, relative to the new root.
pub(crate) const MASKED_DIRS: [&str; 3] = ["proc/acpi", "proc/scsi", "sys/firmware"];
/// `/proc` directories made read-only (kernel tunables, buses, file systems, IRQ affinity).
pub(crate) const READ_ONLY_PROC_DIRS: [&str; 4] = ["sys", "bus", "fs", "irq"];

/// Where things go in the new root.
#[derive(Debug)]
pub(crate) struct RootLayout<'a> {
    /// Template root-filesystem layers, top first (the overlay's lower layers).
    pub layers: &'a [PathBuf],
    /// The sandbox's state directory (`disk/` holding `upper` and `work`, `root`).
    pub state_dir: &'a Path,
    /// envd on the host.
    pub envd_bin: &'a Path,
    /// The code interpreter on the host, if any.
    pub interpreter_bin: Option<&'a Path>,
    /// The sandbox's memory cgroup on the host, shown read-only at `/run/paddock/memcg`.
    pub memory_cgroup: Option<&'a Path>,
    /// Host uid (= gid) of the sandbox's root when it runs in a user namespace: the writable
    /// layer's root, `/dev` and `/dev/shm` are given to it.
    pub root_id: Option<u32>,
    /// Whether `/proc` and `/sys` get their masks and read-only parts (off only for
    /// benchmarks).
    pub hardened: bool,
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
    // Every path setup mounts on or creates while host path resolution still applies, and
    // `/etc` (written after pivot_root, refused too for a clear error instead of a loop).
    let run_rel = boot::RUN_DIR.trim_start_matches('/');
    let envd_rel = crate::SANDBOX_ENVD_PATH.trim_start_matches('/');
    let interpreter_rel = crate::SANDBOX_INTERPRETER_PATH.trim_start_matches('/');
    let interpreter = layout.interpreter_bin.map(|_| interpreter_rel);
    for rel in ["proc", "dev", "sys", "etc", run_rel, envd_rel]
        .into_iter()
        .chain(interpreter)
    {
        refuse_symlinks(&root, rel)?;
    }
    mount_fs(
        &root.join("proc"),
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_dev(&root.join("dev"), layout.root_id)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(&root.join("sys"), "sysfs", ro, None)?;
    if layout.hardened {
        mask_kernel_files(&root)?;
    }
    mount_run_dir(&root.join(run_rel), layout.memory_cgroup)?;
    let boot_id = root.join("proc/sys/kernel/random/boot_id");
    if boot_id.is_file() {
        bind(&root.join(run_rel).join(BOOT_ID_FILE), &boot_id, ro)?;
    }
    let bins = [(layout.envd_bin, envd_rel)]
        .into_iter()
        .chain(layout.interpreter_bin.map(|b| (b, interpreter_rel)));
    for (host, rel) in bins {
        let target = root.join(rel);
        if let Some(dir) = target.parent() {
            mkdir(dir)?;
        }
        touch(&target)?;
        bind(
            host,
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    Ok(())
}

/// Fails when an existing component of `root/rel` is a symlink. Components that do not exist
/// yet are created by setup itself (never as symlinks), so checking stops at the first one.
pub(crate) fn refuse_symlinks(root: &Path, rel: &str) -> Result<()> {
    let mut path = root.to_path_buf();
    let mut shown = String::new();
    for part in rel.split('/') {
        path.push(part);
        shown.push('/');
        shown.push_str(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SetupError::new(format!("inspecting {}", path.display()), e)),
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(SetupError::new(
                "checking the template",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{shown} is a symlink (to {target}) in the template; sandbox setup \
                         refuses to follow it, make it a real directory or file"
                    ),
                ),
            ));
        }
    }
    Ok(())
}

/// Hides the sensitive parts of the freshly mounted `/proc` and `/sys` under `root`: files
/// behind `/dev/null`, directories behind an empty read-only tmpfs, and the `/proc` tunables
/// read-only (bind-mounted onto themselves, then remounted read-only).
fn mask_kernel_files(root: &Path) -> Result<()> {
    let proc_dir = root.join("proc");
    let null = Path::new("/dev/null");
    for name in MASKED_PROC_FILES {
        let path = proc_dir.join(name);
        if path.exists() {
            bind(null, &path, MsFlags::empty())?;
        }
    }
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in MASKED_DIRS {
        let path = root.join(rel);
        if path.is_dir() {
            mount(Some("tmpfs"), &path, Some("tmpfs"), ro, Some("mode=555"))
                .map_err(|e| SetupError::new(format!("masking {}", path.display()), e))?;
        }
    }
    for name in READ_ONLY_PROC_DIRS {
        let path = proc_dir.join(name);
        if path.is_dir() {
            bind(&path, &path, ro)?;
        }
    }
    Ok(())
}

fn mount_overlay(layout: &RootLayout<'_>, root: &Path) -> Result<()> {
    // On the sandbox's own disk, mounted by the node (see `disk`).
    let upper = super::disk::upper_dir(layout.state_dir);
    let work = super::disk::work_dir(layout.state_dir);
    let lower: Vec<&Path> = layout.layers.iter().map(PathBuf::as_path).collect();
    for p in lower
        .iter()
        .copied()
        .chain([upper.as_path(), work.as_path()])
    {
        if !overlay_safe(p) {
            let err = io::Error::new(io::ErrorKind::InvalidInput, "path has ',', ':' or '\\'");
            return Err(SetupError::new(
                format!("overlay path {}", p.display()),
                err,
            ));
        }
    }
    if let Some(id) = layout.root_id {
        // The overlay's root directory is the upper one: sandbox root must own it to create
        // files in `/`.
        chown(&upper, id)?;
    }
    // Every directory is named by a descriptor (`/proc/self/fd/N`), so the options the
    // sandbox reads back in its mountinfo name no host path. The descriptors close on return.
    let open_dir = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .map_err(|e| SetupError::new(format!("opening {}", p.display()), e))
    };
    let fd_path = |f: &std::fs::File| format!("/proc/self/fd/{}", f.as_raw_fd());
    let lower_dirs = lower
        .iter()
        .map(|p| open_dir(p))
        .collect::<Result<Vec<_>>>()?;
    let upper_dir = open_dir(&upper)?;
    let work_dir = open_dir(&work)?;
    let lowerdir = lower_dirs.iter().map(fd_path).collect::<Vec<_>>().join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        fd_path(&upper_dir),
        fd_path(&work_dir)
    );
    // No device node of a layer works (`/dev` is a tmpfs of its own with bound host nodes).
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| SetupError::new("mounting overlay root", e))
}

fn mount_dev(dev: &Path, root_id: Option<u32>) -> Result<()> {
    // Owners are host ids: mount options are read in the mounting (host) user namespace.
    let owner = root_id
        .map(|id| format!(",uid={id},gid={id}"))
        .unwrap_or_default();
    let tty_gid = root_id.unwrap_or(0) + 5;
    mount_fs(
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&format!("mode=755,size=65536k{owner}")),
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
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}"
        )),
    )?;
    mount_fs(
        &dev.join("shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size=65536k{owner}")),
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

/// Name of the boot id file in the run directory, bind-mounted over
/// `/proc/sys/kernel/random/boot_id`.
pub(crate) const BOOT_ID_FILE: &str = "boot_id";
/// Options of the run directory's tmpfs: root of the host owns it (so sandbox root, whose
/// capabilities do not cover unmapped owners, cannot write it even before it is read-only),
/// and it is tiny.
const RUN_DIR_OPTIONS: &str = "mode=755,size=64k,nr_inodes=16";

/// envd's run directory, a tmpfs of the sandbox's own (its writes can neither reach the host
/// nor its disk's quota): the memory cgroup read-only at `memcg` (OOM attribution), a fresh
/// random boot id, then the whole of it read-only.
fn mount_run_dir(run: &Path, memory_cgroup: Option<&Path>) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(run, "tmpfs", flags, Some(RUN_DIR_OPTIONS))?;
    let boot_id = run.join(BOOT_ID_FILE);
    std::fs::write(&boot_id, format!("{}\n", random_uuid()?))
        .map_err(|e| SetupError::new(format!("writing {}", boot_id.display()), e))?;
    if let Some(memcg) = memory_cgroup {
        let target = run.join("memcg");
        mkdir(&target)?;
        bind(memcg, &target, flags | MsFlags::MS_RDONLY)?;
    }
    mount(
        None::<&str>,
        run,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(|e| SetupError::new(format!("making {} read-only", run.display()), e))
}

/// A random version-4 UUID in its text form (the format of `boot_id`).
fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(SetupError::new(
            "generating the boot id",
            io::Error::last_os_error(),
        ));
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// `lchown(path, id, id)` (never follows a symlink).
fn chown(path: &Path, id: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(id), Some(id))
        .map_err(|e| SetupError::new(format!("giving {} to sandbox root", path.display()), e))
}

/// Writes `/etc/hostname` and `/etc/hosts`, owned by sandbox root (host uid `owner`, when in a
/// user namespace) so the sandbox can edit them. Runs after [`pivot`], so whatever the
/// template's `/etc` holds, paths resolve inside the sandbox.
pub(crate) fn write_etc(root: &Path, hostname: &str, owner: Option<u32>) -> Result<()> {
    let etc = root.join("etc");
    mkdir(&etc)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for (name, text) in [("hostname", format!("{hostname}\n")), ("hosts", hosts)] {
        let path = etc.join(name);
        write_regular(&path, text.as_bytes())?;
        if let Some(id) = owner {
            chown(&path, id)?;
        }
    }
    Ok(())
}

/// Writes `/etc/resolv.conf` under `root` with one `nameserver` line per address (after
/// `pivot_root`, like [`write_etc`]; a symlink there is replaced, not followed).
pub(crate) fn write_resolv_conf(
    root: &Path,
    dns: &[std::net::IpAddr],
    owner: Option<u32>,
) -> Result<()> {
    let path = root.join("etc").join("resolv.conf");
    let text: String = dns.iter().map(|ip| format!("nameserver {ip}\n")).collect();
    write_regular(&path, text.as_bytes())?;
    match owner {
        Some(id) => chown(&path, id),
        None => Ok(()),
    }
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

/// Makes `path` an existing regular file (a mount point for a file), replacing whatever else
/// the template or a snapshot left there (a FIFO would block the open, a symlink redirect it).
fn touch(path: &Path) -> Result<()> {
    open_regular(path, false).map(drop)
}

/// Writes `text` to `path` as a fresh regular file: a symlink, FIFO, socket or device the
/// template (or a snapshot of a sandbox) left there is removed first, never followed or opened,
/// so neither a redirect nor a blocking open can stall the sandbox's start.
fn write_regular(path: &Path, text: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = open_regular(path, true)?;
    file.write_all(text)
        .map_err(|e| SetupError::new(format!("writing {}", path.display()), e))
}

fn open_regular(path: &Path, truncate: bool) -> Result<std::fs::File> {
    let err = |what: &str, e: io::Error| SetupError::new(format!("{what} {}", path.display()), e);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {}
        Ok(meta) if meta.file_type().is_dir() => {
            return Err(err(
                "replacing",
                io::Error::new(io::ErrorKind::InvalidInput, "it is a directory"),
            ))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| err("removing", e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting", e)),
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| err("creating", e))?;
    let is_file = file
        .metadata()
        .map_err(|e| err("inspecting", e))?
        .file_type()
        .is_file();
    if !is_file {
        return Err(err(
            "creating",
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    Ok(file)
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
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
    fn symlinked_setup_paths_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("usr/local")).expect("mkdir");
        std::os::unix::fs::symlink("/proc/1/root/etc", root.join("etc")).expect("symlink");
        std::os::unix::fs::symlink("/tmp", root.join("usr/local/bin")).expect("symlink");
        // Missing paths and real directories are fine.
        refuse_symlinks(root, "run/paddock").expect("missing");
        refuse_symlinks(root, "usr").expect("real dir");
        let err = refuse_symlinks(root, "etc").expect_err("etc is a symlink");
        let msg = crate::namespace::chain(&err);
        assert!(
            msg.contains("/etc is a symlink (to /proc/1/root/etc)"),
            "{msg}"
        );
        let err = refuse_symlinks(root, "usr/local/bin/envd").expect_err("parent is a symlink");
        assert!(
            crate::namespace::chain(&err).contains("/usr/local/bin is a symlink"),
            "{}",
            crate::namespace::chain(&err)
        );
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
