//! Extended attributes of a path itself, never following a symlink (`llistxattr`,
//! `lgetxattr`, `lsetxattr`): what the id shift ([`crate::idmap`]) and the node's tree copier
//! read and write (file capabilities, overlay whiteout markers).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The names of the extended attributes of `path` itself (`llistxattr`); none when the file
/// system has no xattrs.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<CString>> {
    let p = c_path(path)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: `p` is a NUL-terminated string that outlives the call; a null buffer with
        // size 0 only asks for the size of the list.
        let needed = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if needed < 0 {
            return match Errno::last() {
                Errno::ENOTSUP => Ok(Vec::new()),
                e => Err(e.into()),
            };
        }
        if needed == 0 {
            return Ok(Vec::new());
        }
        buf.resize(needed as usize, 0);
        // SAFETY: `p` is NUL-terminated and `buf` is a writable buffer of the length passed;
        // both outlive the call.
        let len = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if len < 0 {
            match Errno::last() {
                // The list grew between the two calls.
                Errno::ERANGE => continue,
                e => return Err(e.into()),
            }
        }
        buf.truncate(len as usize);
        return Ok(buf
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .filter_map(|name| CString::new(name).ok())
            .collect());
    }
}

/// The value of xattr `name` of `path` itself (`lgetxattr`); `None` if it is absent or the
/// file system has no xattrs.
pub fn get_xattr(path: &Path, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let p = c_path(path)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: `p` and `name` are NUL-terminated strings that outlive the call; a null
        // buffer with size 0 only asks for the size of the value.
        let needed = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if needed < 0 {
            return match Errno::last() {
                Errno::ENODATA | Errno::ENOTSUP => Ok(None),
                e => Err(e.into()),
            };
        }
        buf.resize(needed as usize, 0);
        // SAFETY: `p` and `name` are NUL-terminated and `buf` is a writable buffer of the
        // length passed; all outlive the call.
        let len = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if len < 0 {
            match Errno::last() {
                Errno::ERANGE => continue,
                Errno::ENODATA => return Ok(None),
                e => return Err(e.into()),
            }
        }
        buf.truncate(len as usize);
        return Ok(Some(buf));
    }
}

/// Sets xattr `name` of `path` itself (`lsetxattr`).
pub fn set_xattr(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: `p` and `name` are NUL-terminated strings and `value` a readable buffer of the
    // length passed; all outlive the call.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
