//! A faithful copy of a directory tree, in-process: what template layers are made of.
//!
//! [`copy_tree`] copies regular files (sparse-aware: only the data ranges `SEEK_DATA` /
//! `SEEK_HOLE` report are copied, with `copy_file_range` and a read/write fallback),
//! directories, symbolic links, character and block devices (overlayfs whiteouts are character
//! devices 0/0) and fifos; sockets are skipped. Every copy keeps its numeric owner, its mode
//! including set-user-ID, set-group-ID and sticky bits (set after the owner, which clears
//! them), its access and modification times and all its extended attributes (`trusted.*`,
//! `security.capability`, `user.*`, ACLs). Hard links stay hard links. Symbolic links are
//! never followed and the walk never enters another file system (a mount point is copied as an
//! empty directory). The walk is iterative, so deep trees cannot overflow the stack.
//!
//! The source is walked through open directory descriptors (entries are reached as
//! `/proc/self/fd/<dir>/<name>`), never by re-resolving their full path: whoever can write to
//! the source while it is copied (a sandbox, into its upper directory) cannot swap a
//! directory for a symbolic link and make the copy read host files.
//!
//! With [`CopyOptions::for_lower_layer`] the copy of an overlayfs *upper* directory becomes a
//! valid *lower* layer: the xattrs that tie upper entries to the lower layers of the overlay
//! they were written through (`trusted.overlay.origin`, `.impure`, `.nlink`, `.uuid`) are
//! dropped, while `trusted.overlay.opaque` and `trusted.overlay.redirect`, which a lower layer
//! needs to hide and rename what lies below it, are kept.
//!
//! The source may change while it is copied (a running sandbox's upper directory): entries
//! that disappear half-way are counted as [`CopyStats::vanished`] and left out, and a file is
//! copied up to the size it had when it was opened.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use paddock_sandbox::xattr::{get_xattr, list_xattrs, set_xattr};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::libc;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::Whence;

/// Overlayfs xattrs that only make sense on an upper layer (they point at, or count entries
/// of, the lower layers of the overlay the upper was mounted with).
pub const UPPER_ONLY_XATTRS: &[&str] = &[
    "trusted.overlay.origin",
    "trusted.overlay.impure",
    "trusted.overlay.nlink",
    "trusted.overlay.uuid",
];

/// Size of the buffer of the read/write fallback.
const COPY_BUFFER: usize = 256 * 1024;
/// Largest chunk handed to one `copy_file_range` call.
const MAX_CHUNK: u64 = 1 << 30;

/// How [`copy_tree`] copies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// The source is an overlayfs upper directory and the copy will be a lower layer: drop
    /// [`UPPER_ONLY_XATTRS`], keep everything else.
    pub for_lower_layer: bool,
}

/// What [`copy_tree`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files copied (hard links to an already copied file not included).
    pub files: u64,
    /// Directories created, the root included.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Device nodes (whiteouts included) and fifos created.
    pub specials: u64,
    /// Additional names of an already copied inode, created as hard links.
    pub hard_links: u64,
    /// Bytes of file data copied (holes not included).
    pub bytes: u64,
    /// Extended attributes copied.
    pub xattrs: u64,
    /// Extended attributes left out because of [`CopyOptions::for_lower_layer`].
    pub xattrs_dropped: u64,
    /// Sockets, which cannot be copied.
    pub skipped: u64,
    /// Entries on another file system: mount points, created as empty directories (or left
    /// out when they are not directories).
    pub other_fs: u64,
    /// Entries that disappeared from the source while it was copied.
    pub vanished: u64,
}

/// Copies the directory `src` to `dst`, which must not exist yet (its parent must). See the
/// module documentation for what is kept. On error the partial copy is left for the caller to
/// remove.
pub fn copy_tree(src: &Path, dst: &Path, opts: CopyOptions) -> io::Result<CopyStats> {
    let root = std::fs::symlink_metadata(src).map_err(|e| annotate(e, "inspecting", src))?;
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", src.display()),
        ));
    }
    let mut copier = Copier {
        opts,
        dev: root.dev(),
        stats: CopyStats::default(),
        links: HashMap::new(),
        dirs: Vec::new(),
        copy_file_range: true,
        buf: Vec::new(),
    };
    let opened =
        Rc::new(OpenDir::open(src, src.to_path_buf()).map_err(|e| annotate(e, "opening", src))?);
    copier.make_dir(src, src, dst, &root)?;
    copier.stats.dirs += 1;
    let mut stack = Vec::new();
    copier.copy_dir(&opened, dst, &mut stack)?;
    while let Some(pending) = stack.pop() {
        let at = pending.parent.entry(&pending.name);
        let shown = pending.parent.shown.join(&pending.name);
        let dir = match OpenDir::open(&at, shown) {
            Ok(dir) => Rc::new(dir),
            // Gone, or replaced by something else than a directory, since it was listed.
            Err(e) if changed(&e) => {
                copier.stats.vanished += 1;
                continue;
            }
            Err(e) => {
                return Err(annotate(
                    e,
                    "opening",
                    &pending.parent.shown.join(&pending.name),
                ))
            }
        };
        copier.copy_dir(&dir, &pending.dst, &mut stack)?;
    }
    copier.finish_dirs()?;
    Ok(copier.stats)
}

/// Whether an error means the source entry changed under the copy (gone, or of another type).
fn changed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

/// Whether `path` is gone (as opposed to an error about the destination).
fn vanished(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// A directory of the source, held open. Its entries are reached as
/// `/proc/self/fd/<fd>/<name>`, so no directory above them is looked up by name again: a
/// directory that is swapped for a symbolic link while the copy runs (the source may be the
/// upper directory of a running sandbox) cannot lead the copy out of the tree.
#[derive(Debug)]
struct OpenDir {
    fd: OwnedFd,
    /// Its real path, for messages.
    shown: PathBuf,
}

impl OpenDir {
    /// Opens the directory at `at` (never following a symbolic link there). The error is the
    /// system's, unannotated, so callers can tell [`changed`] entries.
    fn open(at: &Path, shown: PathBuf) -> io::Result<OpenDir> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(at)?;
        Ok(OpenDir {
            fd: file.into(),
            shown,
        })
    }

    /// A path naming the directory itself.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// A path naming entry `name` of the directory (its last component is looked up in this
    /// very directory).
    fn entry(&self, name: &OsStr) -> PathBuf {
        self.path().join(name)
    }
}

/// A directory created in the destination whose entries are still to be copied.
struct PendingDir {
    parent: Rc<OpenDir>,
    name: OsString,
    dst: PathBuf,
}

/// What became of one entry.
enum Copied {
    /// Copied; a directory to descend into.
    Dir,
    /// Copied (or skipped on purpose).
    Done,
    /// It changed type or disappeared while it was copied; left out.
    Changed,
}

struct Copier {
    opts: CopyOptions,
    /// The source's file system.
    dev: u64,
    stats: CopyStats,
    /// (dev, inode) of multiply linked sources → their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories created, finished (mode, times) after everything below them is copied.
    dirs: Vec<(PathBuf, Metadata)>,
    /// Whether `copy_file_range` still looks usable between these file systems.
    copy_file_range: bool,
    buf: Vec<u8>,
}

impl Copier {
    /// Copies the entries of `dir` into `dst` (which exists), queueing subdirectories.
    fn copy_dir(
        &mut self,
        dir: &Rc<OpenDir>,
        dst: &Path,
        stack: &mut Vec<PendingDir>,
    ) -> io::Result<()> {
        let entries =
            std::fs::read_dir(dir.path()).map_err(|e| annotate(e, "listing", &dir.shown))?;
        for entry in entries {
            let entry = entry.map_err(|e| annotate(e, "listing", &dir.shown))?;
            let name = entry.file_name();
            let (at, shown, to) = (dir.entry(&name), dir.shown.join(&name), dst.join(&name));
            let meta = match std::fs::symlink_metadata(&at) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.stats.vanished += 1;
                    continue;
                }
                Err(e) => return Err(annotate(e, "inspecting", &shown)),
            };
            let outcome = match self.copy_entry(&at, &shown, &to, &meta) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && vanished(&at) => {
                    Ok(Copied::Changed)
                }
                other => other,
            };
            match outcome? {
                Copied::Dir => stack.push(PendingDir {
                    parent: Rc::clone(dir),
                    name,
                    dst: to,
                }),
                Copied::Done => {}
                Copied::Changed => {
                    self.stats.vanished += 1;
                    if !meta.is_dir() {
                        let _ = std::fs::remove_file(&to);
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies one entry below the root: `at` names it for system calls, `shown` in messages.
    fn copy_entry(
        &mut self,
        at: &Path,
        shown: &Path,
        dst: &Path,
        meta: &Metadata,
    ) -> io::Result<Copied> {
        let ft = meta.file_type();
        if meta.dev() != self.dev {
            self.stats.other_fs += 1;
            if ft.is_dir() {
                self.make_dir(at, shown, dst, meta)?;
            }
            return Ok(Copied::Done);
        }
        if ft.is_dir() {
            self.make_dir(at, shown, dst, meta)?;
            self.stats.dirs += 1;
            return Ok(Copied::Dir);
        }
        if ft.is_socket() {
            self.stats.skipped += 1;
            return Ok(Copied::Done);
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                std::fs::hard_link(first, dst).map_err(|e| annotate(e, "linking", dst))?;
                self.stats.hard_links += 1;
                return Ok(Copied::Done);
            }
        }
        if ft.is_file() {
            if !self.copy_file(at, shown, dst)? {
                return Ok(Copied::Changed);
            }
            self.stats.files += 1;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(at).map_err(|e| annotate(e, "reading", shown))?;
            std::os::unix::fs::symlink(&target, dst).map_err(|e| annotate(e, "creating", dst))?;
            self.stats.symlinks += 1;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                self.stats.skipped += 1;
                return Ok(Copied::Done);
            };
            nix::sys::stat::mknod(dst, kind, Mode::S_IRUSR | Mode::S_IWUSR, meta.rdev())
                .map_err(|e| annotate(e.into(), "creating", dst))?;
            self.stats.specials += 1;
        }
        self.set_owner_and_mode(dst, meta)?;
        self.copy_xattrs(at, shown, dst)?;
        set_times(dst, meta)?;
        if meta.nlink() > 1 {
            self.links.insert(key, dst.to_path_buf());
        }
        Ok(Copied::Done)
    }

    /// Creates a directory with its owner and xattrs; its mode and times are set by
    /// [`Copier::finish_dirs`] (a read-only directory must stay writable while it is filled,
    /// and filling it changes its modification time).
    fn make_dir(&mut self, at: &Path, shown: &Path, dst: &Path, meta: &Metadata) -> io::Result<()> {
        std::fs::create_dir(dst).map_err(|e| annotate(e, "creating", dst))?;
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| annotate(e, "changing the owner of", dst))?;
        self.copy_xattrs(at, shown, dst)?;
        self.dirs.push((dst.to_path_buf(), meta.clone()));
        Ok(())
    }

    fn finish_dirs(&mut self) -> io::Result<()> {
        for (dir, meta) in self.dirs.iter().rev() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| annotate(e, "changing the mode of", dir))?;
            set_times(dir, meta)?;
        }
        Ok(())
    }

    /// Owner first, then the mode: changing the owner clears set-id bits.
    fn set_owner_and_mode(&self, dst: &Path, meta: &Metadata) -> io::Result<()> {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| annotate(e, "changing the owner of", dst))?;
        if !meta.file_type().is_symlink() {
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| annotate(e, "changing the mode of", dst))?;
        }
        Ok(())
    }

    fn copy_xattrs(&mut self, at: &Path, shown: &Path, dst: &Path) -> io::Result<()> {
        let names = list_xattrs(at).map_err(|e| annotate(e, "listing xattrs of", shown))?;
        for name in names {
            let text = name.to_string_lossy();
            if self.opts.for_lower_layer && UPPER_ONLY_XATTRS.contains(&text.as_ref()) {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            let Some(value) = get_xattr(at, &name)
                .map_err(|e| annotate(e, &format!("reading {text} of"), shown))?
            else {
                continue;
            };
            set_xattr(dst, &name, &value)
                .map_err(|e| annotate(e, &format!("setting {text} on"), dst))?;
            self.stats.xattrs += 1;
        }
        Ok(())
    }

    /// Copies the data of a regular file, leaving holes where the source has them; `false`
    /// if `at` is no longer a regular file.
    fn copy_file(&mut self, at: &Path, shown: &Path, dst: &Path) -> io::Result<bool> {
        // Non-blocking: should it have become a fifo, opening it must not wait for a writer.
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | flags)
                .open(at)
        };
        // Reading must not change the source's access time (O_NOATIME needs the owner or
        // CAP_FOWNER).
        let from = match open(libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
            other => other,
        };
        let from = match from {
            Ok(from) => from,
            Err(e) if changed(&e) => return Ok(false),
            Err(e) => return Err(annotate(e, "opening", shown)),
        };
        let meta = from
            .metadata()
            .map_err(|e| annotate(e, "inspecting", shown))?;
        if !meta.is_file() {
            return Ok(false);
        }
        let len = meta.len();
        let to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(|e| annotate(e, "creating", dst))?;
        to.set_len(len).map_err(|e| annotate(e, "sizing", dst))?;
        let mut offset = 0u64;
        while offset < len {
            let data = match seek(&from, offset, Whence::SeekData) {
                Ok(data) => data,
                // No data after `offset`: the rest is a hole.
                Err(Errno::ENXIO) => break,
                // The file system cannot tell: copy everything.
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => offset,
                Err(e) => return Err(annotate(e.into(), "seeking in", shown)),
            };
            if data >= len {
                break;
            }
            let hole = seek(&from, data, Whence::SeekHole).unwrap_or(len).min(len);
            let end = hole.max(data + 1).min(len);
            let copied = self
                .copy_range(&from, &to, data, end)
                .map_err(|e| annotate(e, "copying", shown))?;
            if copied < end - data {
                // The file shrank while it was copied.
                break;
            }
            offset = end;
        }
        Ok(true)
    }

    /// Copies bytes `start..end` to the same offsets; returns how many were copied (fewer
    /// only if the source ended early).
    fn copy_range(&mut self, from: &File, to: &File, start: u64, end: u64) -> io::Result<u64> {
        let mut pos = start;
        while pos < end && self.copy_file_range {
            let len = (end - pos).min(MAX_CHUNK) as usize;
            match copy_file_range(from, to, pos, len) {
                Ok(0) => return self.finish_range(start, pos),
                Ok(n) => pos += n as u64,
                Err(Errno::EINTR) => {}
                // Not between these file systems (or not on this kernel): read and write.
                Err(
                    Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL | Errno::EPERM,
                ) => self.copy_file_range = false,
                Err(e) => return Err(e.into()),
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUFFER];
        }
        while pos < end {
            let want = (end - pos).min(self.buf.len() as u64) as usize;
            let n = match from.read_at(&mut self.buf[..want], pos) {
                Ok(0) => return self.finish_range(start, pos),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            to.write_all_at(&self.buf[..n], pos)?;
            pos += n as u64;
        }
        self.finish_range(start, pos)
    }

    fn finish_range(&mut self, start: u64, pos: u64) -> io::Result<u64> {
        self.stats.bytes += pos - start;
        Ok(pos - start)
    }
}

/// `copy_file_range(2)` of `len` bytes at `offset` in both files (the files' positions are
/// not used); the number of bytes copied, 0 at the end of `from`.
fn copy_file_range(from: &File, to: &File, offset: u64, len: usize) -> Result<usize, Errno> {
    let (mut off_in, mut off_out) = (offset as i64, offset as i64);
    // SAFETY: both descriptors are open for the duration of the call (borrowed `File`s), and
    // the offset pointers point at live, writable 64-bit integers (`loff_t`). The raw system
    // call is used because older C libraries lack the wrapper.
    let n = unsafe {
        libc::syscall(
            libc::SYS_copy_file_range,
            from.as_raw_fd(),
            &mut off_in as *mut i64,
            to.as_raw_fd(),
            &mut off_out as *mut i64,
            len,
            0u32,
        )
    };
    Errno::result(n).map(|n| n as usize)
}

fn seek(file: &File, offset: u64, whence: Whence) -> Result<u64, Errno> {
    nix::unistd::lseek(file.as_raw_fd(), offset as libc::off_t, whence).map(|o| o as u64)
}

fn set_times(path: &Path, meta: &Metadata) -> io::Result<()> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| annotate(e.into(), "setting the times of", path))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::{Seek, SeekFrom, Write};

    fn xattr_name(s: &str) -> CString {
        CString::new(s).expect("no NUL")
    }

    fn set(path: &Path, name: &str, value: &[u8]) {
        set_xattr(path, &xattr_name(name), value)
            .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
    }

    fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
        get_xattr(path, &xattr_name(name)).expect("getxattr")
    }

    /// Every xattr of `path`, sorted.
    fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = list_xattrs(path)
            .expect("list")
            .into_iter()
            .map(|n| {
                let v = get_xattr(path, &n).expect("get").expect("listed");
                (n.to_string_lossy().into_owned(), v)
            })
            .collect();
        out.sort();
        out
    }

    /// A whole-tree listing: relative path → (metadata fields, content or link target, xattrs).
    fn describe(root: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).expect("below root").to_path_buf();
            let ft = m.file_type();
            let body = if ft.is_dir() {
                let mut children: Vec<PathBuf> = std::fs::read_dir(&p)
                    .expect("ls")
                    .map(|e| e.expect("entry").path())
                    .collect();
                children.sort();
                stack.extend(children);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).expect("readlink").display())
            } else if ft.is_file() {
                format!("{} bytes", m.len())
            } else {
                format!("special rdev {}", m.rdev())
            };
            // The first name of an inode stands for all of its names.
            let link = if m.nlink() > 1 && !ft.is_dir() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                format!(" link-of {}", first.display())
            } else {
                String::new()
            };
            let times = if ft.is_symlink() {
                format!("mtime {}.{}", m.mtime(), m.mtime_nsec())
            } else {
                format!(
                    "atime {}.{} mtime {}.{}",
                    m.atime(),
                    m.atime_nsec(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.push((
                rel,
                format!(
                    "{body} mode {:o} uid {} gid {} nlink {} {times}{link} xattrs {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink(),
                    xattrs(&p)
                ),
            ));
        }
        out.sort();
        out
    }

    /// A v2 `security.capability` granting cap_net_raw, effective.
    fn caps() -> Vec<u8> {
        let mut v = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
        v.extend_from_slice(&(1u32 << 13).to_le_bytes());
        v.extend_from_slice(&[0; 12]);
        v
    }

    fn mknod(path: &Path, kind: SFlag, dev: u64) {
        nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o644), dev)
            .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
    }

    /// A tree with one of everything an overlay upper directory can hold.
    fn build_source(src: &Path) {
        std::fs::create_dir_all(src.join("etc/deep/er")).expect("mkdir");
        std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").expect("write");
        std::fs::write(src.join("etc/deep/er/leaf"), "leaf").expect("write");
        let sudo = src.join("sudo");
        std::fs::write(&sudo, vec![7u8; 10_000]).expect("write");
        std::os::unix::fs::lchown(&sudo, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        std::fs::hard_link(&sudo, src.join("etc/sudo-again")).expect("link");
        std::fs::hard_link(&sudo, src.join("sudo-third")).expect("link");
        let ping = src.join("ping");
        std::fs::write(&ping, "ping").expect("write");
        set(&ping, "security.capability", &caps());
        set(&ping, "user.note", b"hello");
        let tmp = src.join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let shared = src.join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::os::unix::fs::lchown(&shared, Some(1000), Some(50)).expect("chown");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).expect("chmod");
        let ro = src.join("ro");
        std::fs::create_dir(&ro).expect("mkdir");
        std::fs::write(ro.join("inside"), "x").expect("write");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        std::os::unix::fs::symlink("etc/hosts", src.join("hosts-link")).expect("symlink");
        std::os::unix::fs::symlink("/nowhere", src.join("dangling")).expect("symlink");
        std::os::unix::fs::lchown(src.join("dangling"), Some(33), Some(33)).expect("chown");
        // Overlay bookkeeping: a whiteout, an opaque directory, a redirect and upper-only
        // attributes.
        mknod(&src.join("deleted"), SFlag::S_IFCHR, 0);
        set(&src.join("deleted"), "trusted.overlay.origin", b"\x00\xfb");
        let opaque = src.join("opaque");
        std::fs::create_dir(&opaque).expect("mkdir");
        set(&opaque, "trusted.overlay.opaque", b"y");
        set(&opaque, "trusted.overlay.impure", b"y");
        std::fs::write(opaque.join("new"), "new").expect("write");
        set(&src.join("etc"), "trusted.overlay.redirect", b"/old-etc");
        set(&src.join("etc"), "trusted.overlay.origin", b"\x00\xfb\x21");
        set(&src.join("etc/hosts"), "trusted.overlay.nlink", b"U+0");
        set(src, "trusted.overlay.uuid", b"0123");
        mknod(
            &src.join("null"),
            SFlag::S_IFCHR,
            nix::sys::stat::makedev(1, 3),
        );
        mknod(
            &src.join("loop9"),
            SFlag::S_IFBLK,
            nix::sys::stat::makedev(7, 9),
        );
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o620)).expect("fifo");
        let _listener = std::os::unix::net::UnixListener::bind(src.join("socket")).expect("socket");
        // Sparse: 1 MiB of data at 64 MiB, and a hole at the end.
        let mut sparse = File::create(src.join("sparse")).expect("create");
        sparse.seek(SeekFrom::Start(64 << 20)).expect("seek");
        sparse.write_all(&vec![1u8; 1 << 20]).expect("write");
        sparse.set_len(128 << 20).expect("truncate");
        // Fixed, distinct times (directories last: creating entries changes them). Access
        // times lie in the future, so reading the source (relatime) leaves them alone.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let mut all = Vec::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(p) = stack.pop() {
            if std::fs::symlink_metadata(&p).expect("stat").is_dir() {
                for e in std::fs::read_dir(&p).expect("ls") {
                    stack.push(e.expect("entry").path());
                }
            }
            all.push(p);
        }
        for (i, p) in all.iter().rev().enumerate() {
            let t = TimeSpec::new(1_600_000_000 + i as i64 * 1000, 123_456_789);
            let a = TimeSpec::new(now + 3600 + i as i64, 42);
            nix::sys::stat::utimensat(None, p, &a, &t, UtimensatFlags::NoFollowSymlink)
                .expect("utimensat");
        }
    }

    fn trusted_xattrs_work(dir: &Path) -> bool {
        let probe = dir.join("probe");
        std::fs::write(&probe, "").expect("write");
        let ok = set_xattr(&probe, &xattr_name("trusted.probe"), b"1").is_ok();
        std::fs::remove_file(&probe).expect("rm");
        ok
    }

    #[test]
    fn copy_is_identical_to_the_source() {
        let tmp = tempfile::tempdir().expect("tempdir");
        if !trusted_xattrs_work(tmp.path()) {
            eprintln!("skipping: needs root and a file system with trusted xattrs");
            return;
        }
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        build_source(&src);
        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, CopyOptions::default()).expect("copy");

        let mut want = describe(&src);
        want.retain(|(path, _)| path != Path::new("socket"));
        assert_eq!(want, describe(&dst));
        assert_eq!(stats.hard_links, 2, "{stats:?}");
        assert_eq!(stats.skipped, 1, "the socket: {stats:?}");
        assert!(!dst.join("socket").exists());
        // sudo, ping, hosts, leaf, inside, new, sparse.
        assert_eq!(stats.files, 7, "{stats:?}");
        assert_eq!(stats.specials, 4, "{stats:?}");
        assert_eq!(stats.symlinks, 2, "{stats:?}");
        assert_eq!(stats.xattrs_dropped, 0, "{stats:?}");
        assert_eq!(stats.vanished, 0, "{stats:?}");
        assert_eq!(
            std::fs::read(dst.join("etc/deep/er/leaf")).expect("read"),
            b"leaf"
        );
        assert_eq!(
            std::fs::read(dst.join("sudo")).expect("read"),
            vec![7u8; 10_000]
        );
        assert_eq!(get(&dst.join("ping"), "security.capability"), Some(caps()));
        let sudo = std::fs::metadata(dst.join("sudo")).expect("stat");
        assert_eq!(sudo.mode() & 0o7777, 0o4755);

        // Sparse: the data is there, the holes stay holes.
        let sparse = std::fs::metadata(dst.join("sparse")).expect("stat");
        assert_eq!(sparse.len(), 128 << 20);
        assert!(
            sparse.blocks() * 512 < 4 << 20,
            "{} bytes allocated",
            sparse.blocks() * 512
        );
        let f = File::open(dst.join("sparse")).expect("open");
        let mut one = [0u8; 1];
        f.read_exact_at(&mut one, 64 << 20).expect("read");
        assert_eq!(one, [1]);
        f.read_exact_at(&mut one, 1 << 20).expect("read");
        assert_eq!(one, [0]);
        assert_eq!(stats.bytes, 10_000 + 4 + 20 + 4 + 1 + 3 + (1 << 20));
    }

    #[test]
    fn lower_layer_copy_drops_upper_only_xattrs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        if !trusted_xattrs_work(tmp.path()) {
            eprintln!("skipping: needs root and a file system with trusted xattrs");
            return;
        }
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        build_source(&src);
        let dst = tmp.path().join("dst");
        let stats = copy_tree(
            &src,
            &dst,
            CopyOptions {
                for_lower_layer: true,
            },
        )
        .expect("copy");
        assert_eq!(stats.xattrs_dropped, 5, "{stats:?}");
        for p in [
            dst.clone(),
            dst.join("etc"),
            dst.join("etc/hosts"),
            dst.join("deleted"),
            dst.join("opaque"),
        ] {
            for (name, _) in xattrs(&p) {
                assert!(
                    !UPPER_ONLY_XATTRS.contains(&name.as_str()),
                    "{name} left on {}",
                    p.display()
                );
            }
        }
        assert_eq!(
            get(&dst.join("opaque"), "trusted.overlay.opaque"),
            Some(b"y".to_vec())
        );
        assert_eq!(
            get(&dst.join("etc"), "trusted.overlay.redirect"),
            Some(b"/old-etc".to_vec())
        );
        let whiteout = std::fs::symlink_metadata(dst.join("deleted")).expect("stat");
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert_eq!(get(&dst.join("ping"), "user.note"), Some(b"hello".to_vec()));
    }

    #[test]
    fn deep_trees_do_not_recurse_and_mount_points_are_not_entered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let mut deep = src.clone();
        for _ in 0..400 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::write(deep.join("bottom"), "b").expect("write");
        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, CopyOptions::default()).expect("copy");
        assert_eq!(stats.dirs, 401);
        let mut copied = dst.clone();
        for _ in 0..400 {
            copied.push("d");
        }
        assert_eq!(std::fs::read(copied.join("bottom")).expect("read"), b"b");

        // /proc is another file system: copying / one level would have to stop there. Check
        // with a tree that holds a mount point, when we may mount.
        let mnt_src = tmp.path().join("msrc");
        std::fs::create_dir_all(mnt_src.join("mnt")).expect("mkdir");
        std::fs::write(mnt_src.join("file"), "f").expect("write");
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &mnt_src.join("mnt"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        );
        if mounted.is_err() {
            eprintln!("skipping the mount point check: cannot mount");
            return;
        }
        std::fs::write(mnt_src.join("mnt/hidden"), "h").expect("write");
        let result = copy_tree(&mnt_src, &tmp.path().join("mdst"), CopyOptions::default());
        nix::mount::umount2(&mnt_src.join("mnt"), nix::mount::MntFlags::MNT_DETACH)
            .expect("umount");
        let stats = result.expect("copy");
        assert_eq!(stats.other_fs, 1, "{stats:?}");
        assert!(tmp.path().join("mdst/mnt").is_dir());
        assert!(!tmp.path().join("mdst/mnt/hidden").exists());
        assert!(tmp.path().join("mdst/file").is_file());
    }

    fn copier() -> Copier {
        Copier {
            opts: CopyOptions::default(),
            dev: 0,
            stats: CopyStats::default(),
            links: HashMap::new(),
            dirs: Vec::new(),
            copy_file_range: true,
            buf: Vec::new(),
        }
    }

    #[test]
    fn entries_swapped_while_copied_are_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("dir")).expect("mkdir");
        std::fs::write(src.join("dir/file"), "inside").expect("write");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("file"), "host secret").expect("write");

        // A directory opened, then swapped for a symlink: its entries are still its own.
        let dir = OpenDir::open(&src.join("dir"), src.join("dir")).expect("open");
        std::fs::rename(src.join("dir"), src.join("moved")).expect("mv");
        std::os::unix::fs::symlink(&outside, src.join("dir")).expect("symlink");
        assert_eq!(
            std::fs::read_to_string(dir.entry(OsStr::new("file"))).expect("read"),
            "inside"
        );
        // A symlink where a directory was listed is not opened as one.
        let err = OpenDir::open(&src.join("dir"), src.join("dir")).expect_err("symlink");
        assert!(changed(&err), "{err}");

        // A regular file that became a fifo: left out, without waiting for a writer.
        let fifo = src.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("fifo");
        let dst = tmp.path().join("copied-fifo");
        assert!(!copier().copy_file(&fifo, &fifo, &dst).expect("copy"));
        assert!(!dst.exists());
        // A file that disappeared: left out as well.
        let gone = src.join("gone");
        assert!(!copier().copy_file(&gone, &gone, &dst).expect("copy"));
    }

    #[test]
    fn refuses_an_existing_destination_and_a_non_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).expect("mkdir");
        let err = copy_tree(&src, &dst, CopyOptions::default()).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::write(tmp.path().join("file"), "x").expect("write");
        let err = copy_tree(
            &tmp.path().join("file"),
            &tmp.path().join("d2"),
            CopyOptions::default(),
        )
        .expect_err("not a dir");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
