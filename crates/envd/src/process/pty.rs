//! Pseudo-terminals for `Start` with `pty` (spec 3.4): allocation with a size, the async master
//! end (reads for `data.pty`, writes for `pty` input) and resizing for `Update`. The slave side is
//! wired into the child by `spawn.rs` (setsid + TIOCSCTTY).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::messages::PtySize;

/// Largest chunk read from a terminal (spec: pty chunks ≤ 16 KiB).
pub const PTY_CHUNK: usize = 16 * 1024;

/// A freshly allocated terminal pair.
pub struct PtyPair {
    /// The master end, kept by envd.
    pub master: OwnedFd,
    /// The slave end, given to the child as stdin/stdout/stderr.
    pub slave: OwnedFd,
}

fn winsize(size: PtySize) -> Winsize {
    let clamp = |v: u32, default: u16| {
        if v == 0 {
            default
        } else {
            v.min(u16::MAX as u32) as u16
        }
    };
    Winsize {
        ws_row: clamp(size.rows, 24),
        ws_col: clamp(size.cols, 80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a terminal pair of the given size. Both ends are close-on-exec in envd (the child gets
/// dup'ed copies of the slave as its standard streams).
pub fn open(size: PtySize) -> io::Result<PtyPair> {
    let pair = openpty(Some(&winsize(size)), None)?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok(PtyPair {
        master: pair.master,
        slave: pair.slave,
    })
}

/// The master end of a terminal, registered with tokio.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Wraps a master fd (switching it to non-blocking mode).
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        // SAFETY: `master` is an open `OwnedFd` moved into the `AsyncFd`, which owns it until it is
        // dropped; `OwnedFd::as_raw_fd` always returns that same descriptor.
        let fd = unsafe {
            AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(PtyMaster { fd })
    }

    /// Reads the next chunk; `Ok(0)` once every slave is closed (the kernel's EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (the child's input).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Changes the terminal size (TIOCSWINSZ); the kernel sends SIGWINCH to the foreground group.
    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `winsize` struct from the pointer, which points to a live,
        // properly initialised local; the fd is a valid open terminal master owned by `self`.
        let rc = unsafe {
            libc::ioctl(
                self.fd.get_ref().as_raw_fd(),
                libc::TIOCSWINSZ,
                &ws as *const Winsize,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The current terminal size.
    pub fn size(&self) -> io::Result<PtySize> {
        let mut ws = Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` struct through the pointer, which points to a
        // live local of that type; the fd is a valid open terminal master owned by `self`.
        let rc = unsafe {
            libc::ioctl(
                self.fd.get_ref().as_raw_fd(),
                libc::TIOCGWINSZ,
                &mut ws as *mut Winsize,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PtySize {
            cols: ws.ws_col.into(),
            rows: ws.ws_row.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_resizes_and_echoes() {
        let pair = open(PtySize {
            cols: 100,
            rows: 30,
        })
        .expect("openpty");
        let master = PtyMaster::new(pair.master).expect("master");
        assert_eq!(
            master.size().expect("size"),
            PtySize {
                cols: 100,
                rows: 30
            }
        );
        master
            .resize(PtySize {
                cols: 132,
                rows: 40,
            })
            .expect("resize");
        assert_eq!(
            master.size().expect("size"),
            PtySize {
                cols: 132,
                rows: 40
            }
        );
        // The line discipline echoes input back to the master.
        master.write_all(b"x").await.expect("write");
        let mut buf = [0u8; 64];
        let n = master.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"x");
        drop(pair.slave);
    }

    #[test]
    fn zero_sizes_get_defaults() {
        let ws = winsize(PtySize { cols: 0, rows: 0 });
        assert_eq!((ws.ws_col, ws.ws_row), (80, 24));
    }
}
