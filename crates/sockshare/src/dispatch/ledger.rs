//! The ledger: one page of memory that serve and one worker share, in which the worker
//! records what it has taken and finished.
//!
//! A report sent on the channel per connection cost the worker a `send`, serve a wake-up
//! and two `recv`s: about an eighth of dispatch's throughput (measured with
//! `sockshare bench-dispatch`). A store into shared memory costs neither process a system
//! call, and serve reads the figures when it chooses a worker or a worker exits, which it
//! does anyway. What a message gave for free, the ledger's rules give instead:
//!
//! - *Order.* The worker takes records one at a time, in the order they come: it reads a
//!   record, redeems its info, stores the record's sequence number in `taken`, and only
//!   then reads the next. So `taken` = N means every connection up to N is the worker's.
//! - *Before any I/O.* The store comes before the worker reads or writes the connection:
//!   serve drops its own descriptor of a connection only once `taken` covers it, so a
//!   worker that dies before the store has done nothing with it, and serve can give it to
//!   another worker without it being served twice. The figures stay in serve's mapping
//!   after the worker is gone, so they are read after its death too.
//! - *Serve cannot be made to fault.* The memory is a `memfd` that serve sizes and seals
//!   (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before the worker sees it: a worker
//!   cannot truncate it under serve's mapping (which would kill serve with `SIGBUS`). What
//!   a worker writes there misleads only serve's view of that worker.
//!
//! Layout, for workers in other languages (native byte order, naturally aligned, each
//! written with an atomic store or add, release order):
//!
//! | offset | type | what |
//! |---:|---|---|
//! | 0 | `u64` | `taken`: the sequence number of the last record taken (0: none yet) |
//! | 8 | `u64` | `done`: connections the worker has finished so far |
//! | 16 | `u64` | `asks`: bit 0 set: send me descriptor records (see `dispatch::record`) |
//!
//! The rest of the page is zero and reserved.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The bytes of a ledger: one page on every machine serve runs on.
pub const LEDGER_SIZE: usize = 4096;

/// Bit 0 of `asks`: descriptor records, please.
const ASK_DESCRIPTORS: u64 = 1;

/// A mapping of one worker's ledger, in serve or in the worker.
#[derive(Debug)]
pub struct Ledger {
    /// The start of the `LEDGER_SIZE`-byte shared mapping: `taken`, `done`, `asks`.
    at: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only ever accessed through atomics, from any thread.
unsafe impl Send for Ledger {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Ledger {}

impl Ledger {
    /// Serve's side: a new ledger (`memfd_create(2)`, sized and sealed), mapped here, and
    /// the descriptor to give the worker.
    ///
    /// # Errors
    ///
    /// The errors of `memfd_create`, `ftruncate`, `fcntl(F_ADD_SEALS)` and `mmap`.
    pub fn create() -> io::Result<(Ledger, OwnedFd)> {
        let fd = rustix::fs::memfd_create(
            "sockshare-dispatch-ledger",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, LEDGER_SIZE as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Ok((Ledger::map_fd(&fd)?, fd))
    }

    /// The worker's side: maps the ledger serve gave it. The descriptor may be closed
    /// afterwards; the mapping stays.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `fd` is not a ledger (not a sealed memory file of at least
    /// [`LEDGER_SIZE`] bytes), or the error of `mmap`.
    pub fn map(fd: impl AsFd) -> io::Result<Ledger> {
        if !Ledger::is_ledger(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a dispatch ledger (a sealed memfd of one page)",
            ));
        }
        Ledger::map_fd(fd)
    }

    /// Whether `fd` is a memory file sealed against shrinking, of at least [`LEDGER_SIZE`]
    /// bytes: one that can be mapped as a ledger without a later `SIGBUS`. Two system
    /// calls, nothing mapped.
    #[must_use]
    pub fn is_ledger(fd: BorrowedFd<'_>) -> bool {
        let sealed = rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        sealed && rustix::fs::fstat(fd).is_ok_and(|s| s.st_size >= LEDGER_SIZE as i64)
    }

    fn map_fd(fd: impl AsFd) -> io::Result<Ledger> {
        // SAFETY: a new shared mapping at an address the kernel picks, of a file that is at
        // least LEDGER_SIZE bytes and cannot shrink (sealed): no existing memory is
        // touched, and every page of it stays backed.
        let at = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                LEDGER_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let at = NonNull::new(at.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Ledger { at })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index < 3);
        // SAFETY: the mapping is page-aligned, LEDGER_SIZE bytes, and lives as long as
        // `self`; words 0 to 2 lie in it, aligned for u64, and are only accessed
        // atomically (u64 atomics are lock-free and address-free on the platforms this
        // builds for, so two processes may share them).
        unsafe { &*self.at.as_ptr().add(index) }
    }

    /// The sequence number of the last record the worker has taken.
    #[must_use]
    pub fn taken(&self) -> u64 {
        self.word(0).load(Ordering::Acquire)
    }

    /// Connections the worker has finished.
    #[must_use]
    pub fn done(&self) -> u64 {
        self.word(1).load(Ordering::Acquire)
    }

    /// Records that the worker took record `seq` (and every one before it).
    pub fn set_taken(&self, seq: u64) {
        self.word(0).store(seq, Ordering::Release);
    }

    /// Records that the worker finished one more connection.
    pub fn add_done(&self) {
        self.word(1).fetch_add(1, Ordering::Release);
    }

    /// The worker's side: asks serve to send each connection's descriptor with its record
    /// (one message per connection) instead of an info to redeem. Serve reads it at its
    /// next hand-out; the worker must take both forms from then on.
    pub fn ask_for_descriptors(&self) {
        self.word(2).fetch_or(ASK_DESCRIPTORS, Ordering::Release);
    }

    /// Whether the worker asked for descriptor records.
    #[must_use]
    pub fn asks_for_descriptors(&self) -> bool {
        self.word(2).load(Ordering::Acquire) & ASK_DESCRIPTORS != 0
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map_fd`, of that length; nothing borrows it any
        // more (`word` borrows end with `&self`).
        let _ = unsafe { rustix::mm::munmap(self.at.as_ptr().cast(), LEDGER_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker cannot truncate the ledger under serve's mapping: a read of a page cut off
    /// would kill serve with SIGBUS.
    #[test]
    fn a_worker_cannot_shrink_or_unseal_the_ledger() {
        let (serve, fd) = Ledger::create().unwrap();
        assert_eq!(
            rustix::fs::ftruncate(&fd, 0),
            Err(rustix::io::Errno::PERM),
            "a shrink must be refused"
        );
        assert_eq!(
            rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE),
            Err(rustix::io::Errno::PERM),
            "the seals must be sealed"
        );
        let worker = Ledger::map(&fd).unwrap();
        worker.set_taken(5);
        worker.add_done();
        assert_eq!((serve.taken(), serve.done()), (5, 1));
        assert!(
            !serve.asks_for_descriptors(),
            "a worker that says nothing gets infos"
        );
        worker.ask_for_descriptors();
        assert!(serve.asks_for_descriptors());
    }

    #[test]
    fn what_is_not_a_ledger_is_refused() {
        let file = std::fs::File::open("/dev/zero").unwrap();
        let err = Ledger::map(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let unsealed = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, LEDGER_SIZE as u64).unwrap();
        assert_eq!(
            Ledger::map(&unsealed).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
