//! `sockshare serve`: keeps a server's listening sockets in a process of their own and
//! runs generations of workers on them, so a reload or a crash never refuses a connection.
//!
//! The pieces: [`listeners`] (the sockets, bound once or taken from socket activation),
//! [`workers`] (starting one, sd_listen_fds(3)-style), [`notify`] (sd_notify(3) both
//! ways), [`control`] (`sockshare reload`), [`supervisor`] (generations: start, ready,
//! take over, drain, roll back, restart). This file holds the options and the event loop:
//! one thread, signals read from a signalfd, waits bounded by the next deadline.

mod control;
mod dispatch;
mod listeners;
mod notify;
mod signals;
mod supervisor;
mod workers;

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

pub use control::reload;
pub(crate) use signals::block as block_signals;
pub use workers::exec;

use listeners::ListenSpec;
use signals::Signals;
use supervisor::{Config, Readiness, Supervisor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Options of `sockshare serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A socket to keep for the workers, repeatable: `tcp:HOST:PORT`, `udp:HOST:PORT`,
    /// `unix:PATH` (`unix:@NAME` for an abstract name), optionally named (`web=tcp:...`;
    /// workers see the names in `LISTEN_FDNAMES`). Under socket activation, an inherited
    /// socket of the same name or address is taken instead of binding.
    #[arg(long = "listen", value_name = "[NAME=]ADDR")]
    listen: Vec<ListenSpec>,
    /// Workers per generation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// Seconds a new generation has to become ready before it is stopped and the old one
    /// kept.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = crate::seconds)]
    ready_timeout: Duration,
    /// Seconds an old generation has, after SIGTERM, to finish its connections before
    /// SIGKILL; serve's own stop allows the same.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = crate::seconds)]
    drain_timeout: Duration,
    /// How a worker shows it is ready: `notify` (it sends READY=1 on NOTIFY_SOCKET,
    /// sd_notify(3)), or `alive:SECS` for programs that cannot notify (ready when still
    /// running SECS after it started).
    #[arg(long, default_value = "notify", value_name = "notify|alive:SECS")]
    ready: Readiness,
    /// Run workers as this user (and group), e.g. `nobody` or `www-data:www-data`: serve
    /// binds privileged ports as root, the workers serve unprivileged.
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Old generations that may still be draining when a reload starts; a reload beyond
    /// this waits (queued, not lost) until one has finished.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    max_draining: u32,
    /// Accept on the stream listeners here and hand each connection to the least loaded
    /// worker with sockshare (workers take them with `sockshare::dispatch::Worker`, or
    /// in C through `SOCKSHARE_DISPATCH_FD`, the ledger at `SOCKSHARE_DISPATCH_LEDGER_FD`
    /// and `WSASocketA`: docs/dispatch.md). Datagram listeners are not dispatched:
    /// workers get them whole, as without this option.
    #[arg(long)]
    dispatch: bool,
    /// Under `--dispatch`: connections a worker may hold handed but not yet taken; a
    /// worker at this bound (stalled, overloaded) gets no more until it catches up.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    dispatch_queue: u32,
    /// The worker command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs serve until SIGTERM or SIGINT; `Ok` when it stopped cleanly.
///
/// # Errors
///
/// Bad options, sockets that cannot be bound, a first generation that never becomes
/// ready.
pub fn run(args: ServeArgs) -> Result<()> {
    let config = Config {
        workers: args.workers as usize,
        ready_timeout: args.ready_timeout,
        drain_timeout: args.drain_timeout,
        readiness: args.ready,
        max_draining: args.max_draining as usize,
    };
    let user = args
        .user
        .as_deref()
        .map(workers::Credentials::resolve)
        .transpose()?;
    // Before anything else: what serve inherited stays out of workers, the environment is
    // serve's own, and signals must be blocked before any child exists, or a SIGCHLD could
    // be missed.
    workers::seal_inherited()?;
    let manager = notify::Manager::from_env()?;
    let inherited = listeners::inherited()?;
    let signals = Signals::block()?;
    if args.listen.is_empty() && inherited.is_empty() {
        return Err(
            "nothing to serve: give --listen, or start serve with socket activation".into(),
        );
    }
    let mut listeners = listeners::open(&args.listen, inherited)?;
    for l in &listeners {
        log(format_args!("listening on {} as {:?}", l.describe, l.name));
    }
    if let Some(m) = manager.as_ref().filter(|m| m.fd_store) {
        for l in &mut listeners {
            m.send(&format!("FDSTORE=1\nFDNAME={}", l.name), &[l.fd.as_fd()])?;
            l.keep_path();
        }
        log(format_args!(
            "gave the service manager {} listeners to keep",
            listeners.len()
        ));
    }
    let notify_socket = notify::NotifySocket::bind()?;
    let mut control = match control::ControlSocket::bind() {
        Ok(c) => Some(c),
        Err(e) => {
            log(format_args!(
                "no control socket ({e}): reload with SIGHUP only"
            ));
            None
        }
    };
    let (dispatched, passed): (Vec<_>, Vec<_>) = listeners
        .iter()
        .partition(|l| args.dispatch && listeners::is_stream(&l.fd));
    let plan = workers::Plan {
        command: &args.command,
        dispatched: args.dispatch.then(|| {
            let names: Vec<&str> = dispatched.iter().map(|l| l.name.as_str()).collect();
            names.join(":")
        }),
        listeners: passed,
        notify_socket: &notify_socket.name,
        user: user.as_ref(),
    };
    let dispatcher = if args.dispatch {
        if dispatched.is_empty() {
            return Err("--dispatch: no stream listener to dispatch".into());
        }
        Some(dispatch::Dispatcher::new(
            dispatched,
            args.dispatch_queue as usize,
        )?)
    } else {
        None
    };
    let mut supervisor = Supervisor::new(config, plan, manager, dispatcher);
    supervisor.start();
    // The descriptors poll found readable, kept across turns: under `--dispatch` the loop
    // turns once per few connections.
    let mut ready: Vec<i32> = Vec::new();
    loop {
        if let Some(outcome) = supervisor.finished() {
            return outcome.map_err(Into::into);
        }
        let deadline = control
            .as_ref()
            .and_then(control::ControlSocket::deadline)
            .into_iter()
            .fold(supervisor.next_deadline(), Instant::min);
        let timeout =
            rustix::event::Timespec::try_from(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or(rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                });
        let mut fds = vec![
            PollFd::new(&signals, PollFlags::IN),
            PollFd::new(&notify_socket, PollFlags::IN),
        ];
        if let Some(c) = &control {
            fds.extend(
                c.watch()
                    .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
            );
        }
        fds.extend(
            supervisor
                .watch()
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
        );
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        ready.clear();
        ready.extend(
            fds.iter()
                .filter(|p| !p.revents().is_empty())
                .map(|p| p.as_fd().as_raw_fd()),
        );
        drop(fds);
        // Each of serve's own sockets is read only when poll says so: not three system
        // calls that find nothing at every turn.
        let is_ready = |fd: &dyn AsFd| ready.contains(&fd.as_fd().as_raw_fd());
        if is_ready(&signals) {
            for signal in signals.pending()? {
                supervisor.on_signal(signal);
            }
        }
        if is_ready(&notify_socket) {
            while let Some(message) = notify_socket.receive()? {
                supervisor.on_message(&message);
            }
        }
        if let Some(c) = &mut control {
            for control::Request::Reload(stream) in c.requests(&ready, Instant::now()) {
                supervisor.reload(Some(stream), "sockshare reload");
            }
        }
        supervisor.tick(Instant::now());
        supervisor.dispatch(&ready);
    }
}

/// One line on stderr per event, as `sockshare serve[PID]: ...`.
pub fn log(what: std::fmt::Arguments<'_>) {
    eprintln!("sockshare serve[{}]: {what}", std::process::id());
}
