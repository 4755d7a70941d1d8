//! The sockets `serve` keeps for its whole life: bound once from `--listen`, or taken from
//! the socket activation serve itself was started with (sd_listen_fds(3): `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on).

use std::ffi::OsStr;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// The first descriptor of socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Where a `--listen` socket lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// A path in the file system, or an abstract name when it starts with `@`.
    Unix(PathBuf),
}

/// One `--listen [NAME=]ADDR`.
#[derive(Clone, Debug)]
pub struct ListenSpec {
    /// The name workers see in `LISTEN_FDNAMES`; `None` takes a default by position.
    pub name: Option<String>,
    pub addr: Addr,
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenSpec, String> {
        // A name has no ':' (the separator of LISTEN_FDNAMES), so the first '=' before any
        // ':' ends it.
        let (name, addr) = match text.split_once('=') {
            Some((name, addr)) if !name.contains(':') => (Some(name), addr),
            _ => (None, text),
        };
        if let Some(name) = name {
            check_name(name)?;
        }
        let (kind, rest) = addr.split_once(':').ok_or_else(|| {
            format!("{addr:?}: expected tcp:HOST:PORT, udp:HOST:PORT or unix:PATH")
        })?;
        let inet = |rest: &str| -> Result<SocketAddr, String> {
            rest.to_socket_addrs()
                .map_err(|e| format!("{addr:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr:?}: the host has no address"))
        };
        let addr = match kind {
            "tcp" => Addr::Tcp(inet(rest)?),
            "udp" => Addr::Udp(inet(rest)?),
            "unix" if !rest.is_empty() => Addr::Unix(PathBuf::from(rest)),
            _ => {
                return Err(format!(
                    "{addr:?}: expected tcp:HOST:PORT, udp:HOST:PORT or unix:PATH"
                ))
            }
        };
        Ok(ListenSpec {
            name: name.map(str::to_owned),
            addr,
        })
    }
}

/// A name systemd accepts for `FDNAME=` and `LISTEN_FDNAMES`: 1 to 255 printable ASCII
/// characters, no ':'.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(format!(
            "{name:?}: a listener name is 1 to 255 printable ASCII characters without ':'"
        ));
    }
    Ok(())
}

/// A socket serve holds: close-on-exec, at a descriptor above the range workers receive
/// theirs in, so placing them (3, 4, ...) never overwrites one not yet placed.
pub struct Listener {
    pub name: String,
    pub fd: OwnedFd,
    /// For the log: the address, and where the socket came from.
    pub describe: String,
    /// A path serve bound and removes when it exits.
    unlink: Option<PathBuf>,
}

impl Listener {
    /// Keeps the path of a Unix socket in the file system after serve exits: a copy of the
    /// socket lives on elsewhere (systemd's file descriptor store).
    pub fn keep_path(&mut self) {
        self.unlink = None;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.unlink {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The sockets of serve's own socket activation, named, if `LISTEN_PID` names this
/// process. Each becomes close-on-exec; the variables are removed from the environment so
/// no worker mistakes them for its own.
///
/// # Errors
///
/// A `LISTEN_FDS` that is not a number, or a descriptor in its range that is not open.
pub fn inherited() -> io::Result<Vec<(String, OwnedFd)>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: serve reads its environment before it starts any thread.
        unsafe { std::env::remove_var(var) };
    }
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: i32 = count
        .unwrap_or_default()
        .parse()
        .map_err(|_| io::Error::other("LISTEN_FDS is not a number"))?;
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    (0..count)
        .map(|i| {
            let raw = LISTEN_FDS_START + i;
            // SAFETY: fcntl(F_GETFD) only reads the table; it fails on a closed number.
            if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
                return Err(io::Error::other(format!(
                    "LISTEN_FDS names descriptor {raw}, which is not open"
                )));
            }
            // SAFETY: socket activation hands descriptors LISTEN_FDS_START.. to this
            // process, which nothing else in it owns (serve takes them first thing).
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
            let name = names.get(i as usize).copied().unwrap_or("unknown");
            Ok((name.to_owned(), fd))
        })
        .collect()
}

/// The listeners for `specs`: each one an inherited socket of the same name, or else of
/// the same kind and address, or else bound now. Inherited sockets no spec asks for are
/// kept too, after them, under their own names.
///
/// # Errors
///
/// A socket that cannot be bound (in use, no permission), a Unix path held by a live
/// socket or by something that is not a socket.
pub fn open(
    specs: &[ListenSpec],
    mut inherited: Vec<(String, OwnedFd)>,
) -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name.clone().unwrap_or_else(|| format!("listen{i}"));
        let found = inherited
            .iter()
            .position(|(n, _)| spec.name.as_deref() == Some(n.as_str()))
            .or_else(|| {
                inherited
                    .iter()
                    .position(|(_, fd)| same_socket(fd, &spec.addr))
            });
        let listener = match found {
            Some(at) => {
                let (_, fd) = inherited.remove(at);
                Listener {
                    describe: format!("{} (inherited)", describe(&fd)),
                    name,
                    fd,
                    unlink: None,
                }
            }
            None => bind(name, &spec.addr)?,
        };
        out.push(listener);
    }
    for (name, fd) in inherited {
        out.push(Listener {
            describe: format!("{} (inherited)", describe(&fd)),
            name,
            fd,
            unlink: None,
        });
    }
    // Above 3 + n: placing descriptor i at 3 + i in a worker then never overwrites one
    // that is yet to be placed.
    let floor = LISTEN_FDS_START + out.len() as i32;
    for listener in &mut out {
        listener.fd = rustix::io::fcntl_dupfd_cloexec(&listener.fd, floor)?;
    }
    Ok(out)
}

fn bind(name: String, addr: &Addr) -> io::Result<Listener> {
    let fail = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr:?}: {e}"));
    let (socket, unlink) = match addr {
        Addr::Tcp(at) => {
            let s = Socket::new(Domain::for_address(*at), Type::STREAM, None).map_err(fail)?;
            // A restarted serve binds again at once, with connections of the last one in
            // TIME_WAIT.
            s.set_reuse_address(true).map_err(fail)?;
            s.bind(&(*at).into()).map_err(fail)?;
            s.listen(libc::SOMAXCONN).map_err(fail)?;
            (s, None)
        }
        Addr::Udp(at) => {
            let s = Socket::new(Domain::for_address(*at), Type::DGRAM, None).map_err(fail)?;
            s.bind(&(*at).into()).map_err(fail)?;
            (s, None)
        }
        Addr::Unix(path) => {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            let bytes = path.as_os_str().as_bytes();
            let (sockaddr, unlink) = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => (abstract_addr(abstract_name).map_err(fail)?, None),
                None => {
                    remove_stale(path).map_err(fail)?;
                    (SockAddr::unix(path).map_err(fail)?, Some(path.clone()))
                }
            };
            s.bind(&sockaddr).map_err(fail)?;
            s.listen(libc::SOMAXCONN).map_err(fail)?;
            (s, unlink)
        }
    };
    let fd = OwnedFd::from(socket);
    Ok(Listener {
        describe: describe(&fd),
        name,
        fd,
        unlink,
    })
}

/// The address of an abstract Unix name: a leading NUL byte, no terminator.
fn abstract_addr(name: &[u8]) -> io::Result<SockAddr> {
    SockAddr::unix(OsStr::from_bytes(&[b"\0", name].concat()))
}

/// Removes a Unix socket file that no one listens on any more (a serve that was killed),
/// so binding again works; a live socket or another kind of file is an error.
fn remove_stale(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if !meta.file_type().is_socket() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "a live socket listens there",
            )),
            Err(_) => std::fs::remove_file(path),
        },
    }
}

/// Whether `fd` is a socket of the kind `addr` asks for, bound to that address.
fn same_socket(fd: &OwnedFd, addr: &Addr) -> bool {
    let sock = SockRef::from(fd);
    let (Ok(local), Ok(ty)) = (sock.local_addr(), sock.r#type()) else {
        return false;
    };
    match addr {
        Addr::Tcp(at) => ty == Type::STREAM && local.as_socket() == Some(*at),
        Addr::Udp(at) => ty == Type::DGRAM && local.as_socket() == Some(*at),
        Addr::Unix(path) => {
            let want = path.as_os_str().as_bytes();
            ty == Type::STREAM && unix_name(&local).as_deref() == Some(want)
        }
    }
}

/// Whether `fd` is a stream socket (what `--dispatch` accepts on).
pub fn is_stream(fd: &impl AsFd) -> bool {
    SockRef::from(fd).r#type().is_ok_and(|t| t == Type::STREAM)
}

/// "tcp 127.0.0.1:8080", "udp [::1]:53", "unix /run/x.sock": what a log line says of a
/// socket.
pub fn describe(fd: &impl AsFd) -> String {
    let sock = SockRef::from(fd);
    let kind = match sock.r#type() {
        Ok(Type::STREAM) => "stream",
        Ok(Type::DGRAM) => "datagram",
        Ok(Type::SEQPACKET) => "seqpacket",
        _ => "socket",
    };
    let Ok(local) = sock.local_addr() else {
        return format!("descriptor {} (not a socket)", fd.as_fd().as_raw_fd());
    };
    if let Some(at) = local.as_socket() {
        let proto = if kind == "stream" { "tcp" } else { "udp" };
        return format!("{proto} {at}");
    }
    match unix_name(&local) {
        Some(name) => format!("unix {kind} {}", String::from_utf8_lossy(&name)),
        None => format!("{kind} socket"),
    }
}

/// The name of a Unix address as `--listen` writes it: a path, or `@` and an abstract
/// name; `None` for other families and unnamed sockets.
fn unix_name(addr: &SockAddr) -> Option<Vec<u8>> {
    match (addr.as_abstract_namespace(), addr.as_pathname()) {
        (Some(name), _) => Some([b"@", name].concat()),
        (_, Some(path)) => Some(path.as_os_str().as_bytes().to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        let s: ListenSpec = "web=tcp:127.0.0.1:8080".parse().unwrap();
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(s.addr, Addr::Tcp("127.0.0.1:8080".parse().unwrap()));
        let s: ListenSpec = "udp:[::1]:53".parse().unwrap();
        assert_eq!(s.name, None);
        assert_eq!(s.addr, Addr::Udp("[::1]:53".parse().unwrap()));
        let s: ListenSpec = "unix:/run/a=b.sock".parse().unwrap();
        assert_eq!(s.addr, Addr::Unix("/run/a=b.sock".into()));
        for bad in [
            "tcp:nohost",
            "sctp:1.2.3.4:5",
            "unix:",
            "8080",
            "a:b=tcp:1.2.3.4:5",
            "=tcp:1.2.3.4:5",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad} was accepted");
        }
    }
}
