//! The backend's raw libc calls, fenced in one module: each a thin `unsafe fn` with the
//! libc function's own contract, returning a call's failure as the `errno` it set
//! ([`Errno`]), read in one place and only after the call returned -1 (socket2's
//! `syscall!`). Everything else in the backend goes through rustix; these are the calls
//! it does not wrap in the form needed: `recvmmsg` with `MSG_TRUNC`, peer credentials and
//! pidfds by raw `getsockopt`, a `clone` that runs no fork handler, and the setup of a
//! fresh keeper process (signal dispositions, `close_range`), which must stay
//! async-signal-safe.
//!
//! A caller's `unsafe` block and its `SAFETY` comment say why its arguments keep the
//! contract.

use std::ffi::{c_int, c_long, c_uint, c_void};

use rustix::io::Errno;

/// Calls `libc::$fn` and turns its -1 into the `errno` it set.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
        if res == -1 {
            Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
        } else {
            Ok(res)
        }
    }};
}

/// recvmmsg(2).
///
/// # Safety
///
/// `msgs` points to `n` initialised headers whose buffers are valid for the kernel's
/// writes for the call.
pub(super) unsafe fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: c_uint,
    flags: c_int,
) -> Result<c_int, Errno> {
    syscall!(recvmmsg(fd, msgs, n, flags, std::ptr::null_mut()))
}

/// One control message of a record [`recv_one`] received: level, type, and its data.
pub(super) struct Cmsg {
    pub(super) level: c_int,
    pub(super) ty: c_int,
    data: *const u8,
    len: usize,
}

impl Cmsg {
    /// The data as `T`s, read unaligned (`SCM_RIGHTS`: descriptors; `SCM_CREDENTIALS`: a
    /// `ucred`). Plain-data `T` only.
    pub(super) fn items<T: Copy>(&self) -> impl Iterator<Item = T> + '_ {
        let size = std::mem::size_of::<T>();
        // SAFETY: the kernel wrote `len` bytes of data at `data`, inside the control
        // buffer the caller of `recv_one` still holds while it walks these messages.
        (0..self.len / size)
            .map(move |k| unsafe { self.data.add(k * size).cast::<T>().read_unaligned() })
    }
}

/// recvmsg(2) of one record into `buf`, with room for control messages in `control`,
/// calling `each` for every control message received (descriptors arrive close-on-exec;
/// whatever `each` does not keep is its to close). Returns the record's length and the
/// message flags (`MSG_TRUNC`, `MSG_CTRUNC`). Allocates nothing: async-signal-safe.
pub(super) fn recv_one(
    fd: c_int,
    buf: &mut [u8],
    control: &mut [u64],
    flags: c_int,
    mut each: impl FnMut(&Cmsg),
) -> Result<(usize, c_int), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    let n = loop {
        // SAFETY: the iovec and the control buffer point into live, exclusively borrowed
        // buffers of the sizes given.
        match unsafe { syscall!(recvmsg(fd, &mut msg, flags | libc::MSG_CMSG_CLOEXEC)) } {
            Err(Errno::INTR) => continue,
            other => break other? as usize,
        }
    };
    // SAFETY: the kernel filled the control buffer with `msg_controllen` bytes of
    // well-formed cmsgs; the macros stay inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            each(&Cmsg {
                level: (*c).cmsg_level,
                ty: (*c).cmsg_type,
                data: libc::CMSG_DATA(c),
                len: (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize,
            });
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, msg.msg_flags))
}

/// sendmsg(2).
///
/// # Safety
///
/// `msg`'s buffers are valid for reads for the call; descriptors in its control data are
/// open.
pub(super) unsafe fn sendmsg(
    fd: c_int,
    msg: *const libc::msghdr,
    flags: c_int,
) -> Result<isize, Errno> {
    syscall!(sendmsg(fd, msg, flags))
}

/// getsockopt(2).
///
/// # Safety
///
/// `value` is valid for writes of `*len` bytes and `len` for a read and a write.
pub(super) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut libc::socklen_t,
) -> Result<(), Errno> {
    syscall!(getsockopt(fd, level, name, value, len)).map(drop)
}

/// setsockopt(2).
///
/// # Safety
///
/// `value` is valid for reads of `len` bytes.
pub(super) unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: libc::socklen_t,
) -> Result<(), Errno> {
    syscall!(setsockopt(fd, level, name, value, len)).map(drop)
}

/// poll(2).
///
/// # Safety
///
/// `fds` points to `n` pollfd structures valid for reads and writes.
pub(super) unsafe fn poll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
) -> Result<c_int, Errno> {
    syscall!(poll(fds, n, timeout))
}

/// madvise(2).
///
/// # Safety
///
/// `addr..addr + len` is a mapping of this process that the advice may change.
pub(super) unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> Result<(), Errno> {
    syscall!(madvise(addr, len, advice)).map(drop)
}

/// A private anonymous read-write mapping of `len` bytes (mmap(2)), at an address the
/// kernel picks, or `None`.
pub(super) fn map_anonymous(len: usize) -> Option<*mut c_void> {
    // SAFETY: a fresh private anonymous mapping, at an address the kernel picks, touches
    // no existing memory.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (addr != libc::MAP_FAILED).then_some(addr)
}

/// munmap(2).
///
/// # Safety
///
/// Nothing refers to the memory any more.
pub(super) unsafe fn munmap(addr: *mut c_void, len: usize) {
    libc::munmap(addr, len);
}

/// pthread_atfork(3): 0, or the error number it returns (ENOMEM).
pub(super) fn pthread_atfork(
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) -> c_int {
    // SAFETY: the handlers are `extern "C"` functions without arguments that live as long
    // as the program.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) }
}

/// A raw `clone` without `CLONE_VM` (a fork that runs no atfork handler), with
/// `exit_signal` (0: none): 0 in the child, the child's pid in the parent.
///
/// # Safety
///
/// The child may only make async-signal-safe calls before it execs or exits (it has one
/// thread, and locks held by the parent's other threads stay held).
pub(super) unsafe fn clone_process(exit_signal: c_int) -> Result<c_long, Errno> {
    syscall!(syscall(libc::SYS_clone, exit_signal as c_long, 0, 0, 0, 0))
}

/// waitpid(2) with `__WCLONE`, for a child made by [`clone_process`] without an exit
/// signal.
pub(super) fn wait_clone(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `status` is a writable int for the call.
    unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
}

/// _exit(2): leaves the process at once, running nothing of its program's.
pub(super) fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

/// In a fresh keeper process: a session of its own (setsid), the name `name`
/// (`PR_SET_NAME`), every signal at its default and none blocked. Async-signal-safe.
pub(super) fn become_daemon(name: &'static [u8]) {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: setsid, prctl with a static NUL-terminated name, and sigaction and
    // sigprocmask with structures on this stack are system calls that touch only what
    // they are given.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..libc::SIGRTMAX() {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Closes the descriptors `first..=last`: `close_range` (Linux 5.9), or one `close` each
/// up to the descriptor limit before it. Async-signal-safe.
///
/// # Safety
///
/// Nothing in this process owns (or will close) a number in the range.
pub(super) unsafe fn close_range(first: u32, last: u32) {
    if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
        return;
    }
    let mut limit: libc::rlimit = std::mem::zeroed();
    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    let end = last.min(
        u32::try_from(limit.rlim_cur)
            .unwrap_or(u32::MAX)
            .saturating_sub(1),
    );
    for fd in first..=end {
        libc::close(fd as c_int);
    }
}

/// close(2) of a number no `OwnedFd` will close: an inherited descriptor let go of in a
/// forked child (whose owner is leaked there), or one a received message installed.
///
/// # Safety
///
/// Nothing else owns `fd` or will close it.
pub(super) unsafe fn close(fd: c_int) {
    // Linux releases the number even when close reports EINTR; there is nothing to act on.
    libc::close(fd);
}
