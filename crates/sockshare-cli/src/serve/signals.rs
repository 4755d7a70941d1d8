//! Serve's signals as readable events (signalfd(2)): SIGHUP (reload), SIGTERM and SIGINT
//! (stop), SIGCHLD (a worker changed state). They are blocked, so none interrupts serve
//! between two steps; children start with an empty mask (the standard library resets it
//! before exec). [`block`] is the mask alone, which `sockshare hello` uses too.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

/// The signalfd for serve's signals.
pub struct Signals {
    fd: OwnedFd,
}

/// The signals serve handles.
const HANDLED: [i32; 4] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD];

impl Signals {
    /// Blocks the handled signals in this thread (serve has no other) and opens a
    /// nonblocking signalfd for them.
    ///
    /// # Errors
    ///
    /// The errors of `pthread_sigmask` or `signalfd`.
    pub fn block() -> io::Result<Signals> {
        let set = block(&HANDLED)?;
        // SAFETY: `set` is an initialised sigset_t; signalfd only reads it.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(Signals {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The signals that arrived since the last call, in order.
    ///
    /// # Errors
    ///
    /// The errors of `read` other than `EAGAIN`.
    pub fn pending(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is writable for `size` bytes; a signalfd reads whole records.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(out),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n as usize != size {
                return Ok(out);
            }
            out.push(info.ssi_signo as i32);
        }
    }
}

/// Blocks `signals` in this thread, and so in the threads it starts afterwards; the set,
/// for signalfd or sigwait.
///
/// # Errors
///
/// The error of `pthread_sigmask`.
pub fn block(signals: &[i32]) -> io::Result<libc::sigset_t> {
    // SAFETY: `set` is a sigset_t, initialised by sigemptyset before any other use; the
    // calls only read and write it and this thread's mask.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        // pthread_sigmask returns the error number; it does not set errno.
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
