//! Starting a worker: its sockets at descriptors 3 onwards, the socket-activation
//! variables, and its user.
//!
//! `LISTEN_PID` must be the worker's own pid, which is known only in the child. Serve
//! starts this same program as a trampoline (`serve-exec`, from `/proc/self/exe`, so an
//! upgraded binary on disk changes nothing): it sets `LISTEN_PID` to its pid, drops to the
//! worker's user, asks to be stopped if serve dies, and executes the command, which keeps
//! the pid. Between fork and that first exec, the child only moves descriptors (`dup2`,
//! async-signal-safe).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use super::dispatch::WorkerEnds;
use super::listeners::{Listener, LISTEN_FDS_START};

/// The user and group workers run as (`--user USER[:GROUP]`), resolved at start so a
/// typo fails there and not at every worker start.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// Resolves `USER[:GROUP]`: names or numbers; without a group, the user's own.
    ///
    /// # Errors
    ///
    /// An unknown user or group.
    pub fn resolve(spec: &str) -> Result<Credentials, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (name, uid, home_gid) = lookup_user(user)?;
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => home_gid,
        };
        Ok(Credentials { name, uid, gid })
    }

    /// The form `serve-exec --user` takes.
    fn to_arg(&self) -> String {
        format!("{}:{}:{}", self.uid, self.gid, self.name)
    }

    fn from_arg(arg: &str) -> Option<Credentials> {
        let mut parts = arg.splitn(3, ':');
        Some(Credentials {
            uid: parts.next()?.parse().ok()?,
            gid: parts.next()?.parse().ok()?,
            name: parts.next()?.to_owned(),
        })
    }
}

fn lookup_user(user: &str) -> Result<(String, u32, u32), String> {
    let c = CString::new(user).map_err(|_| format!("{user:?}: not a user name"))?;
    // SAFETY: getpwnam/getpwuid return NULL or a pointer to a static record, read here at
    // once, before any other call could overwrite it; serve has no other thread yet.
    let pw = unsafe {
        match user.parse::<u32>() {
            Ok(uid) => libc::getpwuid(uid),
            Err(_) => libc::getpwnam(c.as_ptr()),
        }
    };
    if pw.is_null() {
        return Err(format!("no user {user:?}"));
    }
    // SAFETY: `pw` is a valid passwd record (checked non-null); pw_name is a C string.
    let (name, uid, gid) = unsafe {
        let pw = &*pw;
        (
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
            pw.pw_uid,
            pw.pw_gid,
        )
    };
    Ok((name, uid, gid))
}

fn lookup_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(group).map_err(|_| format!("{group:?}: not a group name"))?;
    // SAFETY: as in lookup_user: a static record read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(format!("no group {group:?}"));
    }
    // SAFETY: `gr` is a valid group record (checked non-null).
    Ok(unsafe { (*gr).gr_gid })
}

/// Marks every descriptor from 3 on close-on-exec, so a worker gets 0, 1, 2 and its
/// sockets, nothing else serve inherited (a descriptor the program that started serve
/// leaked: a pipe kept open in every generation would never see its end). Serve's own are
/// close-on-exec already; socket activation's are taken (and marked) by
/// `listeners::inherited` either way.
///
/// # Errors
///
/// Neither close_range nor /proc/self/fd could be used.
pub fn seal_inherited() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11) only sets a flag on
    // descriptors of this process; it closes none.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            LISTEN_FDS_START as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked == 0 {
        return Ok(());
    }
    // Before Linux 5.11: one by one.
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        let Some(fd) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if fd >= LISTEN_FDS_START {
            // SAFETY: F_SETFD only sets the flag of that number; on a number no longer
            // open (the directory's own descriptor) it fails and changes nothing.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// What every worker of one serve gets.
pub struct Plan<'a> {
    pub command: &'a [OsString],
    /// The sockets workers receive whole (all of them, or under `--dispatch` the datagram
    /// ones).
    pub listeners: Vec<&'a Listener>,
    /// Under `--dispatch`: the names of the dispatched listeners, `:`-separated.
    pub dispatched: Option<String>,
    pub notify_socket: &'a str,
    pub user: Option<&'a Credentials>,
}

/// Starts one worker of `generation`; under `--dispatch`, `link` holds the worker's ends
/// of its channel and ledger, placed right after the listeners.
///
/// # Errors
///
/// The trampoline could not be started (out of processes or memory); a command that
/// cannot be executed shows as the worker exiting with status 127.
pub fn spawn(plan: &Plan<'_>, generation: u64, link: Option<&WorkerEnds>) -> io::Result<Child> {
    let names: Vec<&str> = plan.listeners.iter().map(|l| l.name.as_str()).collect();
    let mut fds: Vec<i32> = plan.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    // Above the range they are placed in, like the listeners (see the pre_exec below).
    let above = LISTEN_FDS_START + fds.len() as i32 + 2;
    let link = link
        .map(|l| -> io::Result<_> {
            Ok((
                rustix::io::fcntl_dupfd_cloexec(&l.channel, above)?,
                rustix::io::fcntl_dupfd_cloexec(&l.ledger, above)?,
            ))
        })
        .transpose()?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("sockshare")
        .arg("serve-exec")
        .arg("--parent")
        .arg(std::process::id().to_string());
    if let Some(user) = plan.user {
        command.arg("--user").arg(user.to_arg());
    }
    command
        .arg("--")
        .args(plan.command)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", plan.notify_socket)
        .env("SOCKSHARE_GENERATION", generation.to_string())
        .stdin(Stdio::null());
    if let (Some((channel, ledger)), Some(names)) = (&link, &plan.dispatched) {
        let at = LISTEN_FDS_START + fds.len() as i32;
        command
            .env(sockshare::dispatch::FD_VAR, at.to_string())
            .env(sockshare::dispatch::LEDGER_VAR, (at + 1).to_string())
            .env(sockshare::dispatch::NAMES_VAR, names);
        fds.push(channel.as_raw_fd());
        fds.push(ledger.as_raw_fd());
    }
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on numbers it owns
    // in the child: every listener sits above LISTEN_FDS_START + n (listeners::open), and
    // the channel and ledger above LISTEN_FDS_START + n + 2, so placing one never
    // overwrites another not yet placed. dup2 leaves the copy without FD_CLOEXEC, so it
    // survives the exec.
    unsafe {
        command.pre_exec(move || {
            for (i, &fd) in fds.iter().enumerate() {
                if libc::dup2(fd, LISTEN_FDS_START + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // `link`, serve's copies of the worker's ends, closes when this returns.
    command.spawn()
}

/// The trampoline (`sockshare serve-exec`): runs in the worker's process, as root if serve
/// is, with the sockets already in place. Returns only on failure.
pub fn exec(parent: u32, user: Option<&str>, command: &[OsString]) -> String {
    // Before dropping privileges: the death signal is cleared when credentials change,
    // so it is set after, below.
    if let Some(user) = user {
        let Some(c) = Credentials::from_arg(user) else {
            return format!("bad --user {user:?}");
        };
        let Ok(name) = CString::new(c.name.as_str()) else {
            return format!("bad user name {:?}", c.name);
        };
        // SAFETY: plain system calls on values; this process has one thread.
        let dropped = unsafe {
            libc::initgroups(name.as_ptr(), c.gid) == 0
                && libc::setgid(c.gid) == 0
                && libc::setuid(c.uid) == 0
        };
        if !dropped {
            return format!("cannot become {}: {}", c.name, io::Error::last_os_error());
        }
    }
    // A worker outlives a serve that is killed outright only as long as it takes to see
    // SIGTERM; and if serve died before this line, the worker stops at once.
    if rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .is_err()
        || rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent)
    {
        return "serve is gone".into();
    }
    // SAFETY: this process has one thread.
    unsafe { std::env::set_var("LISTEN_PID", std::process::id().to_string()) };
    let Some((program, args)) = command.split_first() else {
        return "no command".into();
    };
    let err = Command::new(program).args(args).exec();
    format!("cannot run {}: {err}", program.to_string_lossy())
}
