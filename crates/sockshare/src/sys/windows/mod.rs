//! The Windows backend: the native `WSADuplicateSocketW` and `WSASocketW(FROM_PROTOCOL_INFO)`,
//! with sockshare's checks around them.
//!
//! Windows does the sharing itself: `WSADuplicateSocketW` opens the target with
//! `PROCESS_DUP_HANDLE` (the operating system's access check replaces a session's
//! [`Policy`](crate::Policy)) and duplicates the socket's handle into it, so the target
//! holds its reference as soon as the call returns. The target's `WSASocketW` adopts that
//! handle. What the documentation promises but the provider may not check, sockshare
//! checks before calling it, in the target:
//!
//! - **target binding**: the envelope of the info (see [`info`]) records the
//!   `dwProcessId` it was made for; `redeem` in any other process fails with `WSAEINVAL`
//!   and never calls `WSASocketW` (which, under Wine, would adopt whatever handle has that
//!   number in the wrong process);
//! - **single use**: the envelope's random nonce is recorded, process-wide and for the
//!   life of the process, when an info is redeemed; a second `redeem` fails with
//!   `WSAEINVAL` (Wine's `WSASocketW` accepts a reused info and hands out the same handle
//!   again, which would be closed twice);
//! - **damage**: a CRC-32 over the whole info.
//!
//! What differs from Linux, and why:
//!
//! - an info forged *with* a valid envelope (the nonce is not secret, the CRC can be
//!   recomputed) reaches the native provider, which decides: Windows has no channel
//!   beside the info to carry a check value, as Linux's session endpoint does;
//! - `duplicate` needs no session in the target (Windows needs none); a target that never
//!   redeems holds the duplicated handle until it exits, when Windows closes it: ending a
//!   session does not release it, as sockshare never learns of it;
//! - no queue, no capacity: `WSAENOBUFS` and `WSAEMFILE` come only from the system;
//! - `fork` and namespaces do not exist.

mod info;

pub(crate) use info::Info;

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::windows::io::{AsRawSocket, BorrowedSocket, FromRawSocket, OwnedSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use windows_sys::Win32::Foundation::{CloseHandle, SetHandleInformation, HANDLE_FLAG_INHERIT};
use windows_sys::Win32::Networking::WinSock as ws;
use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_DUP_HANDLE};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{SocketKind, INFO_W_SIZE};
use crate::options::SessionOptions;

/// The id of the calling process.
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

/// Initialises Winsock for the process once, and never cleans it up, as std does: a
/// target's `WSASocketW` needs it even before the program made any socket of its own.
fn startup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: WSADATA is plain data that WSAStartup fills; a zeroed one is valid.
        let mut data: ws::WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a valid, writable WSADATA for the duration of the call.
        let rc = unsafe { ws::WSAStartup(0x0202, &mut data) };
        // On failure every later call reports WSANOTINITIALISED, which is mapped then.
        debug_assert_eq!(rc, 0);
    });
}

/// The Winsock error of the last failed call (`WSAGetLastError`, read once), with the
/// operating system's error as its source. `explain` returns sockshare's own wording for
/// the kinds it words itself (an error of that same kind), or `None` for the plain
/// "`what`: system message".
fn last_error(what: &str, explain: impl FnOnce(ErrorKind) -> Option<Error>) -> Error {
    // SAFETY: WSAGetLastError only reads this thread's last error.
    let code = unsafe { ws::WSAGetLastError() };
    let os = io::Error::from_raw_os_error(code);
    let kind = match code {
        ws::WSAENOTSOCK | ws::WSAEBADF => ErrorKind::NotSocket,
        // A process without Winsock cannot hold the socket it was asked about.
        ws::WSANOTINITIALISED => ErrorKind::NotSocket,
        ws::WSAEPROVIDERFAILEDINIT | ws::WSAEINVALIDPROVIDER => ErrorKind::Invalid,
        code => ErrorKind::from_code(code).unwrap_or(ErrorKind::NetDown),
    };
    let error = explain(kind).unwrap_or_else(|| Error::new(kind, format!("{what}: {os}")));
    debug_assert_eq!(error.kind(), kind);
    error.with_source(os)
}

/// `Invalid` for a target `OpenProcess(PROCESS_DUP_HANDLE)` refuses, as `duplicate` and
/// `probe` report it.
fn cannot_duplicate_into(target_pid: u32) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!(
            "process {target_pid} does not exist or does not let this process duplicate \
             handles into it (PROCESS_DUP_HANDLE)"
        ),
    )
}

/// Family, type and protocol of an open socket, from `SO_PROTOCOL_INFOW`.
pub(crate) fn socket_kind(socket: BorrowedSocket<'_>) -> Result<SocketKind> {
    startup();
    // SAFETY: WSAPROTOCOL_INFOW is plain data; getsockopt fills it.
    let mut info: ws::WSAPROTOCOL_INFOW = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<ws::WSAPROTOCOL_INFOW>() as i32;
    // SAFETY: `info` is writable for `len` bytes; Winsock validates the socket value
    // (a closed or foreign value gives WSAENOTSOCK).
    let rc = unsafe {
        ws::getsockopt(
            socket.as_raw_socket() as ws::SOCKET,
            ws::SOL_SOCKET,
            ws::SO_PROTOCOL_INFOW,
            (&mut info as *mut ws::WSAPROTOCOL_INFOW).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(last_error("reading the socket's protocol info", |kind| {
            (kind == ErrorKind::NotSocket).then(|| {
                Error::new(
                    kind,
                    format!("{} is not an open socket", socket.as_raw_socket()),
                )
            })
        }));
    }
    Ok(SocketKind::new(
        info.iAddressFamily,
        info.iSocketType,
        info.iProtocol,
    ))
}

/// The native info as bytes (the struct is 628 bytes of integers, without padding).
fn to_bytes(info: &ws::WSAPROTOCOL_INFOW) -> [u8; INFO_W_SIZE] {
    const _: () = assert!(std::mem::size_of::<ws::WSAPROTOCOL_INFOW>() == INFO_W_SIZE);
    // SAFETY: same size (checked above); the source is plain integers with no padding,
    // so every byte is initialised.
    unsafe { std::mem::transmute_copy(info) }
}

fn from_bytes(bytes: &[u8; INFO_W_SIZE]) -> ws::WSAPROTOCOL_INFOW {
    // SAFETY: same size; every bit pattern is a valid WSAPROTOCOL_INFOW (integers only),
    // and transmute_copy reads unaligned.
    unsafe { std::mem::transmute_copy(bytes) }
}

/// A nonce for one duplication: unique with overwhelming probability among every info a
/// target ever sees. std's `RandomState` is seeded from the system's random source.
fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(current_pid());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// `WSADuplicateSocketW(socket, target_pid)`, wrapped with sockshare's envelope.
pub(crate) fn duplicate(socket: BorrowedSocket<'_>, target_pid: u32) -> Result<Info> {
    startup();
    // SAFETY: plain data, filled by the call.
    let mut info: ws::WSAPROTOCOL_INFOW = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable WSAPROTOCOL_INFOW; Winsock validates the socket
    // and the pid.
    let rc = unsafe {
        ws::WSADuplicateSocketW(socket.as_raw_socket() as ws::SOCKET, target_pid, &mut info)
    };
    if rc != 0 {
        let error = last_error("WSADuplicateSocketW", |kind| {
            (kind == ErrorKind::Invalid).then(|| cannot_duplicate_into(target_pid))
        });
        // Wine reports a handle that is no socket as WSAEOPNOTSUPP: look at the socket
        // once the call failed, so `NotSocket` still comes first, at no cost to a
        // duplicate that succeeds.
        socket_kind(socket)?;
        return Err(error);
    }
    Info::wrap(to_bytes(&info), target_pid, nonce())
}

/// `duplicate` for each socket in turn: Windows has no batch call. On an error the infos
/// of the sockets before it are not returned; their handles stay in the target until it
/// exits.
pub(crate) fn duplicate_many(
    sockets: &[BorrowedSocket<'_>],
    _kinds: &[SocketKind],
    target_pid: u32,
) -> Result<Vec<Info>> {
    sockets.iter().map(|&s| duplicate(s, target_pid)).collect()
}

/// The checks of `duplicate` on the pid: Windows' own, `OpenProcess(PROCESS_DUP_HANDLE)`.
pub(crate) fn probe(target_pid: u32) -> Result<()> {
    // SAFETY: OpenProcess takes plain values and returns an owned handle or null.
    let handle = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, target_pid) };
    if handle.is_null() {
        return Err(cannot_duplicate_into(target_pid).with_source(io::Error::last_os_error()));
    }
    // SAFETY: `handle` was returned by OpenProcess above and is closed once.
    unsafe { CloseHandle(handle) };
    Ok(())
}

/// A source keeps nothing open on Windows.
pub(crate) fn disconnect_all() {}

/// This process's session, refcounted like WSAStartup/WSACleanup.
struct Registry {
    refs: usize,
    options: Option<SessionOptions>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    refs: 0,
    options: None,
});

/// Nonces of the infos this process redeemed: process-wide, so a second session cannot
/// reuse an info either. Eight bytes and a hash slot per redeemed info, for the life of
/// the process: sound single use needs exactly that memory, since an info can be replayed
/// at any time.
static REDEEMED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// A handle on this process's session.
pub(crate) struct Session {
    options: SessionOptions,
}

impl Session {
    /// Starts the session, or joins the running one (`options` must then match).
    pub(crate) fn start(options: Option<&SessionOptions>) -> Result<Session> {
        startup();
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(active) = reg.options.clone() {
            active.check_join(options)?;
            reg.refs += 1;
            return Ok(Session { options: active });
        }
        let options = options.cloned().unwrap_or_default();
        reg.options = Some(options.clone());
        reg.refs = 1;
        Ok(Session { options })
    }

    pub(crate) fn pid(&self) -> u32 {
        current_pid()
    }

    pub(crate) fn pending(&self) -> usize {
        0
    }

    pub(crate) fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Only reported: Windows keeps no table of pending sockets.
    pub(crate) fn capacity(&self) -> usize {
        self.options
            .capacity
            .unwrap_or(crate::options::DEFAULT_CAPACITY)
    }

    /// `WSASocketW(FROM_PROTOCOL_INFO, ..., WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT)`
    /// after sockshare's checks of target and single use.
    pub(crate) fn redeem(&self, info: &Info) -> Result<OwnedSocket> {
        // Held across WSASocketW, so two threads cannot both redeem one info.
        let mut redeemed = REDEEMED.lock().unwrap_or_else(|e| e.into_inner());
        let redeemed = redeemed.get_or_insert_with(HashSet::new);
        if redeemed.contains(&info.token()) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "this protocol info was already used: an info works once",
            ));
        }
        let native = from_bytes(info.native());
        // SAFETY: `native` is a valid WSAPROTOCOL_INFOW that lives across the call; the
        // provider reads it and returns a new socket handle owned by this process, or
        // INVALID_SOCKET.
        let raw = unsafe {
            ws::WSASocketW(
                ws::FROM_PROTOCOL_INFO,
                ws::FROM_PROTOCOL_INFO,
                ws::FROM_PROTOCOL_INFO,
                &native,
                0,
                ws::WSA_FLAG_OVERLAPPED | ws::WSA_FLAG_NO_HANDLE_INHERIT,
            )
        };
        if raw == ws::INVALID_SOCKET {
            return Err(last_error("WSASocketW(FROM_PROTOCOL_INFO)", |kind| {
                (kind == ErrorKind::TooManyDescriptors).then(|| {
                    Error::new(
                        kind,
                        "this process has no free socket handle; the info stays valid: close \
                         a handle and redeem again",
                    )
                })
            }));
        }
        redeemed.insert(info.token());
        // SAFETY: WSASocketW returned a valid socket that nothing else owns.
        let socket = unsafe { OwnedSocket::from_raw_socket(raw as _) };
        // Not every provider honours WSA_FLAG_NO_HANDLE_INHERIT on this path (Wine
        // ignores the flags of a duplicated socket); the handle must not leak into
        // children, as close-on-exec on Linux.
        // SAFETY: `socket` is an open handle owned by this function.
        unsafe { SetHandleInformation(socket.as_raw_socket() as _, HANDLE_FLAG_INHERIT, 0) };
        Ok(socket)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.refs = reg.refs.saturating_sub(1);
        if reg.refs == 0 {
            reg.options = None;
        }
    }
}
