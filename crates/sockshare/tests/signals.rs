//! Regression, found by the `session_endpoint` fuzz target (libFuzzer's SIGALRM
//! watchdog): a signal handled while `duplicate` waits for a new target's answer made it
//! fail with WSAENETDOWN. Socket calls on a socket with a timeout are not restarted after
//! a signal handler, even under SA_RESTART (signal(7)), so any program with a handler
//! (SIGCHLD, timers, profilers) could see it.

// Linux: these drive the Linux backend's endpoint and its system calls directly.
#![cfg(target_os = "linux")]

mod common;
use common::endpoint_name;

use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::os::unix::thread::JoinHandleExt;
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketType};

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn a_signal_during_the_handshake_does_not_fail_duplicate() {
    // SAFETY: `action` is fully initialised (zeroed, then the handler and an empty mask
    // set) before sigaction reads it; the handler does nothing, so it is async-signal-safe;
    // SIGUSR1 is used by nothing else in this test binary. No SA_RESTART, as in programs
    // that install handlers with signal handling crates' defaults.
    unsafe {
        let mut action: libc::sigaction = MaybeUninit::zeroed().assume_init();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    // A stand-in for this process's session (this binary starts none) that answers late;
    // this process answers, so the kernel's credentials on the answer name the right pid.
    let pid = sockshare::current_pid();
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    let name = SocketAddrUnix::new_abstract_name(endpoint_name(pid).as_bytes()).unwrap();
    rustix::net::bind(&listener, &name).unwrap();
    rustix::net::listen(&listener, 4).unwrap();

    let duplicating = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        sockshare::duplicate(&socket, pid).map(drop)
    });
    let conn = rustix::net::accept(&listener).unwrap();
    // The source now waits for the answer: interrupt it, again and again, for a part of
    // the 0.1 s it waits before giving the target a keeper instead. The thread is joined
    // only below, so its id stays valid even if it has returned.
    for _ in 0..20 {
        // SAFETY: signalling a joinable thread of this process that has not been joined.
        unsafe { libc::pthread_kill(duplicating.as_pthread_t(), libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut accepted = b"SSHR".to_vec();
    accepted.extend_from_slice(&2u16.to_le_bytes()); // version
    accepted.extend_from_slice(&1u16.to_le_bytes()); // verdict: accepted
    accepted.extend_from_slice(&[0u8; 8]);
    // The source may already have given up and closed: its result says so below.
    let _ = rustix::net::send(&conn, &accepted, SendFlags::NOSIGNAL);
    let result = duplicating.join().unwrap();
    assert!(result.is_ok(), "duplicate failed: {result:?}");
    // And the push arrived: a header and one entry (its descriptor is closed unread).
    let mut record = [0u8; 64];
    let (n, _) = rustix::net::recv(&conn, &mut record, RecvFlags::empty()).unwrap();
    assert_eq!(n, 32);
}
