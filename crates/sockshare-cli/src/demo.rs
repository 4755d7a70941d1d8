//! `sockshare demo`: the specification's 10-step scenario between two real processes.
//!
//! The source is this process; the target is this program started again (`demo-target`).
//! The target's stdout is a pipe back to the source: it carries the target's pid, its step
//! lines (which the source prints in order) and its "ready"; the target's stdin carries the
//! protocol info. From step 5 on, both sides go by the kind of socket the info describes
//! (a TCP listener or a UDP socket).

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use sockshare::{ProtocolInfo, Session, INFO_W_SIZE};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Options of `sockshare demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Address the source binds (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Share a UDP socket instead of a TCP listener.
    #[arg(long)]
    udp: bool,
    /// Share with the target before it has started its session: it starts one only once
    /// it has the info (Windows allows this; a keeper process holds the socket meanwhile).
    #[arg(long)]
    late: bool,
}

fn step(n: u32, role: &str, text: &str) {
    println!("{n:>2}. {role:<6} [pid {}] {text}", std::process::id());
}

/// The source: steps 1, 2, 4, 5, 6 and its half of 9 and 10.
pub fn source(args: &DemoArgs) -> Result<()> {
    let (shared, addr) = if args.udp {
        let s = UdpSocket::bind(args.addr)?;
        let at = s.local_addr()?;
        step(
            1,
            "source",
            &format!("created a UDP socket bound to {at} (WSASocket, bind)"),
        );
        (Shared::Udp(s), at)
    } else {
        let s = TcpListener::bind(args.addr)?;
        let at = s.local_addr()?;
        step(
            1,
            "source",
            &format!("created a TCP listener on {at} (WSASocket, bind, listen)"),
        );
        (Shared::Tcp(s), at)
    };

    step(
        2,
        "source",
        "starting the target process and asking for its process id",
    );
    let mut child = Command::new(std::env::current_exe()?)
        .arg("demo-target")
        .args(args.late.then_some("--late"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let result = run_source(shared, addr, &mut child);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    result?;
    if !status.success() {
        return Err(format!("the target process failed ({status})").into());
    }
    Ok(())
}

/// The socket the source shares.
enum Shared {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// `addr`: where the shared socket is bound.
fn run_source(shared: Shared, addr: SocketAddr, child: &mut Child) -> Result<()> {
    let mut from_target = BufReader::new(child.stdout.take().ok_or("no pipe from the target")?);
    let pid: u32 = relay_until(&mut from_target, "pid ")?.parse()?;
    step(
        4,
        "source",
        &format!("received the target's process id: {pid}"),
    );

    let info = match &shared {
        Shared::Tcp(s) => sockshare::duplicate(s, pid),
        Shared::Udp(s) => sockshare::duplicate(s, pid),
    }?;
    step(
        5,
        "source",
        &format!(
            "WSADuplicateSocket(socket, {pid}) gave a {INFO_W_SIZE}-byte WSAPROTOCOL_INFOW \
             for \"{}\"",
            info.protocol_name()
        ),
    );
    let mut to_target = child.stdin.take().ok_or("no pipe to the target")?;
    to_target.write_all(&info.to_bytes_w())?;
    drop(to_target);
    drop(shared);
    step(
        6,
        "source",
        "sent the info over the pipe and closed its own descriptor",
    );

    relay_until(&mut from_target, "ready")?;
    let reply = if info.kind().is_udp() {
        let client = UdpSocket::bind(("127.0.0.1", 0))?;
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let hello = format!("hello from source pid {}", std::process::id());
        client.send_to(hello.as_bytes(), addr)?;
        step(9, "source", &format!("sent \"{hello}\" to {addr}"));
        let mut buf = [0u8; 256];
        let n = client.recv(&mut buf)?;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        let mut client = TcpStream::connect(addr)?;
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let hello = format!("hello from source pid {}", std::process::id());
        client.write_all(hello.as_bytes())?;
        client.shutdown(std::net::Shutdown::Write)?;
        step(
            9,
            "source",
            &format!("connected to {addr} and sent \"{hello}\""),
        );
        let mut reply = String::new();
        client.read_to_string(&mut reply)?;
        reply
    };
    relay_until(&mut from_target, "served")?;
    step(9, "source", &format!("received \"{reply}\""));
    relay_until(&mut from_target, "closed")?;
    if !info.kind().is_udp() {
        // The listener's last descriptor is closed: nothing accepts on the port any more.
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => step(
                10,
                "source",
                &format!("connecting to {addr} is refused: the shared socket is closed"),
            ),
            Err(e) => return Err(e.into()),
            Ok(_) => return Err("the listener still accepts after the last close".into()),
        }
    }
    Ok(())
}

/// Prints the target's step lines until one starts with `prefix`; returns the rest of it.
fn relay_until(from_target: &mut BufReader<ChildStdout>, prefix: &str) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if from_target.read_line(&mut line)? == 0 {
            return Err(format!("the target exited before sending \"{prefix}\"").into());
        }
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("step ") {
            println!("{rest}");
        } else if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_owned());
        } else if let Some(err) = line.strip_prefix("error ") {
            return Err(format!("target: {err}").into());
        }
    }
}

/// The target: steps 3, 7, 8, its half of 9, and 10. Step lines go to stdout, where the
/// source prints them.
pub fn target(late: bool) -> Result<()> {
    let result = run_target(late);
    if let Err(e) = &result {
        println!("error {e}");
    }
    result
}

fn target_step(n: u32, text: &str) {
    println!("step {n:>2}. target [pid {}] {text}", std::process::id());
}

fn run_target(late: bool) -> Result<()> {
    let early = if late {
        target_step(
            3,
            "sends its process id (it starts no sharing session until it has the info)",
        );
        None
    } else {
        let session = Session::new()?;
        target_step(
            3,
            "started a sharing session (WSAStartup) and sends its process id",
        );
        Some(session)
    };
    println!("pid {}", sockshare::current_pid());
    std::io::stdout().flush()?;

    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let info = ProtocolInfo::from_bytes(&bytes)?;
    target_step(
        7,
        &format!(
            "received a {}-byte protocol info for pid {}",
            bytes.len(),
            info.target_pid()
        ),
    );
    let session = match early {
        Some(session) => session,
        None => {
            let session = Session::new()?;
            target_step(
                7,
                "started its sharing session (WSAStartup) only now: the socket waited for it",
            );
            session
        }
    };
    let shared = session.redeem(&info)?;
    if info.kind().is_udp() {
        let socket = UdpSocket::try_from(shared)?;
        target_step(
            8,
            &format!(
                "WSASocket(FROM_PROTOCOL_INFO) gave its own descriptor for the UDP socket on {}",
                socket.local_addr()?
            ),
        );
        println!("ready");
        std::io::stdout().flush()?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 256];
        let (n, from) = socket.recv_from(&mut buf)?;
        target_step(
            9,
            &format!(
                "received \"{}\" from {from}",
                String::from_utf8_lossy(&buf[..n])
            ),
        );
        println!("served");
        std::io::stdout().flush()?;
        let reply = format!("hello from target pid {}", std::process::id());
        socket.send_to(reply.as_bytes(), from)?;
        drop(socket);
    } else {
        let listener = TcpListener::try_from(shared)?;
        target_step(
            8,
            &format!(
                "WSASocket(FROM_PROTOCOL_INFO) gave its own descriptor for the listener on {}",
                listener.local_addr()?
            ),
        );
        println!("ready");
        std::io::stdout().flush()?;
        let (mut conn, from) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        target_step(9, &format!("accepted {from} and received \"{got}\""));
        println!("served");
        std::io::stdout().flush()?;
        conn.write_all(format!("hello from target pid {}", std::process::id()).as_bytes())?;
        drop(conn);
        drop(listener);
    }
    target_step(
        10,
        "closed its socket (closesocket) and ends its session (WSACleanup)",
    );
    drop(session);
    println!("closed");
    std::io::stdout().flush()?;
    Ok(())
}
