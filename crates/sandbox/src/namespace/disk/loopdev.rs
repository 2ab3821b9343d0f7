//! Loop devices through their ioctls (no `losetup`): a free device from `/dev/loop-control`
//! (`LOOP_CTL_GET_FREE`), bound to an image file in one step (`LOOP_CONFIGURE`) with
//! `LO_FLAGS_AUTOCLEAR`, so the kernel detaches the device by itself once its last user (the
//! mount) lets go of it. Also `copy_file_range(2)` for copying image extents. The only
//! `unsafe` code of the disk module lives here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The loop control device.
pub const LOOP_CONTROL: &str = "/dev/loop-control";

/// `LOOP_CTL_GET_FREE` (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` (linux/loop.h, Linux 5.8).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LO_FLAGS_AUTOCLEAR`: detach when the last opener closes the device.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`: bypass the page cache of the backing file (no double caching).
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// `LO_NAME_SIZE`.
const LO_NAME_SIZE: usize = 64;
/// How many free devices to try when other processes grab the one we were given.
const ATTEMPTS: usize = 32;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to an image. Dropping it closes our descriptor: with nothing else
/// holding the device (no mount) it detaches at once.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// Keeps the device open until it is mounted.
    _dev: File,
}

/// Whether the host has loop device support at all.
pub(crate) fn available() -> bool {
    Path::new(LOOP_CONTROL).exists()
}

/// Binds `image` to a free loop device, with a logical block size of `block_size` bytes
/// (the file system's block size), auto-clear and, where the backing file system allows it,
/// direct I/O.
pub(crate) fn attach(image: &File, block_size: u32) -> io::Result<LoopDevice> {
    let ctl = File::options()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {LOOP_CONTROL}: {e}")))?;
    let mut direct_io = true;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("LOOP_CTL_GET_FREE: {e}")));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        match configure(&dev, image, block_size, direct_io) {
            Ok(()) => return Ok(LoopDevice { path, _dev: dev }),
            // Another process bound it between GET_FREE and CONFIGURE: take the next one.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            // Direct I/O refused by the backing file system (e.g. tmpfs): buffered then.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct_io => {
                direct_io = false;
                last = Some(e);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("LOOP_CONFIGURE on {}: {e}", path.display()),
                ))
            }
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY));
    Err(io::Error::new(
        e.kind(),
        format!("no free loop device after {ATTEMPTS} attempts: {e}"),
    ))
}

fn configure(dev: &File, image: &File, block_size: u32, direct_io: bool) -> io::Result<()> {
    let fd = u32::try_from(image.as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad image descriptor"))?;
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let config = LoopConfig {
        fd,
        block_size,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors with
    // `repr(C)`; `config` is valid and outlives the call, and `fd` is an open descriptor.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies up to `len` bytes from `src` at `*off_in` to `dst` at `*off_out` in the kernel
/// (a reflink where the file system can), advancing both offsets. Returns the bytes copied.
pub(crate) fn copy_file_range(
    src: &File,
    off_in: &mut i64,
    dst: &File,
    off_out: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed `File`s), and
    // the offsets are valid, exclusively borrowed `loff_t`s the kernel updates.
    let n =
        unsafe { libc::copy_file_range(src.as_raw_fd(), off_in, dst.as_raw_fd(), off_out, len, 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The image file behind loop device `name` (`loop3`), from sysfs; `None` when unbound.
pub(crate) fn backing_file(name: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let text = text.trim_end_matches('\n');
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Every bound loop device as (`loopN`, backing file).
pub(crate) fn bound() -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter_map(|n| backing_file(&n).map(|f| (n, f)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
