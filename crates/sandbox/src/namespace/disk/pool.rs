//! The pool of ready disks of the default size: a background thread keeps `target` disks
//! built and mounted at `<disks>/pool/<n>` (image `<disks>/pool-images/<n>.img`); a create
//! takes one with `MS_MOVE` onto the sandbox's `disk/` and renames the image into its state
//! directory. One builder thread, so filling never takes more than one core.
//!
//! `MS_MOVE` refuses to move a mount whose parent mount is shared (systemd makes `/` shared),
//! so `<disks>/pool` is bind-mounted onto itself as a private mount while the pool is open.
//! The images stay outside that bind mount: `rename(2)` does not cross mounts. Leftovers of a
//! node that died (ready disks, the bind mount) are removed by [`Pool::open`].

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use nix::mount::{mount, MsFlags};

use super::{build, mkdir, mounts_under, unmount_all, DiskError, Disks};

/// The pool of one driver.
#[derive(Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
    builder: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    /// Mount points of ready disks (a private mount).
    dir: PathBuf,
    /// Their images.
    images: PathBuf,
    size_mb: u64,
    target: usize,
    state: Mutex<State>,
    wake: Condvar,
    counter: AtomicU64,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Numbers of the ready disks.
    ready: VecDeque<u64>,
    /// Whether the builder should look at the pool again.
    wanted: bool,
}

impl Pool {
    /// Cleans up the pool in `disks` (the disks' directory) after an earlier run and makes
    /// its mount directory a private mount.
    pub(crate) fn open(disks: &Path, size_mb: u64, target: usize) -> Result<Self, DiskError> {
        let (dir, images) = dirs(disks);
        remove_leftovers(disks);
        mkdir(&dir)?;
        mkdir(&images)?;
        if !is_listed_mount(&dir) {
            mount(
                Some(dir.as_path()),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| DiskError::Io {
                context: format!("bind-mounting {} onto itself", dir.display()),
                source: e.into(),
            })?;
        }
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| DiskError::Io {
            context: format!("making {} a private mount", dir.display()),
            source: e.into(),
        })?;
        Ok(Pool {
            shared: Arc::new(Shared {
                dir,
                images,
                size_mb,
                target,
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                counter: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
            builder: Mutex::new(None),
        })
    }

    /// Size of the pooled disks.
    pub(crate) fn size_mb(&self) -> u64 {
        self.shared.size_mb
    }

    /// Disks ready right now.
    pub(crate) fn ready(&self) -> usize {
        self.shared.state().ready.len()
    }

    /// Moves a ready disk onto `target` and its image to `image`. `Ok(false)` when the pool
    /// is empty.
    pub(crate) fn take(&self, target: &Path, image: &Path) -> Result<bool, DiskError> {
        let Some(n) = self.shared.state().ready.pop_front() else {
            return Ok(false);
        };
        let (mnt, pooled) = self.shared.slot(n);
        let moved = mount(
            Some(mnt.as_path()),
            target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        );
        if let Err(e) = moved {
            self.shared.discard(n);
            return Err(DiskError::Io {
                context: format!("moving {} to {}", mnt.display(), target.display()),
                source: e.into(),
            });
        }
        if let Err(e) = std::fs::rename(&pooled, image) {
            // Another file system (the pool and the state directories should share one):
            // the loop device keeps the unlinked image alive, it only is not visible.
            tracing::warn!(from = %pooled.display(), to = %image.display(), error = %e, "cannot move a pooled disk image; unlinking it");
            let _ = std::fs::remove_file(&pooled);
        }
        let _ = std::fs::remove_dir(&mnt);
        Ok(true)
    }

    /// Wakes the builder (started on first use) to fill the pool up again.
    pub(crate) fn refill(&self, disks: &Arc<Disks>) {
        if self.shared.closed.load(Ordering::SeqCst) {
            return;
        }
        self.shared.state().wanted = true;
        self.shared.wake.notify_one();
        let mut builder = self.builder.lock().unwrap_or_else(|p| p.into_inner());
        if builder.is_none() {
            let shared = Arc::clone(&self.shared);
            let weak = Arc::downgrade(disks);
            let spawned = std::thread::Builder::new()
                .name("paddock-disk-pool".into())
                .spawn(move || shared.run(&weak));
            match spawned {
                Ok(h) => *builder = Some(h),
                Err(e) => tracing::warn!(error = %e, "cannot start the disk pool's builder"),
            }
        }
    }

    /// Stops the builder, removes every ready disk and the pool's bind mount.
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || pool.close()).await {
            tracing::warn!(error = %e, "removing the disk pool");
        }
    }

    /// [`Pool::shutdown`], blocking. Idempotent.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        let handle = self
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            // The builder itself may drop the last `Disks` (and so the pool): no self-join.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.shared.state().ready.clear();
        if let Some(disks) = self.shared.dir.parent() {
            remove_leftovers(disks);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The builder thread: builds disks while the pool is short, sleeps otherwise.
    fn run(&self, disks: &Weak<Disks>) {
        loop {
            {
                let mut st = self.state();
                let needed = |st: &State| st.wanted && st.ready.len() < self.target;
                while !self.closed.load(Ordering::SeqCst) && !needed(&st) {
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
            }
            let Some(disks) = disks.upgrade() else {
                return;
            };
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            let built = disks
                .master(self.size_mb)
                .and_then(|m| self.build_slot(&m, n));
            drop(disks);
            match built {
                Ok(()) if !self.closed.load(Ordering::SeqCst) => {
                    self.state().ready.push_back(n);
                }
                Ok(()) => self.discard(n),
                Err(e) => {
                    self.discard(n);
                    tracing::warn!(error = %e, "building a pooled disk");
                    // Try again on the next create, not in a tight loop.
                    self.state().wanted = false;
                }
            }
        }
    }

    /// Mount point and image of disk `n`.
    fn slot(&self, n: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(n.to_string()),
            self.images.join(format!("{n}.img")),
        )
    }

    fn build_slot(&self, master: &super::Master, n: u64) -> Result<(), DiskError> {
        let (mnt, image) = self.slot(n);
        mkdir(&mnt)?;
        build(master, &image, &mnt)
    }

    /// Unmounts and deletes disk `n`.
    fn discard(&self, n: u64) {
        let (mnt, image) = self.slot(n);
        let _ = unmount_all(&mnt);
        let _ = std::fs::remove_dir(&mnt);
        let _ = std::fs::remove_file(&image);
    }
}

/// The pool's mount directory and image directory in the disks' directory.
fn dirs(disks: &Path) -> (PathBuf, PathBuf) {
    (disks.join("pool"), disks.join("pool-images"))
}

/// Removes what a pool in the disks' directory `disks` left (a node that died, or ran with a
/// pool and now runs without one).
pub(crate) fn remove_leftovers(disks: &Path) {
    let (dir, images) = dirs(disks);
    if dir.exists() {
        clear(&dir);
        if let Err(e) = unmount_all_listed(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "unmounting a disk pool");
        }
        let _ = std::fs::remove_dir(&dir);
    }
    if images.exists() {
        clear(&images);
        let _ = std::fs::remove_dir(&images);
    }
}

/// Unmounts every disk under `dir` and deletes its contents (the directory stays).
fn clear(dir: &Path) {
    for point in mounts_under(dir) {
        if let Err(e) = unmount_all_listed(&point) {
            tracing::warn!(path = %point.display(), error = %e, "unmounting a pooled disk");
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() {
            // Empty mount points (never recurse into a disk still mounted).
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "removing a pooled disk");
        }
    }
}

/// Whether `/proc/self/mountinfo` lists a mount at exactly `path`.
fn is_listed_mount(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|p| Path::new(&super::super::cgroup::unescape(p)) == path)
}

/// Lazily unmounts every mount listed at `path` (also bind mounts, which
/// [`unmount_all`] cannot tell from their parent).
fn unmount_all_listed(path: &Path) -> io::Result<()> {
    for _ in 0..8 {
        if !is_listed_mount(path) {
            return Ok(());
        }
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)?;
    }
    Ok(())
}
