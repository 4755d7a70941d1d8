//! Loss-free, batched receiving of `SCM_RIGHTS` records from a Unix `SOCK_SEQPACKET`
//! socket, shared by the session endpoint, the channel and the dispatch worker
//! (`crate::dispatch`).
//!
//! A record is peeked first: the kernel installs copies of its descriptors and keeps the
//! record queued, so a full descriptor table never destroys a socket (a plain receive would
//! close what does not fit). With `SO_PEEK_OFF` each peek moves past the record before it,
//! so one `recvmmsg(MSG_PEEK)` peeks many records, and one more `recvmmsg` with no room for
//! descriptors consumes those the caller kept (the kernel drops its references; the copies
//! remain). Two system calls per batch instead of two per record.
//!
//! Empty records (no bytes) need care, because with `SO_PEEK_OFF` the kernel shows each
//! one to a peek only once and skips it in every later peek, while a plain receive still
//! takes it in its turn. A count of peeked records therefore cannot say how many records
//! to consume. So empty records are never handed out (no valid record of either protocol
//! is empty; their descriptors, if any, are closed), and [`consume`] counts only the
//! records with bytes, taking empty ones in passing wherever they stand. The end of the
//! stream also reads as empty records, so a peek that finds nothing else asks the socket
//! whether its peer has gone (`POLLRDHUP`).
//!
//! `ECONNRESET` is not an error here: Linux reports it once, on the next receive, when the
//! peer closed with records of its own unread, and ahead of whatever is still queued on
//! this side (then end of file). Both calls go on after it, so a queued socket is never
//! mistaken for a closed connection, and a consume cut short by it is finished.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

/// Records one peek takes at most.
pub(crate) const MAX_RECORDS: usize = 32;
/// Peeks of nothing but empty records, from a peer that is gone, that mean the end.
const EMPTY_ROUNDS: usize = 8;

/// What a peek gave for one record, beside its bytes.
pub(crate) struct Meta {
    /// Where the record's bytes are in the batch's buffers (see [`Batch::record`]).
    slot: usize,
    /// Bytes of the record (more than the record capacity means it was too long).
    pub len: usize,
    /// The descriptors the kernel installed for us.
    pub fds: Vec<OwnedFd>,
    /// The sender's credentials, when the socket has `SO_PASSCRED`.
    pub uid: Option<u32>,
    /// The sender's pid as this process sees it (`None` when invisible here).
    pub pid: Option<u32>,
    /// `MSG_CTRUNC`: some descriptors did not fit (the table is full, or too many came).
    pub truncated: bool,
}

/// Reusable buffers for peeking up to `records` records at a time.
pub(crate) struct Batch {
    record_cap: usize,
    control_space: usize,
    bytes: Vec<u8>,
    /// `u64` words, so every control buffer is aligned for `cmsghdr`.
    control: Vec<u64>,
    records: usize,
}

impl Batch {
    /// Buffers for `records` records of at most `record_cap` bytes and `max_fds`
    /// descriptors each, with room for credentials when `creds`.
    pub(crate) fn new(records: usize, record_cap: usize, max_fds: usize, creds: bool) -> Batch {
        let records = records.clamp(1, MAX_RECORDS);
        let fds_space = rustix::cmsg_space!(ScmRights(max_fds));
        let creds_space = if creds {
            rustix::cmsg_space!(ScmCredentials(1))
        } else {
            0
        };
        let control_space = (fds_space + creds_space).next_multiple_of(8);
        Batch {
            record_cap,
            control_space,
            // One byte more than the longest record, so a longer one shows as such.
            bytes: vec![0; records * (record_cap + 1)],
            control: vec![0; records * control_space / 8],
            records,
        }
    }

    /// The bytes of a record of the last peek.
    pub(crate) fn record(&self, meta: &Meta) -> &[u8] {
        let start = meta.slot * (self.record_cap + 1);
        &self.bytes[start..start + meta.len.min(self.record_cap + 1)]
    }

    /// Peeks up to the batch's size of records, each past the one before it (the socket
    /// needs `SO_PEEK_OFF`, left at the head by the last `consume`). Blocks for the first
    /// when `wait`; an empty `Vec` means nothing is queued. `Err(PIPE)` when the peer has
    /// closed and nothing is left.
    pub(crate) fn peek(&mut self, fd: BorrowedFd<'_>, wait: bool) -> Result<Vec<Meta>, Errno> {
        // The end of the stream reads as empty records too, again and again. Once the peer
        // is gone, a few rounds of nothing but empty records are taken for the end; a
        // peer that closed after more empty records than that loses what it sent after
        // them (sockshare never sends one).
        let mut empty_rounds = 0;
        loop {
            match self.peek_once(fd, wait)? {
                // Only empty records: each is shown to a peek once, so peek again for what
                // follows them.
                (n, out) if n > 0 && out.is_empty() => {
                    if peer_gone(fd) {
                        empty_rounds += 1;
                        if empty_rounds == EMPTY_ROUNDS {
                            return Err(Errno::PIPE);
                        }
                    }
                }
                (_, out) => return Ok(out),
            }
        }
    }

    /// One `recvmmsg` of `peek`: how many entries the kernel returned, and those with
    /// bytes.
    fn peek_once(&mut self, fd: BorrowedFd<'_>, wait: bool) -> Result<(usize, Vec<Meta>), Errno> {
        let stride = self.record_cap + 1;
        let words = self.control_space / 8;
        let count = self.records;
        // SAFETY: iovec and mmsghdr are plain data; all-zero values are valid and empty.
        let mut iovs: [libc::iovec; MAX_RECORDS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MAX_RECORDS] = unsafe { std::mem::zeroed() };
        for (((m, iov), bytes), control) in msgs
            .iter_mut()
            .zip(iovs.iter_mut())
            .zip(self.bytes.chunks_exact_mut(stride))
            .zip(self.control.chunks_exact_mut(words))
        {
            *iov = libc::iovec {
                iov_base: bytes.as_mut_ptr().cast(),
                iov_len: stride,
            };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = control.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = self.control_space as _;
        }
        let flags = libc::MSG_PEEK
            | libc::MSG_CMSG_CLOEXEC
            | if wait {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
        let n = loop {
            // SAFETY: every header's iovec and control buffer point into this batch's
            // buffers, which are exclusively borrowed for the call and outlive it.
            let n = unsafe {
                super::raw::recvmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as _, flags)
            };
            match n {
                Ok(n) => break n as usize,
                Err(Errno::INTR | Errno::CONNRESET) => {}
                Err(Errno::AGAIN) if !wait => return Ok((0, Vec::new())),
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::with_capacity(n);
        for (slot, m) in msgs.iter().take(n).enumerate() {
            // SAFETY: the kernel filled this header's control buffer with `msg_controllen`
            // bytes of well-formed cmsgs.
            let meta = unsafe { read_meta(slot, m) };
            // Read even when dropped: the kernel installed copies of every peeked
            // record's descriptors, and dropping `meta` closes them.
            if meta.len > 0 {
                out.push(meta);
            }
        }
        Ok((n, out))
    }
}

/// Whether the peer of a connected socket has closed or shut down its end.
fn peer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::RDHUP | rustix::event::PollFlags::HUP,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).map_or(true, |n| {
        n > 0
            && fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::RDHUP | rustix::event::PollFlags::HUP)
    })
}

/// Reads one peeked record's length, descriptors and credentials.
///
/// # Safety
/// `m` must be a header `recvmmsg` just filled, its control buffer still alive.
unsafe fn read_meta(slot: usize, m: &libc::mmsghdr) -> Meta {
    let mut meta = Meta {
        slot,
        len: m.msg_len as usize,
        fds: Vec::new(),
        uid: None,
        pid: None,
        truncated: m.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // SAFETY: per this function's contract the cmsgs are well formed; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay inside the buffer, and the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for k in 0..payload / 4 {
                        let raw = std::ptr::read_unaligned(data.cast::<i32>().add(k));
                        // The kernel installed this descriptor for us alone.
                        meta.fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    meta.uid = Some(cred.uid);
                    meta.pid = (cred.pid > 0).then_some(cred.pid as u32);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
        }
    }
    meta
}

/// Ends a batch of `peeked` records (with bytes, as `peek` hands them out): consumes the
/// first `taken` from the head of the queue without taking their descriptors (the kernel
/// drops its references; the peeked copies are what the caller keeps), and, when some
/// peeked records stay queued, moves the peek offset back to the head, since it has
/// stepped past them.
pub(crate) fn consume(fd: BorrowedFd<'_>, taken: usize, peeked: usize) -> Result<(), Errno> {
    consume_records(fd, taken)?;
    if taken < peeked {
        set_peek_off(fd, 0)?;
    }
    Ok(())
}

/// Receives `count` records with bytes from the head of the queue, and every empty
/// record before and among them.
fn consume_records(fd: BorrowedFd<'_>, count: usize) -> Result<(), Errno> {
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header (no iov, no
    // control), so each record is consumed whole (seqpacket) and truncated to nothing.
    let mut msgs: [libc::mmsghdr; MAX_RECORDS] = unsafe { std::mem::zeroed() };
    let mut done = 0;
    while done < count {
        // Never more records than are still owed: each may be one with bytes.
        let want = (count - done).min(MAX_RECORDS);
        // SAFETY: `msgs[..want]` are empty headers (no iov, no control) owned by us.
        let n = match unsafe {
            super::raw::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                want as _,
                // MSG_TRUNC: each entry's length is its record's, not what was copied.
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        } {
            Ok(n) => n,
            Err(Errno::INTR | Errno::CONNRESET) => continue,
            Err(e) => return Err(e),
        };
        let with_bytes = msgs[..n as usize].iter().filter(|m| m.msg_len > 0).count();
        // Only empty records, or the end of the stream: if no byte is left either, the
        // records the caller peeked are gone (another holder of the socket took them).
        if with_bytes == 0 && rustix::io::ioctl_fionread(fd)? == 0 {
            return Err(Errno::PIPE);
        }
        done += with_bytes;
    }
    Ok(())
}

/// Sets `SO_PEEK_OFF`: 0 enables stepping peeks (and restarts them at the head after a
/// batch that left peeked records queued).
pub(crate) fn set_peek_off(fd: BorrowedFd<'_>, off: i32) -> Result<(), Errno> {
    // SAFETY: SO_PEEK_OFF takes an int; `off` lives for the call.
    unsafe {
        super::raw::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&off as *const i32).cast(),
            std::mem::size_of::<i32>() as _,
        )
    }
    .map(drop)
}
