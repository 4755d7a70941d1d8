//! Winsock-compatible C interface to sockshare: `libws2_32.so` / `libws2_32.a` and
//! `include/winsock2.h`.
//!
//! C code written for Windows' socket sharing builds on Linux unchanged in its sharing
//! logic:
//!
//! ```sh
//! cargo build --release -p ws2_32
//! cc app.c -Icrates/ws2_32/include -Ltarget/release -lws2_32 -Wl,-rpath,$PWD/target/release
//! ```
//!
//! or, installed with `crates/ws2_32/install.sh --prefix DIR` (header, both libraries and
//! `ws2_32.pc`), `cc app.c $(pkg-config --cflags --libs ws2_32)`.
//!
//! Every function is a thin shell over the `sockshare` crate, so C and Rust exchange the
//! same info bytes: a C source can hand a socket to a Rust target and back.
//!
//! | function | what it does here |
//! |----------|-------------------|
//! | [`WSAStartup`] | versions 1.0 to 2.2 (higher requests get 2.2); each successful call holds one `sockshare::Session` |
//! | [`WSACleanup`] | releases one; the last closes the sockets `WSASocket` made in this process, ends the session (pending infos are released) and closes the connections kept to targets |
//! | [`WSADuplicateSocketA`]/[`W`](WSADuplicateSocketW) | `sockshare::duplicate`, checks in Windows' order: socket (`WSAENOTSOCK`), pid (`WSAEINVAL`), pointer (`WSAEFAULT`) |
//! | [`WSASocketA`]/[`W`](WSASocketW) | with an info: `Session::redeem`; without: `socket(af, type, protocol)` |
//! | [`closesocket`], [`ioctlsocket`] | `close`, and `FIONBIO`/`FIONREAD` |
//! | [`WSAGetLastError`], [`WSASetLastError`] | per thread, also after a failed BSD call (`send`, `connect`, ...: its `errno` translated); a successful call of this library leaves it untouched, as on Windows |
//!
//! Before `WSAStartup` and after the last `WSACleanup`, every function but the three
//! above that need no session (`WSAStartup`, `WSAGetLastError`, `WSASetLastError`) fails
//! with `WSANOTINITIALISED`. A process created by `fork` (or glibc's `_Fork`) does not
//! inherit its parent's initialisation (the session belongs to the parent): it calls
//! `WSAStartup` itself.
//!
//! # Locks and fork
//!
//! The C layer has one lock, the mutex of this process's state (its session handles and
//! the sockets `WSASocket` made). Lock order: the C layer's lock first, then the core's
//! (`Session::new`, `redeem` and a session's drop run under it); the core never calls
//! back into this crate, so no thread takes them the other way round.
//!
//! The state lives behind a pointer in a page the kernel zero-fills in every child
//! (`MADV_WIPEONFORK`, Linux 4.14): a child, however it was forked, finds no state,
//! makes a fresh one, and never touches its parent's lock, which a thread that does not
//! exist in the child may have held at the fork, nor its parent's data. Finding out costs
//! one atomic load per call, no system call. This is why the C layer registers no
//! `pthread_atfork` handler: it would only make `fork` wait for the threads inside this
//! library, it would run under `fork` but not under `_Fork`, and one registered before
//! the core's would run its prepare step after the core's (glibc runs prepare steps in
//! reverse order of registration), inverting the lock order above. The core's handlers
//! (`crates/sockshare/src/sys/linux/fork.rs`, which gives the lock order of the whole
//! project) take only the core's locks: a thread that
//! holds the C lock and waits for one of them while another thread forks just waits
//! until the fork returns, and the forking thread waits for nothing of the C layer, so
//! the two cannot deadlock.
//!
//! Without the core's handlers (`_Fork`), the core's own state in the child is its
//! parent's: the child's `WSAStartup` joins the parent's session record, so the child
//! can create, use and close sockets, but must neither be a target (its session is the
//! parent's) nor duplicate (the core would reuse its parent's connections and its
//! parent's pool of random tokens) until the core detects such a child itself. After `_Fork` in a multi-threaded program only async-signal-safe functions
//! may be called, as glibc says; this library's functions are not among them.
//!
//! `WSAENETDOWN` is reported for an unexpected operating-system error (or a bug caught
//! at the boundary: nothing panics across it); `WSAEINPROGRESS` never occurs on Linux.

#![warn(missing_docs)]
// The exported functions keep Windows' parameter names, so the docs read like Microsoft's.
#![allow(non_snake_case)]

mod last_error;
pub mod types;

use std::ffi::{c_int, c_long, c_ulong};
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use sockshare::{ProtocolInfo, Session, INFO_A_SIZE, INFO_W_SIZE};

pub use last_error::{WSAGetLastError, WSASetLastError};
pub use types::*;

use last_error::{errno, set_errno, set_last_error, wsa_from_errno};

/// What `WSAStartup` set up in this process.
struct State {
    /// One session handle per successful `WSAStartup` not yet matched by `WSACleanup`.
    sessions: Vec<Session>,
    /// Indexed by descriptor number: the [`cookie`] of the socket `WSASocket` returned
    /// there and `closesocket` has not closed, 0 for none. The last `WSACleanup` closes
    /// only a number that still holds that socket, never one the program closed with
    /// `close` and reused for something else. A table indexed by number, like the
    /// kernel's own, makes the bookkeeping of a handoff two stores (`WSASocket`'s and
    /// `closesocket`'s), at 8 bytes per number up to the highest socket `WSASocket`
    /// returned. Empty whenever `sessions` is.
    sockets: Vec<u64>,
}

/// The page whose first word points to this process's state. The kernel fills the page
/// with zeros in every child (`MADV_WIPEONFORK`), whether `fork` ran the atfork handlers
/// or `_Fork` did not, so a child finds no state and makes its own: it starts
/// uninitialised without touching its parent's lock, which a thread the child does not
/// have may have held at the fork, nor its parent's data, which such a thread may have
/// been changing. Null until the first call maps the page.
static HOME: AtomicPtr<AtomicPtr<Mutex<State>>> = AtomicPtr::new(std::ptr::null_mut());

/// The wipe-on-fork slot of this process's state, or `None` when the page cannot be
/// mapped (out of memory, or a kernel older than 4.14 without `MADV_WIPEONFORK`). No lock
/// and no `Once`: a fork may happen in the middle of this, and the child must not inherit
/// a half-finished initialisation it would wait for.
fn home() -> Option<&'static AtomicPtr<Mutex<State>>> {
    let mut page = HOME.load(Ordering::Acquire);
    if page.is_null() {
        // The core maps it (one place for the backend's raw calls and fork handling).
        let new = sockshare::wipe_on_fork_page()?.as_ptr().cast();
        page = match HOME.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => new,
            // Another thread installed its page first; this one (4 KiB, once) is left
            // unused.
            Err(first) => first,
        };
    }
    // SAFETY: the page is mapped for the life of the process (and of its children, where
    // it reads as zeros: a null pointer), page-aligned, and written only through atomics.
    Some(unsafe { &*page })
}

/// Locks this process's state, making it on the first call in each process. Without a
/// [`home`] page nothing can start: `WSANOTINITIALISED`.
fn state() -> Result<MutexGuard<'static, State>, i32> {
    let slot = home().ok_or(WSANOTINITIALISED)?;
    let mut current = slot.load(Ordering::Acquire);
    if current.is_null() {
        let fresh = Box::into_raw(Box::new(Mutex::new(State {
            sessions: Vec::new(),
            sockets: Vec::new(),
        })));
        current = match slot.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(first) => {
                // SAFETY: `fresh` came from Box::into_raw above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                first
            }
        };
    }
    // SAFETY: a state, once in the slot, is never freed: a parent's lives for the process,
    // and a child leaks its inherited copy (dropping the parent's session handles there
    // could end the session the parent still runs, and join its thread, which the child
    // does not have).
    let state = unsafe { &*current };
    // A panic while holding the lock is caught at the boundary; the state stays coherent
    // (each change is one push, pop or insert), so a poisoned lock is still usable.
    Ok(state.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs an exported function's body, turning a panic into a Winsock failure: unwinding
/// into C is undefined behaviour, and a C caller can act on an error code. `errno` is
/// given back as the caller had it, whatever the body's system calls (or a contended
/// lock's futex) did to it: a success leaves the last error alone, and a failure then
/// sets it with `set_last_error`.
fn boundary<T>(body: impl FnOnce() -> Result<T, i32>) -> Result<T, i32> {
    let saved = errno();
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(WSAENETDOWN));
    set_errno(saved);
    result
}

/// The return value of a function returning `int`: 0, or `SOCKET_ERROR` with the code
/// stored for `WSAGetLastError`.
fn int_result(result: Result<(), i32>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(code) => {
            set_last_error(code);
            SOCKET_ERROR
        }
    }
}

/// The session handle of the latest `WSAStartup`, or `WSANOTINITIALISED`.
fn require_started(st: &State) -> Result<&Session, i32> {
    st.sessions.last().ok_or(WSANOTINITIALISED)
}

fn started() -> Result<(), i32> {
    require_started(&*state()?).map(drop)
}

/// The Winsock code for the `errno` of a system call this library made (through rustix or
/// socket2, which return it) that failed outside the sharing machinery; `WSAENETDOWN` for
/// one Winsock has no code for.
fn failure(e: impl Into<std::io::Error>) -> i32 {
    e.into()
        .raw_os_error()
        .and_then(wsa_from_errno)
        .unwrap_or(WSAENETDOWN)
}

/// The descriptor number in a `SOCKET`: values that are none (`INVALID_SOCKET`, anything
/// above `INT_MAX`) are `WSAENOTSOCK` without a system call.
fn descriptor(s: SOCKET) -> Result<RawFd, i32> {
    RawFd::try_from(s).map_err(|_| WSAENOTSOCK)
}

/// The descriptor in a `SOCKET`, if it is an open socket.
fn socket_fd(s: SOCKET) -> Result<RawFd, i32> {
    let fd = descriptor(s)?;
    cookie(fd).map(|_| fd)
}

/// The socket cookie of descriptor `fd` (`getsockopt(SO_COOKIE)`): the kernel's number
/// for the socket, unique for the life of the system (never reused, never 0), so it tells
/// the socket `WSASocket` returned from any later occupant of its number. It also answers
/// whether `fd` is an open socket (`EBADF`, `ENOTSOCK`), in the same one system call.
fn cookie(fd: RawFd) -> Result<u64, i32> {
    // SAFETY: the number is only read by the kernel for the call, which fails with EBADF
    // or ENOTSOCK when it is not an open socket; nothing is closed or kept.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::net::sockopt::socket_cookie(fd).map_err(failure)
}

/// The body of `WSADuplicateSocketA`/`W`: `T` is the info struct, `N` its size, and
/// `to_bytes` makes an info in that form.
///
/// # Safety
///
/// `out` is NULL or points to memory writable for a `T`.
unsafe fn duplicate_socket<T, const N: usize>(
    s: SOCKET,
    pid: DWORD,
    out: *mut T,
    to_bytes: fn(&ProtocolInfo) -> [u8; N],
) -> c_int {
    const { assert!(std::mem::size_of::<T>() == N) };
    int_result(boundary(|| {
        started()?;
        if out.is_null() {
            // Windows checks the pointer last: the socket and then a bad pid are reported
            // before it, and nothing is shared (no socket waits in the target for an info
            // never written).
            socket_fd(s)?;
            sockshare::probe_target(pid).map_err(|e| e.code())?;
            return Err(WSAEFAULT);
        }
        let fd = descriptor(s)?;
        // SAFETY: `fd` is a descriptor number (0..=INT_MAX, never -1). The core's first
        // use of it is reading the socket's kind (getsockopt), which fails with
        // WSAENOTSOCK, before anything else, for a number that is not an open socket:
        // the same check and code as `socket_fd`, made once instead of twice on the
        // handoff path (the source's system calls bound the C interface's throughput).
        // An open socket stays open during this call unless the caller closes it from
        // another thread meanwhile, a race the caller owns here as with any descriptor
        // (and on Windows), with or without a check before the borrow.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let info = sockshare::duplicate(borrowed, pid).map_err(|e| e.code())?;
        let bytes = to_bytes(&info);
        // SAFETY: `out` is not NULL, so the caller guarantees it is writable for a `T`,
        // which is N bytes (asserted at compile time above); write_unaligned needs no
        // alignment.
        unsafe { out.cast::<[u8; N]>().write_unaligned(bytes) };
        Ok(())
    }))
}

/// `WSADuplicateSocketA`: makes the info (372 bytes, `WSAPROTOCOL_INFOA`) with which
/// process `dwProcessId` creates its own descriptor for socket `s` with `WSASocketA`
/// (or, after converting it, `WSASocketW`). From this moment the target holds the
/// socket: `s` may be closed at once.
///
/// Returns 0, or `SOCKET_ERROR` with `WSANOTINITIALISED`, `WSAENOTSOCK` (not an open
/// socket), `WSAEINVAL` (no such process, or it refuses this process: its session's
/// policy, or without a session, neither its user nor root), `WSAEFAULT`
/// (`lpProtocolInfo` NULL), `WSAENOBUFS` (the target's queue of unredeemed infos is
/// full), in that order. The target needs no session yet (S18).
///
/// # Safety
///
/// `lpProtocolInfo` is NULL or points to memory writable for a `WSAPROTOCOL_INFOA`.
#[no_mangle]
pub unsafe extern "C" fn WSADuplicateSocketA(
    s: SOCKET,
    dwProcessId: DWORD,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOA,
) -> c_int {
    // SAFETY: the caller keeps `duplicate_socket`'s contract, which is this function's.
    unsafe { duplicate_socket(s, dwProcessId, lpProtocolInfo, ProtocolInfo::to_bytes_a) }
}

/// `WSADuplicateSocketW`: as [`WSADuplicateSocketA`], writing the 628-byte
/// `WSAPROTOCOL_INFOW` (the form Rust's `ProtocolInfo::to_bytes_w` produces).
///
/// # Safety
///
/// `lpProtocolInfo` is NULL or points to memory writable for a `WSAPROTOCOL_INFOW`.
#[no_mangle]
pub unsafe extern "C" fn WSADuplicateSocketW(
    s: SOCKET,
    dwProcessId: DWORD,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOW,
) -> c_int {
    // SAFETY: the caller keeps `duplicate_socket`'s contract, which is this function's.
    unsafe { duplicate_socket(s, dwProcessId, lpProtocolInfo, ProtocolInfo::to_bytes_w) }
}

/// An af/type/protocol argument agrees with the info's value (S13).
fn matches_info(arg: c_int, value: i32) -> bool {
    arg == FROM_PROTOCOL_INFO || arg == 0 || arg == value
}

/// The body of `WSASocketA`/`W`: `T` is the info struct and `N` its size.
///
/// # Safety
///
/// `info` is NULL or points to a readable, initialised `T` without padding.
unsafe fn create_socket<T, const N: usize>(
    af: c_int,
    ty: c_int,
    protocol: c_int,
    info: *const T,
    g: GROUP,
    flags: DWORD,
) -> SOCKET {
    const { assert!(std::mem::size_of::<T>() == N) };
    // SAFETY: per the contract `info` is NULL (None) or readable for a `T`, which is N
    // initialised bytes (asserted at compile time above; no padding); a byte array needs
    // no alignment. Nothing may write it during the call: a write then would race with
    // the read, copied or not. Borrowed rather than copied, because the copy, moved into
    // the closure below, cost 140 instructions a call.
    let info = unsafe { info.cast::<[u8; N]>().as_ref() };
    let result = boundary(|| {
        let mut st = state()?;
        let session = require_started(&st)?;
        if flags & !(WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT) != 0 || g != 0 {
            return Err(WSAEINVAL);
        }
        let inherit = flags & WSA_FLAG_NO_HANDLE_INHERIT == 0;
        let fd = match info {
            Some(bytes) => {
                let info = ProtocolInfo::from_bytes(bytes).map_err(|e| e.code())?;
                // Checked before redeeming, so a wrong call leaves the info usable.
                if !matches_info(af, info.address_family())
                    || !matches_info(ty, info.socket_type())
                    || !matches_info(protocol, info.protocol())
                {
                    return Err(WSAEINVAL);
                }
                let fd = session.redeem(&info).map_err(|e| e.code())?.into_owned_fd();
                if inherit {
                    // The core hands out close-on-exec descriptors; Windows' handles are
                    // inheritable unless WSA_FLAG_NO_HANDLE_INHERIT is given.
                    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).map_err(failure)?;
                }
                fd.into_raw_fd()
            }
            None => {
                if af == FROM_PROTOCOL_INFO || ty == FROM_PROTOCOL_INFO {
                    return Err(WSAEINVAL);
                }
                let ty = if inherit { ty } else { ty | libc::SOCK_CLOEXEC };
                // socket(af, type, protocol) as given, flags included; the caller owns the
                // descriptor through the SOCKET.
                let protocol = (protocol != 0).then(|| socket2::Protocol::from(protocol));
                socket2::Socket::new_raw(af.into(), ty.into(), protocol)
                    .map_err(failure)?
                    .into_raw_fd()
            }
        };
        // A socket without a cookie (a kernel before 4.12) is not tracked: WSACleanup
        // could not tell it from a later occupant of its number.
        if let Ok(id) = cookie(fd) {
            let slot = fd as usize;
            if st.sockets.len() <= slot {
                st.sockets.resize(slot + 1, 0);
            }
            st.sockets[slot] = id;
        }
        Ok(fd as SOCKET)
    });
    result.unwrap_or_else(|code| {
        set_last_error(code);
        INVALID_SOCKET
    })
}

/// `WSASocketA`: with `lpProtocolInfo`, creates this process's descriptor for a shared
/// socket (once per info; only in the process it was made for); with NULL, an ordinary
/// `socket(af, type, protocol)`.
///
/// With an info, `af`, `type` and `protocol` must each be `FROM_PROTOCOL_INFO`, 0, or the
/// info's value. `dwFlags`: `WSA_FLAG_OVERLAPPED` is accepted (no effect);
/// `WSA_FLAG_NO_HANDLE_INHERIT` makes the descriptor close-on-exec (otherwise it is
/// inherited across exec, like a Windows handle). `g` must be 0.
///
/// Returns the socket, or `INVALID_SOCKET` with `WSANOTINITIALISED`, `WSAEINVAL` (a used,
/// foreign, forged or damaged info, arguments that disagree with it, unknown flags),
/// `WSAEMFILE` (out of descriptors: the info stays valid), or the error of `socket`.
///
/// # Safety
///
/// `lpProtocolInfo` is NULL or points to a readable, initialised `WSAPROTOCOL_INFOA`.
#[no_mangle]
pub unsafe extern "C" fn WSASocketA(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: *const WSAPROTOCOL_INFOA,
    g: GROUP,
    dwFlags: DWORD,
) -> SOCKET {
    // SAFETY: the caller keeps `create_socket`'s contract, which is this function's
    // (WSAPROTOCOL_INFOA has no padding).
    unsafe { create_socket::<_, INFO_A_SIZE>(af, r#type, protocol, lpProtocolInfo, g, dwFlags) }
}

/// `WSASocketW`: as [`WSASocketA`], reading a 628-byte `WSAPROTOCOL_INFOW` (the form
/// Rust's `ProtocolInfo::to_bytes_w` produces).
///
/// # Safety
///
/// `lpProtocolInfo` is NULL or points to a readable, initialised `WSAPROTOCOL_INFOW`.
#[no_mangle]
pub unsafe extern "C" fn WSASocketW(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: *const WSAPROTOCOL_INFOW,
    g: GROUP,
    dwFlags: DWORD,
) -> SOCKET {
    // SAFETY: the caller keeps `create_socket`'s contract, which is this function's
    // (WSAPROTOCOL_INFOW has no padding).
    unsafe { create_socket::<_, INFO_W_SIZE>(af, r#type, protocol, lpProtocolInfo, g, dwFlags) }
}

/// `closesocket`: closes the descriptor. The underlying socket closes when its last
/// descriptor, in any process, closes.
///
/// A number that is not a socket `WSASocketA/W` returned (and `closesocket` has not yet
/// closed) is checked first (`getsockopt`): one that is not an open socket is left alone
/// and reported. A number `WSASocket` returned is closed without that check, which is one
/// system call of the three a shared socket's `WSASocket` and `closesocket` cost. The
/// difference shows only in a program that closed such a socket with `close(2)` itself
/// and then calls `closesocket` on the reused number: the number's new occupant is
/// closed, as a second `close(2)` would, where Windows (which has no `close` for
/// sockets) reports `WSAENOTSOCK` for a non-socket.
///
/// Returns 0, or `SOCKET_ERROR` with `WSANOTINITIALISED` or `WSAENOTSOCK`.
#[no_mangle]
pub extern "C" fn closesocket(s: SOCKET) -> c_int {
    int_result(boundary(|| {
        let mut st = state()?;
        require_started(&st)?;
        let fd = descriptor(s)?;
        match st.sockets.get_mut(fd as usize) {
            Some(id) if *id != 0 => *id = 0,
            _ => {
                socket_fd(s)?;
            }
        }
        // SAFETY: the caller hands the descriptor over to be closed, as with close(2);
        // it is an open socket: WSASocket's (the table says so), or checked above.
        if unsafe { libc::close(fd) } != 0 && errno() == libc::EBADF {
            // A WSASocket number the program closed behind the library's back, and not
            // reused. (Linux releases the descriptor even when close reports EINTR: no
            // other result carries anything to act on.)
            return Err(WSAENOTSOCK);
        }
        Ok(())
    }))
}

/// `ioctlsocket`: `FIONBIO` (`*argp` nonzero: nonblocking, which every descriptor of a
/// shared socket sees) and `FIONREAD` (bytes readable, stored in `*argp`). Both Linux's
/// numbers (what the header gives) and Windows' are accepted.
///
/// Returns 0, or `SOCKET_ERROR` with `WSANOTINITIALISED`, `WSAENOTSOCK`, `WSAEINVAL`
/// (another command), `WSAEFAULT` (`argp` NULL).
///
/// # Safety
///
/// `argp` is NULL or points to a readable and writable `unsigned long` (`u_long`).
#[no_mangle]
pub unsafe extern "C" fn ioctlsocket(s: SOCKET, cmd: c_long, argp: *mut c_ulong) -> c_int {
    int_result(boundary(|| {
        started()?;
        let fd = socket_fd(s)?;
        // Windows' numbers arrive sign-extended from its 32-bit long; compare 32 bits.
        let windows = cmd as u32;
        let fionbio = cmd as c_ulong == libc::FIONBIO as c_ulong || windows == WINDOWS_FIONBIO;
        let fionread = cmd as c_ulong == libc::FIONREAD as c_ulong || windows == WINDOWS_FIONREAD;
        if !fionbio && !fionread {
            return Err(WSAEINVAL);
        }
        if argp.is_null() {
            return Err(WSAEFAULT);
        }
        // SAFETY: `socket_fd` found the number an open socket; it is only used for the
        // call, and the program, which owns it, cannot close it during this call without
        // racing itself.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if fionbio {
            // SAFETY: the caller guarantees `argp` is readable.
            let on = unsafe { argp.read_unaligned() } != 0;
            rustix::io::ioctl_fionbio(fd, on).map_err(failure)?;
        } else {
            let readable = rustix::io::ioctl_fionread(fd).map_err(failure)?;
            // SAFETY: the caller guarantees `argp` is writable.
            unsafe { argp.write_unaligned(readable as c_ulong) };
        }
        Ok(())
    }))
}

const HIGH_VERSION: WORD = 0x0202;

fn fill_wsadata(data: *mut WSADATA, version: WORD) {
    let mut out = WSADATA {
        wVersion: version,
        wHighVersion: HIGH_VERSION,
        iMaxSockets: 0,
        iMaxUdpDg: 0,
        lpVendorInfo: std::ptr::null_mut(),
        szDescription: [0; DESCRIPTION_LEN + 1],
        szSystemStatus: [0; SYS_STATUS_LEN + 1],
    };
    for (dst, src) in out
        .szDescription
        .iter_mut()
        .zip(b"WinSock 2.2 (sockshare on Linux)")
    {
        *dst = *src as std::ffi::c_char;
    }
    for (dst, src) in out.szSystemStatus.iter_mut().zip(b"Running") {
        *dst = *src as std::ffi::c_char;
    }
    // SAFETY: the caller of WSAStartup guarantees `data` is writable for a WSADATA.
    unsafe { data.write_unaligned(out) };
}

/// `WSAStartup`: starts using this library (and, the first time, this process's sharing
/// session, so sources may duplicate sockets for it). Reference counted: each successful
/// call needs one [`WSACleanup`].
///
/// `wVersionRequested` is `MAKEWORD(major, minor)`: 1.0 to 2.2 are granted as asked,
/// higher requests get 2.2. Returns 0 or the error itself (not through
/// `WSAGetLastError`, as on Windows): `WSAVERNOTSUPPORTED` below 1.0, `WSAEFAULT` for a
/// NULL `lpWSAData`, `WSASYSNOTREADY` when the session cannot start.
///
/// # Safety
///
/// `lpWSAData` is NULL or points to memory writable for a `WSADATA`.
#[no_mangle]
pub unsafe extern "C" fn WSAStartup(wVersionRequested: WORD, lpWSAData: *mut WSADATA) -> c_int {
    let result = boundary(|| {
        let [major, minor] = wVersionRequested.to_le_bytes();
        if major == 0 {
            if !lpWSAData.is_null() {
                fill_wsadata(lpWSAData, HIGH_VERSION);
            }
            return Err(WSAVERNOTSUPPORTED);
        }
        if lpWSAData.is_null() {
            return Err(WSAEFAULT);
        }
        let version = if (major, minor) > (2, 2) {
            HIGH_VERSION
        } else {
            wVersionRequested
        };
        let mut st = state().map_err(|_| WSASYSNOTREADY)?;
        let session = Session::new().map_err(|_| WSASYSNOTREADY)?;
        st.sessions.push(session);
        fill_wsadata(lpWSAData, version);
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(WSAENETDOWN) => WSASYSNOTREADY,
        Err(code) => code,
    }
}

/// `WSACleanup`: ends one [`WSAStartup`]. The last one closes every socket
/// `WSASocketA/W` created in this process that is still open (`closesocket` forgets a
/// socket), ends the sharing session (sockets pending for infos never redeemed are
/// released) and closes the connections this process kept to targets.
///
/// Returns 0, or `SOCKET_ERROR` with `WSANOTINITIALISED`.
#[no_mangle]
pub extern "C" fn WSACleanup() -> c_int {
    int_result(boundary(|| {
        let mut st = state()?;
        require_started(&st)?;
        if st.sessions.len() == 1 {
            for (fd, id) in std::mem::take(&mut st.sockets).into_iter().enumerate() {
                // Slots exist only up to a descriptor number, so `fd` fits a RawFd.
                let fd = fd as RawFd;
                if id != 0 && cookie(fd) == Ok(id) {
                    // SAFETY: `fd` still holds the socket WSASocket created (same
                    // cookie), and the program's last WSACleanup ends its use, as on
                    // Windows.
                    unsafe { libc::close(fd) };
                }
            }
            sockshare::disconnect_all();
        }
        // The last handle ends the core's session (unless Rust code in this process holds
        // one of its own).
        st.sessions.pop();
        Ok(())
    }))
}
