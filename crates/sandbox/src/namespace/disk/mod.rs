//! Per-sandbox disks: the quota on a sandbox's writable layer. Each sandbox gets its own ext4
//! file system of `Resources::disk_mb` MiB in a sparse image file (`<state_dir>/disk.img`) on
//! a loop device, mounted on the host at `<state_dir>/disk`; the overlay's `upper/` and
//! `work/` live inside it. A sandbox that fills its disk gets `ENOSPC` from its own file
//! system, never the host's. (ext4 project quotas cannot do this: overlayfs writes with the
//! mounter's credentials, host root with `CAP_SYS_RESOURCE`, which ignores quota limits.)
//!
//! Cost on the create path: `mkfs.ext4` runs once per size to make a master image
//! ([`Disks::new`] makes the default size's); a sandbox's image is a sparse copy of the
//! master's few data extents (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`, about 250 KiB),
//! then `LOOP_CONFIGURE` and an ext4 mount, all in-process. Disks of the default size are
//! taken ready from a small pool (see `pool`) and moved into place with `MS_MOVE`.
//!
//! Sparse images only take host space for what sandboxes write; the mount uses `discard`, so
//! what a sandbox deletes is returned to the host too. The loop device is bound with
//! auto-clear: it detaches itself once the file system is unmounted for good (after the
//! sandbox's mount namespace is gone), and the image is deleted with the state directory.

mod loopdev;
mod pool;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::mounts::is_mount_point;

pub use loopdev::LOOP_CONTROL;

/// The disk's mount point inside a sandbox's state directory.
pub(crate) const DISK_DIR: &str = "disk";
/// The disk's image file inside a sandbox's state directory.
pub(crate) const IMAGE_FILE: &str = "disk.img";
/// Smallest disk: room for the journal and a little data.
pub const MIN_DISK_MB: u64 = 64;
/// Largest disk (16 TiB, the limit of 4 KiB-block ext4 without extra features).
pub const MAX_DISK_MB: u64 = 16 * 1024 * 1024 - 1;
/// File system block size, also the loop device's logical block size.
const BLOCK_SIZE: u32 = 4096;
/// Options of the ext4 mount: never zero the inode tables in the background (they are holes
/// in the image, which read as zeros anyway), and punch freed blocks out of the image.
const MOUNT_OPTIONS: &str = "noinit_itable,discard";

/// The overlay's upper directory of the sandbox whose state directory is `state_dir`.
pub(crate) fn upper_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DISK_DIR).join("upper")
}

/// The overlay's work directory of the sandbox whose state directory is `state_dir`.
pub(crate) fn work_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DISK_DIR).join("work")
}

/// Disk failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The host has no loop devices.
    #[error(
        "loop devices are not available ({LOOP_CONTROL} is missing): load the loop module \
         (modprobe loop) or, in a container, give the node /dev/loop-control and /dev/loop*"
    )]
    NoLoopDevices,
    /// The requested size is out of range.
    #[error("invalid disk size {0} MiB (from {MIN_DISK_MB} to {MAX_DISK_MB} MiB)")]
    Size(u64),
    /// `mkfs.ext4` failed or is missing.
    #[error("making the {size_mb} MiB master image with mkfs.ext4: {message}")]
    Mkfs {
        /// Size of the image.
        size_mb: u64,
        /// What went wrong (mkfs's stderr).
        message: String,
    },
    /// An I/O or system call error with context.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl DiskError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Io { context, source }
    }
}

/// The per-sandbox disks of one driver: master images and the pool of ready disks live in
/// its directory (`<dir>/ext4-<size>M.img`, `<dir>/pool/`).
#[derive(Debug)]
pub struct Disks {
    dir: PathBuf,
    masters: Mutex<HashMap<u64, Arc<Master>>>,
    /// Serialises making master images.
    mkfs: Mutex<()>,
    pool: Option<Arc<pool::Pool>>,
}

/// A master image: an empty ext4 file system and where its data is.
#[derive(Debug)]
pub(crate) struct Master {
    path: PathBuf,
    len: u64,
    /// `(offset, length)` of each data extent; the rest of the file is holes.
    extents: Vec<(u64, u64)>,
}

impl Disks {
    /// Checks for loop device support, makes `dir` and the master image of `default_mb`,
    /// and, when `pool_size > 0`, starts keeping that many ready disks of `default_mb`
    /// (needs a tokio runtime). Disks left by an earlier run in the pool are removed.
    pub fn new(dir: PathBuf, default_mb: u64, pool_size: usize) -> Result<Arc<Self>, DiskError> {
        check_host()?;
        std::fs::create_dir_all(&dir)
            .map_err(DiskError::io(format!("creating {}", dir.display())))?;
        let pool = if pool_size > 0 {
            Some(Arc::new(pool::Pool::open(&dir, default_mb, pool_size)?))
        } else {
            pool::remove_leftovers(&dir);
            None
        };
        let disks = Arc::new(Disks {
            dir,
            masters: Mutex::new(HashMap::new()),
            mkfs: Mutex::new(()),
            pool,
        });
        disks.master(default_mb)?;
        if let Some(pool) = &disks.pool {
            pool.refill(&disks);
        }
        Ok(disks)
    }

    /// Gives the sandbox whose state directory is `state_dir` a disk of `size_mb` MiB,
    /// mounted at `<state_dir>/disk` with empty `upper/` and `work/` directories. On error
    /// nothing is left mounted (the image file may remain; it goes with the state directory).
    pub fn create(self: &Arc<Self>, state_dir: &Path, size_mb: u64) -> Result<(), DiskError> {
        let target = state_dir.join(DISK_DIR);
        let image = state_dir.join(IMAGE_FILE);
        mkdir(&target)?;
        if let Some(pool) = self.pool.as_ref().filter(|p| p.size_mb() == size_mb) {
            let taken = pool.take(&target, &image);
            pool.refill(self);
            match taken {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "using a pooled disk; making one instead"),
            }
        }
        let master = self.master(size_mb)?;
        build(&master, &image, &target)
    }

    /// Mounts the disk image already in `state_dir` (left there by a stopped run of the same
    /// sandbox) at `<state_dir>/disk` again, keeping its contents. Fails if the image is still
    /// attached to a loop device (its previous file system is not released yet): two live
    /// mounts of one ext4 image would corrupt it.
    pub fn reattach(&self, state_dir: &Path) -> Result<(), DiskError> {
        let target = state_dir.join(DISK_DIR);
        let image = state_dir.join(IMAGE_FILE);
        if !loop_devices_under(&image).is_empty() {
            return Err(DiskError::Io {
                context: format!("reusing {}", image.display()),
                source: io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the image is still attached to a loop device",
                ),
            });
        }
        mkdir(&target)?;
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&image)
            .map_err(DiskError::io(format!("opening {}", image.display())))?;
        attach_and_mount(&file, &image, &target)
    }

    /// Unmounts what [`Disks::create`] mounted for `state_dir` (nothing when nothing is).
    /// The file system stays alive until the sandbox's mount namespace is gone; then the loop
    /// device detaches itself. Returns whether something was unmounted.
    pub fn remove(state_dir: &Path) -> Result<bool, DiskError> {
        unmount_all(&state_dir.join(DISK_DIR))
    }

    /// Unmounts the disks of state directories under `state_root` whose name is not in
    /// `keep` (left by a node that died). Returns how many were unmounted.
    pub fn reap(state_root: &Path, keep: &[&str]) -> usize {
        let mut n = 0;
        for point in mounts_under(state_root) {
            let Ok(rel) = point.strip_prefix(state_root) else {
                continue;
            };
            let mut parts = rel.components();
            let (Some(name), Some(disk), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let name = name.as_os_str().to_string_lossy();
            if disk.as_os_str() != DISK_DIR || keep.contains(&name.as_ref()) {
                continue;
            }
            match unmount_all(&point) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %point.display(), error = %e, "unmounting an orphaned disk")
                }
            }
        }
        n
    }

    /// Removes the pool's disks (call at shutdown; disks of running sandboxes stay).
    pub async fn release(&self) {
        if let Some(pool) = &self.pool {
            pool.shutdown().await;
        }
    }

    /// Disks ready in the pool right now.
    pub fn ready(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.ready())
    }

    /// The master image of `size_mb` MiB, made with `mkfs.ext4` the first time.
    pub(crate) fn master(&self, size_mb: u64) -> Result<Arc<Master>, DiskError> {
        if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&size_mb) {
            return Err(DiskError::Size(size_mb));
        }
        if let Some(m) = self.masters().get(&size_mb) {
            return Ok(Arc::clone(m));
        }
        let _guard = self.mkfs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.masters().get(&size_mb) {
            return Ok(Arc::clone(m));
        }
        let path = self.dir.join(format!("ext4-{size_mb}M.img"));
        if !path.exists() {
            mkfs(&path, size_mb)?;
        }
        let master = Arc::new(Master::open(path)?);
        self.masters().insert(size_mb, Arc::clone(&master));
        Ok(master)
    }

    fn masters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Master>>> {
        self.masters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loop devices (`loopN`) whose image lies under `dir` (also deleted images, which the
/// kernel lists as `<path> (deleted)`).
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    loopdev::bound()
        .into_iter()
        .filter(|(_, f)| f.starts_with(dir))
        .map(|(n, _)| n)
        .collect()
}

/// Fails with [`DiskError::NoLoopDevices`] when the host cannot attach loop devices, and
/// with a clear message when the kernel has no ext4.
pub fn check_host() -> Result<(), DiskError> {
    if !loopdev::available() {
        return Err(DiskError::NoLoopDevices);
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems")
        .map_err(DiskError::io("reading /proc/filesystems"))?;
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("ext4"))
    {
        return Err(DiskError::Io {
            context: "the kernel has no ext4 (modprobe ext4)".into(),
            source: io::Error::from(io::ErrorKind::Unsupported),
        });
    }
    Ok(())
}

/// Runs `mkfs.ext4` on a sparse file of `size_mb` MiB and renames it to `path` when done.
fn mkfs(path: &Path, size_mb: u64) -> Result<(), DiskError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let file = File::create(&tmp).map_err(DiskError::io(format!("creating {}", tmp.display())))?;
    file.set_len(size_mb * 1024 * 1024)
        .map_err(DiskError::io(format!("sizing {}", tmp.display())))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        // Quiet, no confirmation, no blocks reserved for root (the overlay writes as root),
        // no reserved GDT blocks for online growth (4 MiB of data per image), and nothing
        // zeroed: holes in a sparse file read as zeros.
        .args(["-q", "-F", "-m", "0", "-b", "4096", "-O", "^resize_inode"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .args(["-L", "paddock"])
        .arg(&tmp)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output();
    let fail = |message: String| {
        let _ = std::fs::remove_file(&tmp);
        DiskError::Mkfs { size_mb, message }
    };
    let out = out.map_err(|e| fail(format!("running mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(format!("{}: {stderr}", out.status)));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DiskError::Io {
            context: format!("renaming {} to {}", tmp.display(), path.display()),
            source: e,
        }
    })
}

impl Master {
    /// Opens a master image and finds its data extents.
    fn open(path: PathBuf) -> Result<Self, DiskError> {
        let file =
            File::open(&path).map_err(DiskError::io(format!("opening {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(DiskError::io(format!("inspecting {}", path.display())))?
            .len();
        let extents = data_extents(&file, len).map_err(DiskError::io(format!(
            "finding the data of {}",
            path.display()
        )))?;
        Ok(Master { path, len, extents })
    }
}

/// `(offset, length)` of the data extents of `file` (of length `len`).
fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut off: i64 = 0;
    let end = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    while off < end {
        let start = match lseek(fd, off, Whence::SeekData) {
            Ok(s) => s,
            // No data after `off`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(fd, start, Whence::SeekHole)?;
        extents.push((start as u64, (hole - start) as u64));
        off = hole;
    }
    Ok(extents)
}

/// Makes a disk from `master`: the image at `image`, mounted at `target` (an existing empty
/// directory) with `upper/` and `work/` in it.
pub(crate) fn build(master: &Master, image: &Path, target: &Path) -> Result<(), DiskError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(DiskError::io(format!("creating {}", image.display())))?;
    copy_extents(master, &file).map_err(DiskError::io(format!(
        "copying {} to {}",
        master.path.display(),
        image.display()
    )))?;
    attach_and_mount(&file, image, target)
}

/// Attaches `file` (the image at `image`) to a free loop device, mounts it at `target` and
/// makes sure `upper/` and `work/` exist in it; nothing stays mounted on error.
fn attach_and_mount(file: &File, image: &Path, target: &Path) -> Result<(), DiskError> {
    let dev = loopdev::attach(file, BLOCK_SIZE).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound if !loopdev::available() => DiskError::NoLoopDevices,
        _ => DiskError::io(format!("attaching {} to a loop device", image.display()))(e),
    })?;
    mount(
        Some(dev.path.as_path()),
        target,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(MOUNT_OPTIONS),
    )
    .map_err(|e| DiskError::Io {
        context: format!("mounting {} on {}", dev.path.display(), target.display()),
        source: e.into(),
    })?;
    // From here the mount holds the device; dropping `dev` leaves it to auto-clear.
    drop(dev);
    for sub in ["upper", "work"] {
        if let Err(e) = mkdir(&target.join(sub)) {
            let _ = unmount_all(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Writes the data extents of `master` into the empty file `dst` and sizes it like the
/// master (the rest stays holes).
fn copy_extents(master: &Master, dst: &File) -> io::Result<()> {
    let src = File::open(&master.path)?;
    dst.set_len(master.len)?;
    for &(start, len) in &master.extents {
        let mut off_in = start as i64;
        let mut off_out = start as i64;
        let mut left = len;
        while left > 0 {
            let chunk = usize::try_from(left).unwrap_or(usize::MAX);
            let n = loopdev::copy_file_range(&src, &mut off_in, dst, &mut off_out, chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "master image shorter than its extents",
                ));
            }
            left -= n as u64;
        }
    }
    Ok(())
}

/// Lazily unmounts everything stacked on `path`. Returns whether something was mounted.
fn unmount_all(path: &Path) -> Result<bool, DiskError> {
    let mut any = false;
    // A mount point stays one as long as something is stacked on it; a few at most.
    for _ in 0..8 {
        if !is_mount_point(path) {
            return Ok(any);
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => any = true,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(any),
            Err(e) => {
                return Err(DiskError::Io {
                    context: format!("unmounting {}", path.display()),
                    source: e.into(),
                })
            }
        }
    }
    Ok(any)
}

/// Mount points strictly below `root`, from `/proc/self/mountinfo`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(super::cgroup::unescape(p)))
        .filter(|p| p != root && p.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn mkdir(path: &Path) -> Result<(), DiskError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(DiskError::io(format!("creating {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests;
