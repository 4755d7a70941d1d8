//! `WSAGetLastError` for every socket call, the BSD ones included, without wrapping libc.
//!
//! Windows code reads the failure of `send`, `recv`, `connect`, ... with
//! `WSAGetLastError`, and on Linux those calls report through `errno`. So the thread's
//! last error is read from two places: the code this library last set (by a failure of
//! its own or by `WSASetLastError`), remembered with the `errno` value it left behind,
//! and `errno` itself. While `errno` still holds what the library left, nothing failed
//! since, and the library's code is the answer; once `errno` differs, a later call (a
//! BSD call, or any libc call) failed, and its `errno` is translated.
//!
//! The library keeps `errno` and its code in agreement: a failure, and
//! `WSASetLastError`, set `errno` to the Linux value whose translation is that code
//! (`WSAEINVAL`: `EINVAL`), or, for a code no Linux value translates to
//! (`WSANOTINITIALISED`, a program's own numbers), to [`NO_ERRNO`], which no libc call
//! sets. A successful call of this library leaves `errno`, and so the last error, as it
//! found them, as Windows leaves the last error on success.
//!
//! Limits, from `errno`'s rules: a successful libc call leaves `errno` alone, so the last
//! error stays that of the last failure (as on Windows); a failing libc call that is no
//! socket call (`open`, `malloc`) changes it too, and an `errno` no Winsock code stands
//! for is returned as it is (`ENOENT` is 2); a program that sets `errno = 0` clears it.

use std::cell::Cell;
use std::ffi::c_int;

use crate::types::*;

/// The `errno` left for a code no Linux `errno` translates to: outside every range libc
/// uses, so a later failing call always replaces it.
pub const NO_ERRNO: c_int = 0x5753_0000;

/// Linux `errno` to Winsock code. Winsock's numbers are 10000 plus BSD's `errno`, and
/// Linux numbers many of them differently, hence a table and no arithmetic. Where
/// several `errno`s share a code, the first is the one [`errno_for`] gives back.
const TABLE: &[(c_int, c_int)] = &[
    (libc::EINTR, WSAEINTR),
    (libc::EACCES, WSAEACCES),
    (libc::EPERM, WSAEACCES),
    (libc::EFAULT, WSAEFAULT),
    (libc::EINVAL, WSAEINVAL),
    (libc::ENOTTY, WSAEINVAL),
    (libc::EMFILE, WSAEMFILE),
    (libc::ENFILE, WSAEMFILE),
    (libc::EWOULDBLOCK, WSAEWOULDBLOCK),
    // A nonblocking connect under way: Windows reports it as WSAEWOULDBLOCK.
    (libc::EINPROGRESS, WSAEWOULDBLOCK),
    (libc::EALREADY, WSAEALREADY),
    (libc::ENOTSOCK, WSAENOTSOCK),
    // A SOCKET is a descriptor here: a closed one is "not a socket" to Windows code.
    (libc::EBADF, WSAENOTSOCK),
    (libc::EDESTADDRREQ, WSAEDESTADDRREQ),
    (libc::EMSGSIZE, WSAEMSGSIZE),
    (libc::EPROTOTYPE, WSAEPROTOTYPE),
    (libc::ENOPROTOOPT, WSAENOPROTOOPT),
    (libc::EPROTONOSUPPORT, WSAEPROTONOSUPPORT),
    (libc::ESOCKTNOSUPPORT, WSAESOCKTNOSUPPORT),
    (libc::EOPNOTSUPP, WSAEOPNOTSUPP),
    (libc::EPFNOSUPPORT, WSAEPFNOSUPPORT),
    (libc::EAFNOSUPPORT, WSAEAFNOSUPPORT),
    (libc::EADDRINUSE, WSAEADDRINUSE),
    (libc::EADDRNOTAVAIL, WSAEADDRNOTAVAIL),
    (libc::ENETDOWN, WSAENETDOWN),
    (libc::ENETUNREACH, WSAENETUNREACH),
    (libc::ENETRESET, WSAENETRESET),
    (libc::ECONNABORTED, WSAECONNABORTED),
    (libc::ECONNRESET, WSAECONNRESET),
    (libc::ENOBUFS, WSAENOBUFS),
    (libc::ENOMEM, WSAENOBUFS),
    (libc::EISCONN, WSAEISCONN),
    (libc::ENOTCONN, WSAENOTCONN),
    (libc::ESHUTDOWN, WSAESHUTDOWN),
    // Sending on a socket shut down for writing (or whose peer is gone): Windows says
    // WSAESHUTDOWN. Linux also fails a send on a stream never connected with EPIPE, where
    // Windows says WSAENOTCONN; the errno cannot tell the two apart.
    (libc::EPIPE, WSAESHUTDOWN),
    (libc::ETOOMANYREFS, WSAETOOMANYREFS),
    (libc::ETIMEDOUT, WSAETIMEDOUT),
    (libc::ECONNREFUSED, WSAECONNREFUSED),
    (libc::ELOOP, WSAELOOP),
    (libc::ENAMETOOLONG, WSAENAMETOOLONG),
    (libc::EHOSTDOWN, WSAEHOSTDOWN),
    (libc::EHOSTUNREACH, WSAEHOSTUNREACH),
    (libc::ENOTEMPTY, WSAENOTEMPTY),
    (libc::EUSERS, WSAEUSERS),
    (libc::EDQUOT, WSAEDQUOT),
    (libc::ESTALE, WSAESTALE),
    (libc::EREMOTE, WSAEREMOTE),
];

/// The Winsock code for a Linux `errno`, if one stands for it.
pub fn wsa_from_errno(errno: c_int) -> Option<c_int> {
    TABLE
        .iter()
        .find(|&&(e, _)| e == errno)
        .map(|&(_, code)| code)
}

/// The `errno` that translates back to `code`: 0 for 0, [`NO_ERRNO`] when none does.
fn errno_for(code: c_int) -> c_int {
    if code == 0 {
        return 0;
    }
    TABLE
        .iter()
        .find(|&&(_, c)| c == code)
        .map_or(NO_ERRNO, |&(e, _)| e)
}

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno, valid for its life.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`; the slot is this thread's own.
    unsafe { *libc::__errno_location() = value }
}

thread_local! {
    /// The code this library last set in this thread, and the `errno` it left with it.
    static LAST: Cell<(c_int, c_int)> = const { Cell::new((0, 0)) };
}

/// Records `code` as this thread's last error, with `errno` in agreement.
pub fn set_last_error(code: c_int) {
    let errno = errno_for(code);
    set_errno(errno);
    LAST.with(|l| l.set((code, errno)));
}

/// `WSAGetLastError`: the error of this thread's last failed socket call: one of this
/// library's, or a BSD call (`send`, `recv`, `connect`, `bind`, ...) whose `errno` is
/// translated to the Winsock code (`ECONNREFUSED`: `WSAECONNREFUSED`; a nonblocking
/// `connect`'s `EINPROGRESS`: `WSAEWOULDBLOCK`), or what `WSASetLastError` set, whichever
/// came last. See the module docs for how, and its limits.
#[no_mangle]
pub extern "C" fn WSAGetLastError() -> c_int {
    let now = errno();
    let (code, left) = LAST.with(Cell::get);
    if now == left {
        code
    } else {
        wsa_from_errno(now).unwrap_or(now)
    }
}

/// `WSASetLastError`: sets what [`WSAGetLastError`] returns in this thread, and `errno`
/// to the matching Linux value (or one no libc call sets, for a code without one), so
/// the two agree until the next failure.
#[no_mangle]
pub extern "C" fn WSASetLastError(iError: c_int) {
    set_last_error(iError)
}
