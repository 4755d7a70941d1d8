//! Loss-free, batched receiving of `SCM_RIGHTS` records from a Unix `SOCK_SEQPACKET`
//! socket, shared by the session endpoint and the channel.
//!
//! A record is peeked first: the kernel installs copies of its descriptors and keeps the
//! record queued, so a full descriptor table never destroys a socket (a plain receive would
//! close what does not fit). With `SO_PEEK_OFF` each peek moves past the record before it,
//! so one `recvmmsg(MSG_PEEK)` peeks many records, and one more `recvmmsg` with no room for
//! descriptors consumes those the caller kept (the kernel drops its references; the copies
//! remain). Two system calls per batch instead of two per record.
//!
//! `ECONNRESET` is not an error here: Linux reports it once, on the next receive, when the
//! peer closed with records of its own unread, and ahead of whatever is still queued on
//! this side (then end of file). Both calls go on after it, so a queued socket is never
//! mistaken for a closed connection, and a consume cut short by it is finished.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

/// Records one peek takes at most.
pub(super) const MAX_RECORDS: usize = 32;

/// What a peek gave for one record, beside its bytes.
pub(super) struct Meta {
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
pub(super) struct Batch {
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
    pub(super) fn new(records: usize, record_cap: usize, max_fds: usize, creds: bool) -> Batch {
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

    /// The bytes of record `i` of the last peek.
    pub(super) fn record(&self, i: usize, meta: &Meta) -> &[u8] {
        let start = i * (self.record_cap + 1);
        &self.bytes[start..start + meta.len.min(self.record_cap + 1)]
    }

    /// Peeks up to the batch's size of records, each past the one before it (the socket
    /// needs `SO_PEEK_OFF`, left at the head by the last `consume`). Blocks for the first
    /// when `wait`; an empty `Vec` means nothing is queued. `Err(PIPE)` when the peer has
    /// closed and nothing is left.
    pub(super) fn peek(&mut self, fd: BorrowedFd<'_>, wait: bool) -> Result<Vec<Meta>, Errno> {
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
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    count as _,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            match last_errno() {
                Errno::INTR | Errno::CONNRESET => {}
                Errno::AGAIN if !wait => return Ok(Vec::new()),
                e => return Err(e),
            }
        };
        let mut out = Vec::with_capacity(n);
        let mut ended = false;
        for m in msgs.iter().take(n) {
            // SAFETY: the kernel filled this header's control buffer with `msg_controllen`
            // bytes of well-formed cmsgs.
            let meta = unsafe { read_meta(m) };
            // Read even past the end: the kernel installed copies of every peeked
            // record's descriptors, and dropping `meta` closes them.
            if ended {
                continue;
            }
            if meta.len == 0 && meta.fds.is_empty() && meta.uid.is_none() {
                // A zero-length read with nothing attached: the peer closed its end.
                ended = true;
                continue;
            }
            out.push(meta);
        }
        if ended && out.is_empty() {
            return Err(Errno::PIPE);
        }
        Ok(out)
    }
}

/// Reads one peeked record's length, descriptors and credentials.
///
/// # Safety
/// `m` must be a header `recvmmsg` just filled, its control buffer still alive.
unsafe fn read_meta(m: &libc::mmsghdr) -> Meta {
    let mut meta = Meta {
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

/// Ends a batch of `peeked` records: consumes the first `taken` from the head of the
/// queue without taking their descriptors (the kernel drops its references; the peeked
/// copies are what the caller keeps), and, when some peeked records stay queued, moves
/// the peek offset back to the head, since it has stepped past them.
pub(super) fn consume(fd: BorrowedFd<'_>, taken: usize, peeked: usize) -> Result<(), Errno> {
    consume_records(fd, taken)?;
    if taken < peeked {
        set_peek_off(fd, 0)?;
    }
    Ok(())
}

fn consume_records(fd: BorrowedFd<'_>, count: usize) -> Result<(), Errno> {
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header (no iov, no
    // control), so each record is consumed whole (seqpacket) and truncated to nothing.
    let mut msgs: [libc::mmsghdr; MAX_RECORDS] = unsafe { std::mem::zeroed() };
    let count = count.min(MAX_RECORDS);
    let mut done = 0;
    while done < count {
        // SAFETY: `msgs[done..]` are empty headers (no iov, no control) owned by us.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (count - done) as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        match last_errno() {
            Errno::INTR | Errno::CONNRESET => {}
            e => return Err(e),
        }
    }
    Ok(())
}

/// Sets `SO_PEEK_OFF`: 0 enables stepping peeks (and restarts them at the head after a
/// batch that left peeked records queued).
pub(super) fn set_peek_off(fd: BorrowedFd<'_>, off: i32) -> Result<(), Errno> {
    // SAFETY: SO_PEEK_OFF takes an int; `off` lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&off as *const i32).cast(),
            std::mem::size_of::<i32>() as _,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}
